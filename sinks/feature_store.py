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
from typing import Protocol, cast

from schemas.feature_layout import (
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
    whether one of their events started a session, and their top category (highest
    affinity) before and after. Events below the fence (read again) change neither."""

    user_id: str
    session_started: bool
    top_before: str | None
    top_after: str | None


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
  local zkey = nil
  if kind == 'u' or kind == 't' then
    zkey = KEYS[k]
    k = k + 1
  end
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
    if offset > fence then
      if offset > top then top = offset end
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
        elseif kind == 'g' then
          local name = 'w:' .. partition
          if not maxes[name] or t > maxes[name] then maxes[name] = t end
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
  if kind == 'u' then result = {started, top_of(zkey), ''} end
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
    if kind ~= 't' then
      redis.call('HSET', key, 't', string.format('%.0f', newest))
    end
    if kind == 'u' then
      redis.call('HSET', key, 's', string.format('%.0f', session_start), 'sn', session_events)
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
    if kind ~= 't' and step > tonumber(state[5] or '-1') then
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
  if kind == 'u' then result[3] = top_of(zkey) end
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
        self._config_json = _compact_json(
            {**script_config(config), "counted": sorted(t.value for t in PRODUCT_COUNTED_TYPES)}
        )

    # --- writes ---------------------------------------------------------------------

    async def apply(self, plan: FeaturePlan) -> dict[str, UserOutcome]:
        """One script call per slot (one in all on a single Redis), in one pipeline. Safe
        to repeat, in part or whole: each key takes only events above its fence."""
        if not plan.writes:
            return {}
        groups = by_slot(self._redis, plan.writes, lambda write: write.key)
        calls: list[ScriptCall] = [self._call(group) for group in groups]
        results = await self._script.run(calls)
        outcomes: dict[str, UserOutcome] = {}
        for group, result in zip(groups, results, strict=True):
            for write, row in zip(group, cast("list[list[object]]", result), strict=True):
                if write.kind is WriteKind.USER:
                    started, before, after = row
                    user_id = write.entity
                    outcomes[user_id] = UserOutcome(
                        user_id,
                        bool(started) or outcomes.get(user_id, _NONE).session_started,
                        _text(before) or None,
                        _text(after) or None,
                    )
        return outcomes

    def _call(self, writes: Sequence[FencedWrite]) -> ScriptCall:
        keys = [key for write in writes for key in write.keys]
        rows = [[write.kind.value, write.partition, write.events] for write in writes]
        return keys, [self._config_json, _compact_json(rows), PRUNE_EVERY_MS]

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


_NONE = UserOutcome("", False, None, None)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decoded(fields: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    return {_text(name): _text(value) for name, value in fields.items()}


def _scored(rows: Iterable[tuple[bytes | str, float]]) -> list[tuple[str, float]]:
    return [(_text(member), float(score)) for member, score in rows]


_compact_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
