"""The online feature store on Redis: the worker's fenced writes and the read client.

The layout is `schemas.feature_layout`; what the features mean, and how stored values
become them, is `schemas.features`. A batch is one read of its users' values (MGET) and
one script call per slot it touches (on a single Redis: one call in all), sent beside the
interaction store's call.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import orjson
import redis.asyncio as aioredis

from schemas.feature_layout import (
    PRUNE_EVERY_MS,
    TILE_WIDTHS,
    WriteKind,
    global_features_key,
    product_features_key,
    trending_key,
    user_features_key,
    watermark_field,
)
from schemas.features import (
    WINDOW_OF_WIDTH,
    FeatureConfig,
    FeaturePlan,
    ProductFeatures,
    SharedWrite,
    UserFeatures,
    UserShare,
    UserStep,
    WindowCounts,
    advance_user,
    decayed_value,
    decode_user_share,
    encode_user_share,
    hash_window_counts,
    product_features_of,
    shared_writes,
    top_decayed,
    user_features_of,
)
from sinks.redis_scripts import HotRedis, ScriptCall, SlotScript, by_slot


@dataclass(frozen=True, slots=True)
class UserOutcome:
    """What a batch's write did to one user (for the trigger decision):
    whether one of their events started a session, their top category (highest affinity)
    before and after, and which of their events were duplicates. Events below the fence
    (read again) change nothing, but are still told apart as duplicates or not."""

    user_id: str
    session_started: bool
    top_before: str | None
    top_after: str | None
    partition: int = 0
    duplicates: frozenset[str] = frozenset()  # "partition:offset" of duplicate events


@dataclass(slots=True)
class FeatureRead:
    """A batch's users read and advanced, not yet written: what the write sends, and what
    the next batch may build on while this one's write is still on its way
    (`RedisFeatureStore.read`)."""

    steps: dict[str, UserStep]
    expected: dict[str, int]  # user -> the fence their stored value must still hold
    values: dict[str, bytes]  # user -> their new value (users with a share to store)
    assumed: dict[str, UserShare]  # user -> the earlier batch's share they were advanced from
    #: On a single Redis, the script call built ahead (the users in it, the shared writes):
    #: the write sends it the moment the batch before is in. None: build it again.
    call: _PreparedCall | None = None

    def shares(self) -> dict[str, UserShare]:
        """The users' new shares (what the next batch builds on)."""
        return {user: step.share for user, step in self.steps.items() if step.share is not None}


@dataclass(frozen=True, slots=True)
class FeatureWrite:
    """What a batch's write did: per user, its outcome; and the share each user it wrote
    holds now (the next batch checks what it assumed against these)."""

    outcomes: dict[str, UserOutcome]
    written: dict[str, UserShare]


class FeatureWriter(Protocol):
    async def apply(self, plan: FeaturePlan) -> dict[str, UserOutcome]:
        """Apply a plan's fenced writes; per user key, what it did."""
        ...

    async def read(
        self, plan: FeaturePlan, earlier: Mapping[str, UserShare] | None = None
    ) -> FeatureRead:
        """Read and advance a plan's users; those in `earlier` (the new shares of the
        batch before, whose write may not have landed yet) from those shares."""
        ...

    async def write(
        self,
        plan: FeaturePlan,
        read: FeatureRead,
        earlier_written: Mapping[str, UserShare] | None = None,
    ) -> FeatureWrite:
        """Write what `read` made, once the batch before was written (`earlier_written`:
        what its write left, checked against what `read` assumed)."""
        ...

    async def watermarks(self, partitions: Iterable[int]) -> dict[int, int]:
        """The stored watermark of each of these partitions that has one."""
        ...


#: The write script. KEYS: the users' keys, then each shared write's key (trending: its
#: fence hash, then its sorted set). ARGV[1] is JSON [users, shared]: per user [the
#: fence read, TTL], per shared write [kind, groups], a group [partition, lowest offset,
#: highest offset, newest event time, watermark, flat deltas] (`shared_deltas`);
#: ARGV[2] the JSON config; ARGV[3...] the users' new values. First every user's stored
#: fence is checked against the one the worker read: if one moved (another worker wrote
#: since), nothing is written and those users are returned, to be read again. Then the
#: users' values are set, and each shared write's groups are decided against their
#: partition's fence `o:<partition>`: applied whole (all above it), skipped (none above
#: it) or handed back with the fence (cut there and sent again). The global write is also
#: handed back when anything before it was (its watermarks must not run ahead). Per key
#: a fixed number of commands: one HMGET, one HSET, and for a sorted set one ZMSCORE
#: and one ZADD (trimmed only when ZADD added some); decayed adds are log-sum-exps in
#: log2 space, written with %.17g (Lua's own formatting keeps 14 digits). Returns
#: {users refused, {{write, group, fence}, ...}} (group 0: the deferred global write).
_FEATURES_LUA = """
local body = cjson.decode(ARGV[1])
local cfg = cjson.decode(ARGV[2])
local users, shared = body[1], body[2]
local failed = {}
for i = 1, #users do
  local stored = redis.call('GETRANGE', KEYS[i], 0, 24)
  local fence = tonumber(string.match(stored, '^(%-?%d+)|')) or -1
  if fence ~= users[i][1] then failed[#failed + 1] = i end
end
if #failed > 0 then return {failed, {}} end
for i = 1, #users do
  redis.call('SET', KEYS[i], ARGV[2 + i], 'PX', users[i][2])
end
local LN2 = math.log(2)
local floor, format = math.floor, string.format
local function lse(a, b)
  if a == nil then return b end
  if a < b then a, b = b, a end
  return a + math.log(1 + 2 ^ (b - a)) / LN2
end
local partials = {}
local k = #users + 1
for w = 1, #shared do
  local kind, groups = shared[w][1], shared[w][2]
  local key = KEYS[k]
  k = k + 1
  local zkey = nil
  if kind == 't' then
    zkey = KEYS[k]
    k = k + 1
  end
  if kind == 'g' and #partials > 0 then
    partials[#partials + 1] = {w, 0, -1}
  else
    -- Positions in one HMGET: each group's fence (and watermark), then t, pt and the
    -- delta fields (hashes of counts).
    local names, index, n = {}, {}, 0
    local per_group = kind == 'g' and 2 or 1
    for g = 1, #groups do
      n = n + 1
      names[n] = 'o:' .. groups[g][1]
      if kind == 'g' then
        n = n + 1
        names[n] = 'w:' .. groups[g][1]
      end
    end
    local tpos = n + 1
    if kind ~= 't' then
      names[n + 1], names[n + 2] = 't', 'pt'
      n = n + 2
      for g = 1, #groups do
        local deltas = groups[g][6]
        for j = 1, #deltas, 2 do
          local name = deltas[j]
          if not index[name] then
            n = n + 1
            names[n], index[name] = name, n
          end
        end
      end
    end
    local vals = {}
    for i = 1, n, 1000 do
      local part = redis.call('HMGET', key, unpack(names, i, math.min(i + 999, n)))
      for j = 1, #part do vals[i + j - 1] = part[j] end
    end
    local changed, adds = {}, {}
    local applied = false
    local newest = tonumber(vals[tpos]) or -1
    for g = 1, #groups do
      local group = groups[g]
      local fpos = (g - 1) * per_group + 1
      local fence = tonumber(vals[fpos]) or -1
      if group[3] <= fence then
        -- applied before
      elseif group[2] <= fence then
        partials[#partials + 1] = {w, g, fence}
      else
        applied = true
        vals[fpos], changed[fpos] = group[3], true
        if kind == 'g' and group[5] > (tonumber(vals[fpos + 1]) or -1) then
          vals[fpos + 1], changed[fpos + 1] = group[5], true
        end
        local deltas = group[6]
        if kind == 't' then
          for j = 1, #deltas, 2 do
            adds[deltas[j]] = lse(adds[deltas[j]], deltas[j + 1])
          end
        else
          if group[4] > newest then newest = group[4] end
          for j = 1, #deltas, 2 do
            local pos = index[deltas[j]]
            vals[pos], changed[pos] = (tonumber(vals[pos]) or 0) + deltas[j + 1], true
          end
        end
      end
    end
    if applied then
      local step, pruned = -1, nil
      if kind == 't' then
        local members = {}
        for member in pairs(adds) do members[#members + 1] = member end
        if #members > 0 then
          local current = {}
          for i = 1, #members, 1000 do  -- unpack takes ~8000 values at most
            local last = math.min(i + 999, #members)
            local part = redis.call('ZMSCORE', zkey, unpack(members, i, last))
            for j = 1, #part do current[i + j - 1] = part[j] end
          end
          local scored = {}
          for i, member in ipairs(members) do
            scored[2 * i - 1] = format('%.17g', lse(tonumber(current[i]), adds[member]))
            scored[2 * i] = member
          end
          local added = 0
          for i = 1, #scored, 2000 do
            added = added + redis.call('ZADD', zkey, unpack(scored, i, math.min(i + 1999, #scored)))
          end
          if added > 0 then
            redis.call('ZREMRANGEBYRANK', zkey, 0, -(cfg.trending_keep + 1))
          end
        end
        redis.call('PEXPIRE', zkey, cfg.trending_ttl)
      else
        vals[tpos], changed[tpos] = newest, true
        step = floor(math.max(newest, 0) / cfg.prune_every)
        pruned = tonumber(vals[tpos + 1])
        if pruned == nil or step > pruned then
          vals[tpos + 1], changed[tpos + 1] = step, true
        end
      end
      local out, m = {}, 0
      for pos in pairs(changed) do
        -- Whole numbers (counts, times, offsets, steps) under 14 digits: Lua's own
        -- conversion writes them exactly.
        out[m + 1], out[m + 2] = names[pos], vals[pos]
        m = m + 2
      end
      for i = 1, m, 1000 do
        redis.call('HSET', key, unpack(out, i, math.min(i + 999, m)))
      end
      if kind == 't' then
        redis.call('PEXPIRE', key, cfg.trending_ttl)
      elseif pruned == nil or step > pruned then
        -- Once per step: the TTL (so the hash outlives its last write by the counter
        -- TTL) and, but on a new hash, the tiles no window at the newest event covers.
        redis.call('PEXPIRE', key, cfg.counter_ttl + cfg.prune_every)
        if pruned ~= nil then
          local all = redis.call('HGETALL', key)
          local stale = {}
          for i = 1, #all, 2 do
            local width, tile = string.match(all[i], '^n:[^:]+:([^:]+):(%d+)$')
            local oldest = width and floor((newest - cfg.windows[width]) / cfg.widths[width])
            if width and tonumber(tile) < oldest then
              stale[#stale + 1] = all[i]
            end
          end
          for i = 1, #stale, 1000 do
            redis.call('HDEL', key, unpack(stale, i, math.min(i + 999, #stale)))
          end
        end
      end
    end
  end
end
return {failed, partials}
"""

#: Every KEYS hash's fields and values (a single Redis: keys of many slots in one call).
_READ_HASHES_LUA = """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('HGETALL', KEYS[i]) end
return out
"""

#: Rounds of refused users or cut groups before giving up (each needs another worker
#: writing the same keys at the same time: a rebalance in progress).
_MAX_ROUNDS = 20


class FeatureConflict(RuntimeError):
    """Keys kept moving under this worker's writes (another worker is writing them)."""


#: A user's part of a script call: user, key, the fence read, the new value.
_UserWrite = tuple[str, str, int, bytes]
#: A whole script call on a single Redis: the call, its users in order, its shared writes.
_PreparedCall = tuple[ScriptCall, list[str], list[SharedWrite]]


class RedisFeatureStore:
    """The feature store on a single Redis or a Redis Cluster: writes and reads."""

    def __init__(
        self, client: HotRedis, prefix: str, config: FeatureConfig, cached_users: int = 0
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self.config = config
        self._script = SlotScript(client, _FEATURES_LUA)
        self._read_hashes = SlotScript(client, _READ_HASHES_LUA)
        self._on_cluster = isinstance(client, aioredis.RedisCluster)
        self._config_json = orjson.dumps(
            {
                "widths": TILE_WIDTHS,
                "windows": WINDOW_OF_WIDTH,
                "prune_every": PRUNE_EVERY_MS,
                "counter_ttl": config.counter_ttl_ms,
                "trending_ttl": config.trending_ttl_ms,
                "trending_keep": config.trending_keep,
            }
        )
        self._user_ttl = max(config.affinity_ttl_ms, config.counter_ttl_ms)
        # The shares this store last wrote, decoded, newest written last: a user lives on
        # one partition and a partition on one worker, so their next batch starts from here
        # instead of a read and a decode (~15 us a user on the peers bench's traffic, in
        # process; on the bench itself most repeat users come from the batch just before,
        # handed over by `read`'s `earlier`). Never trusted blindly: the write is checked
        # against the cached share's fence, and a share another worker (or an erasure, or
        # a TTL) moved is refused, read and applied again. Advanced in place, so a write
        # that fails clears it all.
        self._cached: dict[str, UserShare] = {}
        self._cache_size = cached_users

    # --- writes ---------------------------------------------------------------------

    async def apply(self, plan: FeaturePlan) -> dict[str, UserOutcome]:
        """Read the batch's users, apply it to them (`advance_user`), write them back
        checked against the fences read, then the shared keys' fenced increments. Safe to
        repeat, in part or whole."""
        return (await self.write(plan, await self.read(plan))).outcomes

    async def read(
        self, plan: FeaturePlan, earlier: Mapping[str, UserShare] | None = None
    ) -> FeatureRead:
        """The first half of `apply`: the users advanced by the batch from their stored
        shares: the ones this store wrote last from its cache, the others read (one
        MGET). A user of the batch before, whose write may not have landed yet, is
        advanced from the share that write sends (`earlier`), not from a read that could
        be older than it; `write` checks that this share did land before writing on it."""
        assumed: dict[str, UserShare] = {}
        known: list[tuple[str, UserShare]] = []
        fresh: list[str] = []
        cached = self._cached
        for user in plan.users:
            share = earlier.get(user) if earlier else None
            if share is not None:
                assumed[user] = share
            elif (share := cached.get(user)) is not None:
                known.append((user, share))
            else:
                fresh.append(user)
        steps, expected = await self._advanced(plan, fresh)
        config = self.config
        for user, share in (*assumed.items(), *known):
            expected[user] = share.fence
            steps[user] = advance_user(share, plan.users[user], config)  # in place
        read = FeatureRead(steps, expected, _values(steps), assumed)
        if not self._on_cluster and steps:
            read.call = self._prepared_call(plan, read)
        return read

    async def write(
        self,
        plan: FeaturePlan,
        read: FeatureRead,
        earlier_written: Mapping[str, UserShare] | None = None,
    ) -> FeatureWrite:
        """The second half of `apply`, once the batch before was written: users advanced
        from a value it did not leave (refused, it wrote another) are read and advanced
        again; then the users' check-and-set and the shared writes."""
        if not read.steps:
            return FeatureWrite({}, {})
        try:
            written = await self._write(plan, read, earlier_written)
        except BaseException:
            self._cached.clear()  # advanced in place, maybe not written
            raise
        self._remember(written)
        outcomes = {
            user: UserOutcome(
                user,
                step.session_started,
                step.top_before,
                step.top_after,
                plan.users[user][0][0],
                frozenset(step.duplicates),
            )
            for user, step in read.steps.items()
        }
        return FeatureWrite(outcomes, written)

    def _remember(self, written: Mapping[str, UserShare]) -> None:
        """Cache the shares just written, newest last, the oldest dropped past the size."""
        if self._cache_size <= 0:
            return
        cached = self._cached
        for user, share in written.items():
            cached.pop(user, None)
            cached[user] = share
        excess = len(cached) - self._cache_size
        if excess > 0:
            for user in list(itertools.islice(cached, excess)):
                del cached[user]

    async def _write(
        self,
        plan: FeaturePlan,
        read: FeatureRead,
        earlier_written: Mapping[str, UserShare] | None,
    ) -> dict[str, UserShare]:
        if read.assumed:
            landed = earlier_written or {}
            moved = [user for user, value in read.assumed.items() if landed.get(user) is not value]
            if moved:
                await self._advance_again(plan, read, moved)
        steps = read.steps
        if self._on_cluster:
            # A script call reaches one slot: the users first (each in its own), then the
            # products and categories, then the global hash once the rest is in.
            await self._write_users(plan, read)
            writes = shared_writes(steps, plan, self._prefix, self.config)
            others = [w for w in writes if w.kind is not WriteKind.GLOBAL]
            await self._write_shared(plan, steps, others)
            await self._write_shared(plan, steps, [w for w in writes if w.kind is WriteKind.GLOBAL])
        else:
            for _ in range(_MAX_ROUNDS):
                call, users, writes = read.call or self._prepared_call(plan, read)
                [(refused, partials)] = await self._script.run([call])
                if not refused:
                    await self._finish(plan, steps, writes, partials)
                    break
                await self._advance_again(plan, read, [users[i - 1] for i in refused])
            else:
                raise FeatureConflict("users' features kept changing under this worker")
        return read.shares()

    async def _advanced(
        self, plan: FeaturePlan, users: list[str]
    ) -> tuple[dict[str, UserStep], dict[str, int]]:
        """The users' steps from their stored values, and the fences those held."""
        if not users:
            return {}, {}
        keys = [user_features_key(self._prefix, user) for user in users]
        if isinstance(self._redis, aioredis.RedisCluster):
            values = await self._redis.mget_nonatomic(keys)  # per slot, one round trip
        else:
            values = await self._redis.mget(keys)
        steps: dict[str, UserStep] = {}
        expected: dict[str, int] = {}
        for user, value in zip(users, values, strict=True):
            share = decode_user_share(value) if value is not None else None
            expected[user] = share.fence if share is not None else -1
            steps[user] = advance_user(share, plan.users[user], self.config)
        return steps, expected

    async def _advance_again(self, plan: FeaturePlan, read: FeatureRead, users: list[str]) -> None:
        """Users whose stored fence moved since it was read (or who were advanced from a
        value that did not land): read and apply them again."""
        for user in users:
            self._cached.pop(user, None)
        fresh_steps, fresh_expected = await self._advanced(plan, users)
        read.call = None
        read.steps.update(fresh_steps)
        read.expected.update(fresh_expected)
        for user, step in fresh_steps.items():
            read.assumed.pop(user, None)
            if step.share is not None:
                read.values[user] = encode_user_share(step.share)
            else:
                read.values.pop(user, None)

    def _prepared_call(self, plan: FeaturePlan, read: FeatureRead) -> _PreparedCall:
        writes = shared_writes(read.steps, plan, self._prefix, self.config)
        users = self._user_writes(read)
        return self._call(users, writes), [write[0] for write in users], writes

    def _user_writes(self, read: FeatureRead) -> list[_UserWrite]:
        prefix, expected = self._prefix, read.expected
        return [
            (user, user_features_key(prefix, user), expected[user], value)
            for user, value in read.values.items()
        ]

    async def _write_users(self, plan: FeaturePlan, read: FeatureRead) -> None:
        """Cluster: every user's check-and-set in its own slot's call, one round trip;
        refused ones read, applied and sent again."""
        for _ in range(_MAX_ROUNDS):
            users = self._user_writes(read)
            groups = by_slot(self._redis, users, lambda write: write[1])
            results = await self._script.run([self._call(group, []) for group in groups])
            refused: list[str] = []
            for group, (group_refused, _partials) in zip(groups, results, strict=True):
                refused += [group[i - 1][0] for i in group_refused]
            if not refused:
                return
            await self._advance_again(plan, read, refused)
        raise FeatureConflict("users' features kept changing under this worker")

    async def _write_shared(
        self, plan: FeaturePlan, steps: Mapping[str, UserStep], writes: Sequence[SharedWrite]
    ) -> None:
        """Cluster: the shared writes, one call per slot, then the cut groups again."""
        groups = by_slot(self._redis, writes, lambda write: write.key)
        results = await self._script.run([self._call([], group) for group in groups])
        for group, (_refused, partials) in zip(groups, results, strict=True):
            await self._finish(plan, steps, group, partials)

    async def _finish(
        self,
        plan: FeaturePlan,
        steps: Mapping[str, UserStep],
        writes: Sequence[SharedWrite],
        partials: Sequence[Any],
    ) -> None:
        """Send the groups handed back again, cut at the fences the script found (and a
        deferred global write whole), until none is."""
        for _ in range(_MAX_ROUNDS):
            if not partials:
                return
            cut_at: dict[tuple[WriteKind, str, int], int] = {}
            for write_number, group_number, fence in partials:
                write = writes[write_number - 1]
                if group_number == 0:  # the deferred global write: all its groups
                    for row in write.groups:
                        cut_at[write.kind, write.entity, cast("int", row[0])] = -1
                else:
                    partition = cast("int", write.groups[group_number - 1][0])
                    cut_at[write.kind, write.entity, partition] = int(fence)
            writes = shared_writes(steps, plan, self._prefix, self.config, cut_at)
            [(_refused, partials)] = await self._script.run([self._call([], writes)])
        raise FeatureConflict("shared features kept changing under this worker")

    def _call(self, users: Sequence[_UserWrite], writes: Sequence[SharedWrite]) -> ScriptCall:
        keys = [key for _user, key, _fence, _value in users]
        for write in writes:
            keys.append(write.key)
            keys += write.also
        body = orjson.dumps(
            [
                [[fence, self._user_ttl] for _user, _key, fence, _value in users],
                [[write.kind.value, write.groups] for write in writes],
            ]
        )
        return keys, [body, self._config_json, *(value for *_rest, value in users)]

    async def watermarks(self, partitions: Iterable[int]) -> dict[int, int]:
        wanted = sorted(set(partitions))
        if not wanted:
            return {}
        values = await self._redis.hmget(
            global_features_key(self._prefix), [watermark_field(p) for p in wanted]
        )
        return {p: int(v) for p, v in zip(wanted, values, strict=True) if v is not None}

    # --- reads (the ranker's and the feed service's client) -------------------------

    async def user_features(
        self, user_id: str, at_ms: int | None = None, top_n: int = 5
    ) -> UserFeatures:
        """A user's features at `at_ms` (default: now), whether their session is hot or
        long over: features are not part of the session flush."""
        at = _now_ms() if at_ms is None else at_ms
        share = await self.user_share(user_id)
        return user_features_of(user_id, share, at_ms=at, config=self.config, top_n=top_n)

    async def user_share(self, user_id: str) -> UserShare | None:
        """The user's stored share (None: no event of theirs is stored): the ranker
        derives both their features and their affinities from this one read."""
        value = await self._redis.get(user_features_key(self._prefix, user_id))
        return decode_user_share(value) if value is not None else None

    async def user_shares(self, user_ids: Sequence[str]) -> list[UserShare | None]:
        """`user_share` of each user, in order, in one round trip (one per node)."""
        if not user_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.get(user_features_key(self._prefix, user_id))
            values = await pipe.execute()
        return [decode_user_share(value) if value is not None else None for value in values]

    async def product_features(
        self, product_ids: Sequence[str], at_ms: int | None = None
    ) -> list[ProductFeatures]:
        """Features of each product, in order, in one round trip (one per node on a
        cluster). A product never seen has zero counts and the global rates."""
        _every, features = await self.product_features_and_global(product_ids, at_ms)
        return features

    async def product_features_and_global(
        self, product_ids: Sequence[str], at_ms: int | None = None
    ) -> tuple[WindowCounts, list[ProductFeatures]]:
        """`product_features`, and every product's windows at the same time (what the
        ranking features divide by)."""
        at = _now_ms() if at_ms is None else at_ms
        keys = [global_features_key(self._prefix)]
        keys += [product_features_key(self._prefix, product_id) for product_id in product_ids]
        if self._on_cluster:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(key)
                hashes = [_decoded(fields) for fields in await pipe.execute()]
        else:
            # One command for every hash: per-command client overhead dominates otherwise.
            [replies] = await self._read_hashes.run([(keys, [])])
            hashes = [_pairs(flat) for flat in replies]
        every = hash_window_counts(hashes[0], at)
        return every, [
            product_features_of(product_id, fields, every, at, self.config)
            for product_id, fields in zip(product_ids, hashes[1:], strict=True)
        ]

    async def user_category_affinity(
        self, user_id: str, n: int = 20, at_ms: int | None = None
    ) -> list[tuple[str, float]]:
        """The user's `n` highest-affinity categories with their scores at `at_ms`."""
        at = _now_ms() if at_ms is None else at_ms
        share = await self.user_share(user_id)
        scores = share.affinity.items() if share is not None else ()
        return top_decayed(scores, at, self.config.affinity_half_life_ms, max(n, 1))

    async def trending(
        self, category_id: str, n: int = 50, at_ms: int | None = None
    ) -> list[tuple[str, float]]:
        """The category's `n` most popular products (decayed) with their scores."""
        [top] = await self.trending_many([category_id], n, at_ms)
        return top

    async def trending_many(
        self, category_ids: Sequence[str], n: int = 50, at_ms: int | None = None
    ) -> list[list[tuple[str, float]]]:
        """`trending` of each category, in order, in one pipelined round trip."""
        at = _now_ms() if at_ms is None else at_ms
        half_life = self.config.trending_half_life_ms
        async with self._redis.pipeline(transaction=False) as pipe:
            for category_id in category_ids:
                pipe.zrevrange(
                    trending_key(self._prefix, category_id), 0, max(n, 1) - 1, withscores=True
                )
            replies = cast("list[list[tuple[bytes, float]]]", await pipe.execute())
        return [
            [(member, decayed_value(score, at, half_life)) for member, score in _scored(rows)]
            for rows in replies
        ]

    async def close(self) -> None:
        await self._redis.aclose()


def _values(steps: Mapping[str, UserStep]) -> dict[str, bytes]:
    """Each user's new value, of those with a share to store."""
    return {
        user: encode_user_share(step.share)
        for user, step in steps.items()
        if step.share is not None
    }


def _now_ms() -> int:
    return int(time.time() * 1000)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decoded(fields: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    return {_text(name): _text(value) for name, value in fields.items()}


def _pairs(flat: Sequence[bytes | str]) -> dict[str, str]:
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}


def _scored(rows: Iterable[tuple[bytes | str, float]]) -> list[tuple[str, float]]:
    return [(_text(member), float(score)) for member, score in rows]
