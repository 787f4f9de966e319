"""The Redis hot tier: each user's last-k interactions per type in sorted sets.

The key layout and the write plan are pure (`streams.logic.lastk`); this adapter only
carries a plan out, one round trip (one Lua script call) per batch; on a Redis Cluster,
one round trip per node the batch touches.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Protocol, cast

import redis.asyncio as aioredis
from redis.crc import key_slot

from schemas.events import EventType
from sinks.redis_scripts import HotRedis, ScriptCall, SlotScript
from streams.logic.lastk import (
    Interaction,
    KeyWrite,
    active_key,
    hot_key,
    plan_writes,
    version_key,
)

#: Partition -> user -> newest event time of that user in a batch.
Activity = Mapping[int, Mapping[str, int]]


class HotStore(Protocol):
    """What the agents and readers need from the hot tier."""

    async def record(
        self,
        interactions: Sequence[Interaction],
        activity: Activity | None = None,
        *,
        counted: int | None = None,
    ) -> int:
        """Apply a batch idempotently; returns how many interactions were counted."""
        ...

    async def last_k(self, user_id: str, event_type: EventType, k: int) -> list[tuple[str, int]]:
        """Newest first: (product id, event time ms)."""
        ...


class RedisHotStore:
    """HotStore on a single Redis or a Redis Cluster (keys carry a per-user hash tag)."""

    def __init__(
        self,
        client: HotRedis,
        prefix: str,
        last_k: Mapping[EventType, int],
        ttl_s: int,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._last_k = dict(last_k)
        self._ttl_s = ttl_s
        self._script = client.register_script(_APPLY_LUA)
        self._cluster_script = SlotScript(client, _APPLY_LUA)
        self._one_slot = not isinstance(client, aioredis.RedisCluster)

    @property
    def stats_key(self) -> str:
        """Counter of interactions applied, read by the demo and the benchmark."""
        return f"{self._prefix}:stats:applied"

    async def record(
        self,
        interactions: Sequence[Interaction],
        activity: Activity | None = None,
        *,
        counted: int | None = None,
    ) -> int:
        """Apply a batch in one round trip (one per node on a cluster).

        `activity` (partition -> user -> newest event time) marks those users active in
        their partition's active set and bumps their versions in the same call, so a user
        is never in the hot tier without being findable by the session flush. `counted`
        is what the applied counter grows by (default: every interaction; re-hydrated
        history is written but not counted).
        """
        writes = plan_writes(interactions, self._prefix, self._last_k)
        versions: list[str] = []
        for partition, latest in (activity or {}).items():
            if latest:
                writes.append(
                    KeyWrite(key=active_key(self._prefix, partition), keep=0, members=dict(latest))
                )
                versions.extend(version_key(self._prefix, user_id) for user_id in latest)
        applied = len(interactions) if counted is None else counted
        if not writes and not versions:
            return 0
        if self._one_slot:
            # One script call for the whole batch: with a pipeline, redis-py's per-command
            # cost (3 commands per key, packed and parsed in Python) was most of the write.
            keys, args = self._script_call(writes, versions, self.stats_key, applied)
            await self._script(keys=keys, args=args)
        else:
            await self._record_on_cluster(writes, versions, applied)
        return applied

    async def _record_on_cluster(
        self, writes: Sequence[KeyWrite], versions: Sequence[str], applied: int
    ) -> None:
        """A script may only touch one slot: one call per slot (a user's hash tag or a
        partition's), all in one pipeline; the counter (another slot) goes beside them."""
        by_slot: dict[int, tuple[list[KeyWrite], list[str]]] = {}
        for write in writes:
            by_slot.setdefault(key_slot(write.key.encode()), ([], []))[0].append(write)
        for version in versions:
            by_slot.setdefault(key_slot(version.encode()), ([], []))[1].append(version)
        calls = []
        for group, group_versions in by_slot.values():
            # The first key only routes the call; with a count of 0 it is left alone.
            router = group[0].key if group else group_versions[0]
            calls.append(self._script_call(group, group_versions, router, 0))
        counter = [("INCRBY", self.stats_key, applied)] if applied else []
        await self._cluster_script.run(calls, extra=counter)

    def _script_call(
        self, writes: Sequence[KeyWrite], versions: Sequence[str], counter: str, applied: int
    ) -> ScriptCall:
        keys = [counter, *(write.key for write in writes), *versions]
        batch = [self._ttl_s, applied, [(write.keep, write.members) for write in writes]]
        return keys, [_compact_json(batch)]

    async def last_k(self, user_id: str, event_type: EventType, k: int) -> list[tuple[str, int]]:
        key = hot_key(self._prefix, user_id, event_type)
        rows = cast(
            "list[tuple[bytes, float]]", await self._redis.zrevrange(key, 0, k - 1, withscores=True)
        )
        return [(_text(member), int(score)) for member, score in rows]

    async def close(self) -> None:
        await self._redis.aclose()

    async def applied_count(self) -> int:
        value = await self._redis.get(self.stats_key)
        return int(value or 0)


#: One batch in one round trip. KEYS[1] is the applied counter (left alone when the count
#: is 0; on a cluster it is just the call's first key, for routing), then one key per
#: sorted-set write, then version keys. ARGV[1] is JSON: [ttl, applied count,
#: [[keep, {member: score, ...}], ...]] with one entry per write key, in KEYS order. One
#: JSON argument instead of one argument per member and score: redis-py packs every
#: argument in Python (~1 us each), which was a fifth of a worker's CPU; cjson decodes the
#: batch in C. Scores are event times in ms (13 digits until the year 2286), which Lua's
#: number-to-string conversion (%.14g) passes to ZADD exactly.
#: Per last-k key (keep > 0): ZADD GT (a redelivered or late event never moves a product
#: back in time; new members are always added), keep only the newest `keep` by score
#: (event time), refresh the TTL. Per active set (keep = 0): ZADD GT only (a session's end
#: never moves back). Per version key: INCR and refresh the TTL. At most 1000 pairs per
#: ZADD (Lua's unpack limit). Idempotent except the version bump, which only has to change.
_APPLY_LUA = """
local batch = cjson.decode(ARGV[1])
local ttl = batch[1]
local writes = batch[3]
local args = {}
for i = 1, #writes do
  local key = KEYS[i + 1]
  local keep = writes[i][1]
  local n = 0
  for member, score in pairs(writes[i][2]) do
    args[n + 1] = score
    args[n + 2] = member
    n = n + 2
    if n >= 2000 then
      redis.call('ZADD', key, 'GT', unpack(args, 1, n))
      n = 0
    end
  end
  if n > 0 then
    redis.call('ZADD', key, 'GT', unpack(args, 1, n))
  end
  if keep > 0 then
    redis.call('ZREMRANGEBYRANK', key, 0, -(keep + 1))
    redis.call('EXPIRE', key, ttl)
  end
end
for i = #writes + 2, #KEYS do
  redis.call('INCR', KEYS[i])
  redis.call('EXPIRE', KEYS[i], ttl)
end
if batch[2] > 0 then
  redis.call('INCRBY', KEYS[1], batch[2])
end
return #writes
"""


_compact_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
