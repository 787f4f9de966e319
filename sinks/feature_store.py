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
    DEDUPE_OFFSETS,
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
    duplicates: frozenset[str] = frozenset()  # "partition:offset" of duplicate events


class FeatureWriter(Protocol):
    async def apply(self, plan: FeaturePlan) -> dict[str, UserOutcome]:
        """Apply a plan's fenced writes; per user key, what it did."""
        ...

    async def watermarks(self, partitions: Iterable[int]) -> dict[int, int]:
        """The stored watermark of each of these partitions that has one."""
        ...


#: The write script. KEYS: each write's keys in order (user writes: hash, affinity set;
#: trending: fence hash, set; product and global: the hash). ARGV[1] is the JSON config
#: (`script_config`), ARGV[2] the writes, [[kind, [[partition, offset, type, time,
#: member, late, event id], ...]], ...], ARGV[3] the prune step, ARGV[4] a JSON list of
#: "partition:offset" already known to be duplicates (from the users' calls, on a
#: cluster). Per write, in a fixed number of commands whatever its events: one HMGET of
#: every field its events touch, the events above their partition's fence `o:<partition>`
#: taken in order (duplicates, told by the user's `e:<event id>` fields, left out), then
#: one HSET of every changed field and the raised fences, and for a sorted set one
#: ZMSCORE and one ZADD of its members (trimmed only when ZADD added some); TTLs; old
#: fields pruned at most once per prune step of event time. Decayed adds are
#: log-sum-exps of log2(weight) + time / half-life (`schemas.features`); numbers are
#: written with %.17g (Lua's own formatting keeps 14 digits). A user's top category and
#: its score are kept in their hash (`top`, `ts`), so the top after a write needs no
#: second read of the set. Returns, per write, {session started, top before, top after,
#: {"partition:offset" of duplicates}} for users and {} otherwise.
_FEATURES_LUA = """
local cfg = cjson.decode(ARGV[1])
local writes = cjson.decode(ARGV[2])
local prune_every = tonumber(ARGV[3])
local dups = {}
for _, known in ipairs(cjson.decode(ARGV[4])) do dups[known] = true end
local widths, windows = cfg.widths, cfg.windows
local horizon = cfg.dedupe_offsets
local counted = {}
for _, kind in ipairs(cfg.counted) do counted[kind] = true end
local LN2 = math.log(2)
local log_weight = {}
for kind, weight in pairs(cfg.weights) do log_weight[kind] = math.log(weight) / LN2 end
local BASE = {u = {'t', 'pt', 's', 'sn', 'top', 'ts', 'late', 'ac'}, p = {'t', 'pt'},
  g = {'t', 'pt'}, t = {}}
local floor, format = math.floor, string.format
local has_dups = next(dups) ~= nil
-- Number-to-string conversions (sprintf in Lua 5.1) are the script's main cost: each
-- partition's field names and each tile's number are converted once per call.
local tile_text = {}
local function named(prefix)
  -- prefix .. number, converted once per call.
  local names = {}
  return function(number)
    local name = names[number]
    if not name then
      name = prefix .. number
      names[number] = name
    end
    return name
  end
end
local fence_name, watermark_name = named('o:'), named('w:')
local function tile_name(etype, width, tile)
  local text = tile_text[tile]
  if not text then
    text = tostring(tile)
    tile_text[tile] = text
  end
  return 'n:' .. etype .. ':' .. width .. ':' .. text
end
local function lse(a, b)
  if a == nil then return b end
  if a < b then a, b = b, a end
  return a + math.log(1 + 2 ^ (b - a)) / LN2
end
local function want(names, index, n, name)
  -- Adds a field name to a write's HMGET list once; returns the list's length.
  if not index[name] then
    n = n + 1
    names[n], index[name] = name, n
  end
  return n
end
local function above(a_score, a_member, b_score, b_member)
  -- ZREVRANGE's order: higher score first, then the greater member.
  return a_score > b_score or (a_score == b_score and a_member > b_member)
end
local results = {}
local k = 1
for w = 1, #writes do
  local kind, events = writes[w][1], writes[w][2]
  local is_user, is_trend = kind == 'u', kind == 't'
  local key = KEYS[k]
  k = k + 1
  local zkey = nil
  if is_user or is_trend then
    zkey = KEYS[k]
    k = k + 1
  end
  local tile_widths = is_user and cfg.user_widths or cfg.product_widths
  local tiles_per_event = is_trend and 0 or #tile_widths
  -- Every field the events touch, read in one HMGET.
  local names, index, n = {}, {}, 0
  for _, name in ipairs(BASE[kind]) do
    n = n + 1
    names[n], index[name] = name, n
  end
  local tiles = {}
  for i = 1, #events do
    local e = events[i]
    local name = fence_name(e[1])
    if not index[name] then
      n = n + 1
      names[n], index[name] = name, n
      if kind == 'g' then
        name = watermark_name(e[1])
        n = n + 1
        names[n], index[name] = name, n
      end
    end
    if tiles_per_event > 0 and (is_user or counted[e[3]]) then
      local t = e[4]
      for j = 1, tiles_per_event do
        local width = tile_widths[j]
        name = tile_name(e[3], width, floor(t / widths[width]))
        tiles[(i - 1) * tiles_per_event + j] = name
        n = want(names, index, n, name)
      end
    end
    if is_user then
      if e[5] ~= '' then
        name = 'c:' .. e[5]
        n = want(names, index, n, name)
      end
      if e[7] ~= '' then
        name = 'e:' .. e[7]
        n = want(names, index, n, name)
      end
    end
  end
  local values = {}
  for i = 1, n, 1000 do
    local part = redis.call('HMGET', key, unpack(names, i, math.min(i + 999, n)))
    for j = 1, #part do
      if part[j] then values[names[i + j - 1]] = part[j] end
    end
  end
  local fences, tops = {}, {}
  local newest = tonumber(values['t'] or '-1')
  local session_start = tonumber(values['s'] or '-1')
  local session_events = tonumber(values['sn'] or '0')
  local changed = {}
  local adds = {}
  local started, moved, newest_offset = 0, false, -1
  local found = {}
  local half_life = is_trend and cfg.trending_half_life or cfg.affinity_half_life
  for i = 1, #events do
    local e = events[i]
    local partition, offset, etype, t, member = e[1], e[2], e[3], e[4], e[5]
    local fence = fences[partition]
    if fence == nil then
      fence = tonumber(values[fence_name(partition)] or '-1')
      fences[partition], tops[partition] = fence, fence
    end
    local dup = has_dups and dups[partition .. ':' .. offset] or false
    if is_user and e[7] ~= '' then
      local id_name = 'e:' .. e[7]
      local first = tonumber(values[id_name])
      if first and first ~= offset and offset - first <= horizon then
        dup = true
        found[#found + 1] = partition .. ':' .. offset
      elseif offset > fence and first ~= offset then
        values[id_name] = offset
        changed[id_name] = true
      end
    end
    if offset > fence then
      moved = true
      if offset > tops[partition] then tops[partition] = offset end
      if offset > newest_offset then newest_offset = offset end
      if kind == 'g' then
        local name = watermark_name(partition)
        if t > tonumber(values[name] or '-1') then
          values[name] = t
          changed[name] = true
        end
      end
    end
    if offset > fence and not dup then
      if not is_trend then
        if e[6] == 1 then
          if is_user then
            values['late'] = tonumber(values['late'] or '0') + 1
            changed['late'] = true
          end
        elseif tiles_per_event > 0 and (is_user or counted[etype]) then
          for j = (i - 1) * tiles_per_event + 1, i * tiles_per_event do
            local name = tiles[j]
            values[name] = tonumber(values[name] or '0') + 1
            changed[name] = true
          end
        end
        if is_user then
          if newest < 0 or t > newest + cfg.session_gap then
            session_start, session_events, started = t, 1, 1
          else
            session_events = session_events + 1
          end
          if member ~= '' then
            local name = 'c:' .. member
            if t > tonumber(values[name] or '-1') then
              values[name] = t
              changed[name] = true
            end
          end
        end
        if t > newest then newest = t end
      end
      if zkey and member ~= '' and log_weight[etype] then
        adds[member] = lse(adds[member], log_weight[etype] + t / half_life)
      end
    end
  end
  local top_before = values['top'] or ''
  local top_score = tonumber(values['ts'])
  if is_user and top_before == '' then
    -- The hash expired while the (longer-lived) affinity set did not: read its top.
    local best = redis.call('ZREVRANGE', zkey, 0, 0, 'WITHSCORES')
    if best[1] then
      top_before, top_score = best[1], tonumber(best[2])
    end
  end
  local top_after = top_before
  if moved then
    if zkey and next(adds) then
      local members = {}
      for member in pairs(adds) do members[#members + 1] = member end
      local current = {}
      for i = 1, #members, 1000 do  -- unpack takes ~8000 values at most
        local part = redis.call('ZMSCORE', zkey, unpack(members, i, math.min(i + 999, #members)))
        for j = 1, #part do current[i + j - 1] = part[j] end
      end
      local scored = {}
      for i, member in ipairs(members) do
        local score = lse(tonumber(current[i]), adds[member])
        scored[2 * i - 1], scored[2 * i] = format('%.17g', score), member
        -- The top so far stays on top when it gains (scores only grow); others must pass it.
        if is_user and (top_after == '' or member == top_after
            or above(score, member, top_score, top_after)) then
          top_after, top_score = member, score
        end
      end
      local added = 0
      for i = 1, #scored, 2000 do
        added = added + redis.call('ZADD', zkey, unpack(scored, i, math.min(i + 1999, #scored)))
      end
      if added > 0 then
        -- Users keep their set's size in their hash (`ac`): trim only when it is over.
        local keep = is_trend and cfg.trending_keep or cfg.affinity_keep
        local size = is_user and tonumber(values['ac'] or '0') + added or keep + 1
        if size > keep then
          redis.call('ZREMRANGEBYRANK', zkey, 0, -(keep + 1))
          size = keep
        end
        if is_user then
          values['ac'] = size
          changed['ac'] = true
        end
      end
      redis.call('PEXPIRE', zkey, is_trend and cfg.trending_ttl or cfg.affinity_ttl)
      if is_user then
        values['top'], values['ts'] = top_after, format('%.17g', top_score)
        changed['top'], changed['ts'] = true, true
      end
    end
    for partition, highest in pairs(tops) do
      if highest > fences[partition] then
        values[fence_name(partition)] = highest
        changed[fence_name(partition)] = true
      end
    end
    local step, pruned = -1, nil
    if not is_trend then
      values['t'] = newest
      changed['t'] = true
      step = floor(math.max(newest, 0) / prune_every)
      pruned = tonumber(values['pt'])
      if pruned == nil or step > pruned then
        values['pt'] = step
        changed['pt'] = true
      end
    end
    if is_user then
      values['s'], values['sn'] = session_start, session_events
      changed['s'], changed['sn'] = true, true
    end
    local out, m = {}, 0
    for name in pairs(changed) do
      -- Numbers here are whole (counts, times, offsets, steps), under 14 digits: Lua's own
      -- conversion writes them exactly. Scores were formatted with %.17g above.
      out[m + 1], out[m + 2] = name, values[name]
      m = m + 2
    end
    for i = 1, m, 1000 do
      redis.call('HSET', key, unpack(out, i, math.min(i + 999, m)))
    end
    redis.call('PEXPIRE', key, is_trend and cfg.trending_ttl or cfg.counter_ttl)
    if pruned ~= nil and step > pruned then
      local all = redis.call('HGETALL', key)
      local stale = {}
      local category_start = floor((newest - cfg.category_window[1]) / cfg.category_window[2])
        * cfg.category_window[2]
      for i = 1, #all, 2 do
        local name = all[i]
        local prefix = string.sub(name, 1, 2)
        if prefix == 'n:' then
          local width, tile = string.match(name, '^n:[^:]+:([^:]+):(%d+)$')
          if width and tonumber(tile) < floor((newest - windows[width]) / widths[width]) then
            stale[#stale + 1] = name
          end
        elseif prefix == 'c:' and tonumber(all[i + 1]) < category_start then
          stale[#stale + 1] = name
        elseif prefix == 'e:' and tonumber(all[i + 1]) < newest_offset - horizon then
          stale[#stale + 1] = name
        end
      end
      for i = 1, #stale, 1000 do
        redis.call('HDEL', key, unpack(stale, i, math.min(i + 999, #stale)))
      end
    end
  end
  if is_user then
    results[w] = {started, top_before, top_after, found}
    for _, known in ipairs(found) do
      dups[known] = true
      has_dups = true
    end
  else
    results[w] = {}
  end
end
return results
"""


_FIRST_AND_LAST = frozenset({WriteKind.USER, WriteKind.GLOBAL})


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
                "dedupe_offsets": DEDUPE_OFFSETS,
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
        # then products and categories with the duplicates they found, in a second.
        # The global hash (the partitions' watermarks) goes in a third, once the rest is in.
        users = [write for write in plan.writes if write.kind is WriteKind.USER]
        every = [write for write in plan.writes if write.kind is WriteKind.GLOBAL]
        others = [write for write in plan.writes if write.kind not in _FIRST_AND_LAST]
        groups = by_slot(self._redis, users, lambda write: write.key)
        results = await self._script.run([self._call(group, []) for group in groups])
        outcomes = self._outcomes(list(zip(groups, results, strict=True)))
        duplicates = [known for outcome in outcomes.values() for known in outcome.duplicates]
        rest = by_slot(self._redis, others, lambda write: write.key)
        await self._script.run([self._call(group, duplicates) for group in rest])
        if every:
            await self._script.run([self._call(every, duplicates)])
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
                    frozenset(_text(known) for known in duplicates),
                )
        return outcomes

    def _call(self, writes: Sequence[FencedWrite], duplicates: Sequence[str]) -> ScriptCall:
        keys: list[str] = []
        for write in writes:
            keys.append(write.key)
            keys += write.also
        rows = [[write.kind.value, write.events] for write in writes]
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
