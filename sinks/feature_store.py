"""The online feature store on Redis: the worker's fenced writes and the read client.

The layout is `schemas.feature_layout`; what the features mean, and how stored values
become them, is `schemas.features`. A batch is one script call per slot it touches (on a
single Redis: one call), all in one pipeline, sent beside the interaction store's call.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import redis.asyncio as aioredis

from schemas.feature_layout import (
    DEDUPE_KEEP,
    PRODUCT_COUNTED_TYPES,
    PRUNE_EVERY_MS,
    FencedWrite,
    WriteKind,
    global_features_key,
    product_features_key,
    trending_key,
    user_affinity_key,
    user_features_key,
    watermark_field,
)
from schemas.features import (
    FeatureConfig,
    FeaturePlan,
    ProductFeatures,
    UserFeatures,
    decayed_value,
    product_features_of,
    script_config,
    user_features_of,
)
from sinks.redis_scripts import HotRedis, ScriptCall, SlotScript, by_slot


@dataclass(frozen=True, slots=True)
class UserOutcome:
    """What a batch's write did to one user (from the script, for the trigger decision):
    whether one of their events started a session, their top category (highest affinity)
    before and after, and which of their events were duplicates. Events below the fence
    (read again) change nothing, but are still told apart as duplicates or not."""

    user_id: str
    session_started: bool
    top_before: str | None
    top_after: str | None
    partition: int = 0
    duplicates: frozenset[int] = frozenset()  # offsets of the user's duplicate events


class FeatureWriter(Protocol):
    async def apply(self, plan: FeaturePlan) -> dict[str, UserOutcome]:
        """Apply a plan's fenced writes; per user key, what it did."""
        ...

    async def watermarks(self, partitions: Iterable[int]) -> dict[int, int]:
        """The stored watermark of each of these partitions that has one."""
        ...


#: The write script. KEYS: each write's keys in order (user writes: hash, affinity set;
#: trending: fence hash, set; product and global: the hash). ARGV[1] is JSON: [config,
#: [[kind, partition, [[offset, type, time, member, late], ...]], ...]]; ARGV[2] is the
#: prune step. Per write: only events above the key's fence `o:<partition>` are taken, in
#: order; their tile increments, maxima and decayed adds are gathered in Lua, then
#: written with one command per field or member, the fence raised, TTLs set, and old
#: tiles pruned at most once per prune step of event time. Decayed adds are log-sum-exps
#: of log2(weight) + time / half-life (`schemas.features`); scores are written with
#: %.17g (Lua's default number formatting keeps only 14 digits). Returns, per write,
#: {session started, top before, top after} for users and {} otherwise.
_FEATURES_LUA = """
local cfg = cjson.decode(ARGV[1])
local writes = cjson.decode(ARGV[2])
local prune_every = tonumber(ARGV[3])
local dups = {}
for _, known in ipairs(cjson.decode(ARGV[4])) do dups[known] = true end
local widths = cfg.widths
local weights = cfg.weights
local counted = {}
for _, kind in ipairs(cfg.counted) do counted[kind] = true end
local LN2 = math.log(2)
local function lse(a, b)
  if a == nil then return b end
  if a < b then a, b = b, a end
  return a + math.log(1 + 2 ^ (b - a)) / LN2
end
local function top_of(zkey)
  local top = redis.call('ZREVRANGE', zkey, 0, 0)
  return top[1] or ''
end
local results = {}
local k = 1
for w = 1, #writes do
  local kind, partition, events = writes[w][1], writes[w][2], writes[w][3]
  local key = KEYS[k]
  k = k + 1
  local zkey, ids = nil, nil
  if kind == 'u' or kind == 't' then
    zkey = KEYS[k]
    k = k + 1
  end
  if kind == 'u' then
    ids = KEYS[k]
    k = k + 1
  end
  local found = {}
  local id_count = ids and redis.call('ZCARD', ids) or 0
  local fence_name = 'o:' .. partition
  local state = redis.call('HMGET', key, fence_name, 't', 's', 'sn', 'pt')
  local fence = tonumber(state[1] or '-1')
  local newest = tonumber(state[2] or '-1')
  local session_start = tonumber(state[3] or '-1')
  local session_events = tonumber(state[4] or '0')
  local top = fence
  local incr, maxes, adds = {}, {}, {}
  local started = 0
  local tile_widths = (kind == 'u') and cfg.user_widths or cfg.product_widths
  local half_life = (kind == 't') and cfg.trending_half_life or cfg.affinity_half_life
  for i = 1, #events do
    local e = events[i]
    local offset, etype, t, member, late = e[1], e[2], e[3], e[4], e[5]
    local dup = dups[partition .. ':' .. offset]
    if ids and e[6] ~= '' then
      local first = redis.call('ZSCORE', ids, e[6])
      if first then
        dup = tonumber(first) ~= offset
      elseif offset > fence then
        redis.call('ZADD', ids, offset, e[6])
        id_count = id_count + 1
        if id_count > cfg.dedupe_keep then
          redis.call('ZREMRANGEBYRANK', ids, 0, 0)
          id_count = id_count - 1
        end
      end
      if dup then found[#found + 1] = offset end
    end
    if offset > fence then
      if offset > top then top = offset end
      if kind == 'g' then
        local name = 'w:' .. partition
        if not maxes[name] or t > maxes[name] then maxes[name] = t end
      end
    end
    if offset > fence and not dup then
      if kind ~= 't' then
        if late == 1 then
          if kind == 'u' then incr['late'] = (incr['late'] or 0) + 1 end
        elseif kind == 'u' or counted[etype] then
          for _, width in ipairs(tile_widths) do
            local name = 'n:' .. etype .. ':' .. width .. ':' .. math.floor(t / widths[width])
            incr[name] = (incr[name] or 0) + 1
          end
        end
        if kind == 'u' then
          if newest < 0 or t > newest + cfg.session_gap then
            session_start = t
            session_events = 1
            started = 1
          else
            session_events = session_events + 1
          end
          if member ~= '' then
            local name = 'c:' .. member
            if not maxes[name] or t > maxes[name] then maxes[name] = t end
          end
        end
        if t > newest then newest = t end
      end
      local weight = weights[etype]
      if zkey and member ~= '' and weight then
        adds[member] = lse(adds[member], math.log(weight) / LN2 + t / half_life)
      end
    end
  end
  local result = {}
  if kind == 'u' then result = {started, top_of(zkey), '', {}} end
  if top > fence then
    for name, amount in pairs(incr) do
      redis.call('HINCRBY', key, name, amount)
    end
    for name, value in pairs(maxes) do
      local current = tonumber(redis.call('HGET', key, name) or '-1')
      if value > current then
        redis.call('HSET', key, name, string.format('%.0f', value))
      end
    end
    redis.call('HSET', key, fence_name, string.format('%.0f', top))
    if kind ~= 't' and newest >= 0 then
      redis.call('HSET', key, 't', string.format('%.0f', newest))
    end
    if kind == 'u' then
      redis.call('HSET', key, 's', string.format('%.0f', session_start), 'sn', session_events)
    end
    if ids then
      redis.call('PEXPIRE', ids, cfg.counter_ttl)
    end
    if zkey then
      for member, add in pairs(adds) do
        local current = tonumber(redis.call('ZSCORE', zkey, member))
        redis.call('ZADD', zkey, string.format('%.17g', lse(current, add)), member)
      end
      local keep = (kind == 't') and cfg.trending_keep or cfg.affinity_keep
      redis.call('ZREMRANGEBYRANK', zkey, 0, -(keep + 1))
      local ttl = (kind == 't') and cfg.trending_ttl or cfg.affinity_ttl
      redis.call('PEXPIRE', zkey, ttl)
      redis.call('PEXPIRE', key, (kind == 't') and ttl or cfg.counter_ttl)
    else
      redis.call('PEXPIRE', key, cfg.counter_ttl)
    end
    local step = math.floor(newest / prune_every)
    if kind ~= 't' and newest >= 0 and step > tonumber(state[5] or '-1') then
      local fields = redis.call('HGETALL', key)
      local stale = {}
      local category_start = math.floor((newest - cfg.category_window[1]) / cfg.category_window[2])
        * cfg.category_window[2]
      for i = 1, #fields, 2 do
        local name = fields[i]
        local width, tile = string.match(name, '^n:[^:]+:([^:]+):(%-?%d+)$')
        if width then
          local cutoff = math.floor((newest - cfg.windows[width]) / widths[width])
          if tonumber(tile) < cutoff then stale[#stale + 1] = name end
        elseif string.sub(name, 1, 2) == 'c:' and tonumber(fields[i + 1]) < category_start then
          stale[#stale + 1] = name
        end
      end
      for i = 1, #stale, 1000 do
        redis.call('HDEL', key, unpack(stale, i, math.min(i + 999, #stale)))
      end
      redis.call('HSET', key, 'pt', step)
    end
  end
  if kind == 'u' then
    result[3] = top_of(zkey)
    result[4] = found
    for _, offset in ipairs(found) do dups[partition .. ':' .. offset] = true end
  end
  results[w] = result
end
return results
"""


class RedisFeatureStore:
    """The feature store on a single Redis or a Redis Cluster: writes and reads."""

    def __init__(self, client: HotRedis, prefix: str, config: FeatureConfig) -> None:
        self._redis = client
        self._prefix = prefix
        self.config = config
        self._script = SlotScript(client, _FEATURES_LUA)
        self._on_cluster = isinstance(client, aioredis.RedisCluster)
        self._config_json = _compact_json(
            {
                **script_config(config),
                "counted": sorted(t.value for t in PRODUCT_COUNTED_TYPES),
                "dedupe_keep": DEDUPE_KEEP,
            }
        )

    # --- writes ---------------------------------------------------------------------

    async def apply(self, plan: FeaturePlan) -> dict[str, UserOutcome]:
        """One script call per slot (one in all on a single Redis), in one pipeline. Safe
        to repeat, in part or whole: each key takes only events above its fence."""
        if not plan.writes:
            return {}
        if not self._on_cluster:
            # One call: its user writes come first and tell the others the duplicates.
            results = await self._script.run([self._call(plan.writes, [])])
            return self._outcomes([(plan.writes, results[0])])
        # A script call only reaches one slot: users' writes first, in one round trip,
        # then everything else with the duplicates they found, in a second.
        users = [write for write in plan.writes if write.kind is WriteKind.USER]
        others = [write for write in plan.writes if write.kind is not WriteKind.USER]
        groups = by_slot(self._redis, users, lambda write: write.key)
        results = await self._script.run([self._call(group, []) for group in groups])
        outcomes = self._outcomes(list(zip(groups, results, strict=True)))
        duplicates = [
            f"{o.partition}:{offset}" for o in outcomes.values() for offset in o.duplicates
        ]
        rest = by_slot(self._redis, others, lambda write: write.key)
        await self._script.run([self._call(group, duplicates) for group in rest])
        return outcomes

    def _outcomes(
        self, answered: Sequence[tuple[Sequence[FencedWrite], object]]
    ) -> dict[str, UserOutcome]:
        outcomes: dict[str, UserOutcome] = {}
        for group, result in answered:
            for write, row in zip(group, cast("list[list[Any]]", result), strict=True):
                if write.kind is not WriteKind.USER:
                    continue
                started, before, after, duplicates = row
                earlier = outcomes.get(write.entity)
                outcomes[write.entity] = UserOutcome(
                    write.entity,
                    bool(started) or (earlier is not None and earlier.session_started),
                    _text(before) or None,
                    _text(after) or None,
                    write.partition,
                    frozenset(int(offset) for offset in duplicates),
                )
        return outcomes

    def _call(self, writes: Sequence[FencedWrite], duplicates: Sequence[str]) -> ScriptCall:
        keys = [key for write in writes for key in write.keys]
        rows = [[write.kind.value, write.partition, write.events] for write in writes]
        return keys, [
            self._config_json,
            _compact_json(rows),
            PRUNE_EVERY_MS,
            _compact_json(list(duplicates)),
        ]

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
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(user_features_key(self._prefix, user_id))
            pipe.zrevrange(user_affinity_key(self._prefix, user_id), 0, top_n - 1, withscores=True)
            fields, affinity = await pipe.execute()
        return user_features_of(
            user_id, _decoded(fields), _scored(affinity), at_ms=at, config=self.config, top_n=top_n
        )

    async def product_features(
        self, product_ids: Sequence[str], at_ms: int | None = None
    ) -> list[ProductFeatures]:
        """Features of each product, in order, in one round trip (one per node on a
        cluster). A product never seen has zero counts and the global rates."""
        at = _now_ms() if at_ms is None else at_ms
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(global_features_key(self._prefix))
            for product_id in product_ids:
                pipe.hgetall(product_features_key(self._prefix, product_id))
            global_fields, *rows = await pipe.execute()
        every = _decoded(global_fields)
        return [
            product_features_of(product_id, _decoded(fields), every, at, self.config)
            for product_id, fields in zip(product_ids, rows, strict=True)
        ]

    async def user_category_affinity(
        self, user_id: str, n: int = 20, at_ms: int | None = None
    ) -> list[tuple[str, float]]:
        """The user's `n` highest-affinity categories with their scores at `at_ms`."""
        return await self._top(user_affinity_key(self._prefix, user_id), n, at_ms, True)

    async def trending(
        self, category_id: str, n: int = 50, at_ms: int | None = None
    ) -> list[tuple[str, float]]:
        """The category's `n` most popular products (decayed) with their scores."""
        return await self._top(trending_key(self._prefix, category_id), n, at_ms, False)

    async def _top(
        self, key: str, n: int, at_ms: int | None, affinity: bool
    ) -> list[tuple[str, float]]:
        at = _now_ms() if at_ms is None else at_ms
        half_life = (
            self.config.affinity_half_life_ms if affinity else self.config.trending_half_life_ms
        )
        rows = cast(
            "list[tuple[bytes, float]]",
            await self._redis.zrevrange(key, 0, max(n, 1) - 1, withscores=True),
        )
        return [(member, decayed_value(score, at, half_life)) for member, score in _scored(rows)]

    async def close(self) -> None:
        await self._redis.aclose()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decoded(fields: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    return {_text(name): _text(value) for name, value in fields.items()}


def _scored(rows: Iterable[tuple[bytes | str, float]]) -> list[tuple[str, float]]:
    return [(_text(member), float(score)) for member, score in rows]


_compact_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
