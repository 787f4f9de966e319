"""The Redis hot tier: each user's last-k interactions per type in sorted sets.

The key layout and the write plan are pure (`streams.logic.lastk`); this adapter only
carries a plan out, one round trip (one Lua script call) per batch; on a Redis Cluster,
one round trip per node the batch touches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, cast

import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import NoScriptError

from schemas.events import EventType
from streams.logic.lastk import Interaction, KeyWrite, hot_key, plan_writes

#: The clients the hot tier runs on: one Redis, or a Redis Cluster.
HotRedis = aioredis.Redis | aioredis.RedisCluster


class HotStore(Protocol):
    """What the agents and readers need from the hot tier."""

    async def record(self, interactions: Sequence[Interaction]) -> int:
        """Apply a batch idempotently; returns how many interactions were applied."""
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
        self._one_slot = not isinstance(client, aioredis.RedisCluster)

    @property
    def stats_key(self) -> str:
        """Counter of interactions applied, read by the demo and the benchmark."""
        return f"{self._prefix}:stats:applied"

    async def record(self, interactions: Sequence[Interaction]) -> int:
        writes = plan_writes(interactions, self._prefix, self._last_k)
        if not writes:
            return 0
        if self._one_slot:
            # One script call for the whole batch: with a pipeline, redis-py's per-command
            # cost (3 commands per key, packed and parsed in Python) was most of the write.
            await self._apply(writes, self.stats_key, len(interactions))
        else:
            # On a cluster a script may only touch one slot: one call per slot (a user's
            # hash tag), counting nothing there (the counter lives in another slot).
            by_slot: dict[int, list[KeyWrite]] = {}
            for write in writes:
                by_slot.setdefault(key_slot(write.key.encode()), []).append(write)
            calls = [self._script_input(group, group[0].key, 0) for group in by_slot.values()]
            missing = await self._evalsha_on_cluster(calls, len(interactions))
            if missing:
                # A node without the script (new, restarted, flushed): load it on every
                # primary and resend only those calls (idempotent; the counter is not).
                await self._redis.script_load(_APPLY_LUA)
                if await self._evalsha_on_cluster(missing, 0):
                    raise NoScriptError("the hot-tier script vanished right after loading")
        return len(interactions)

    async def _apply(self, writes: Sequence[KeyWrite], counter: str, applied: int) -> None:
        keys, args = self._script_input(writes, counter, applied)
        await self._script(keys=keys, args=args)

    def _script_input(
        self, writes: Sequence[KeyWrite], counter: str, applied: int
    ) -> tuple[list[str], list[str | int]]:
        keys: list[str] = [counter]
        args: list[str | int] = [self._ttl_s, applied]
        for write in writes:
            keys.append(write.key)
            args.append(write.keep)
            args.append(len(write.members))
            for member, score in write.members.items():
                args.append(score)
                args.append(member)
        return keys, args

    async def _evalsha_on_cluster(
        self, calls: Sequence[tuple[list[str], list[str | int]]], applied: int
    ) -> list[tuple[list[str], list[str | int]]]:
        """All calls (and the counter) in one non-transactional cluster pipeline: one round
        trip per node touched, not per user. Returns the calls that met NOSCRIPT."""
        cluster = cast("aioredis.RedisCluster", self._redis)
        async with cluster.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                # redis-py blocks pipe.evalsha on cluster pipelines; the raw command is
                # routed by its first key like any other.
                pipe.execute_command("EVALSHA", self._script.sha, len(keys), *keys, *args)
            if applied:
                pipe.incrby(self.stats_key, applied)
            results = await pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, Exception) and not isinstance(result, NoScriptError):
                raise result
        return [
            call
            for call, result in zip(calls, results, strict=False)
            if isinstance(result, NoScriptError)
        ]

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


#: One batch of key writes in one round trip. KEYS[1] is the applied counter (left alone
#: when the count is 0), then one key per write; ARGV is ttl, applied count, then per key:
#: keep, n, and n (score, member) pairs. Per key, as the pipeline did: ZADD GT (a
#: redelivered or late event never moves a product back in time; new members are always
#: added), keep only the newest `keep` by score (event time), refresh the TTL. At most
#: 1000 pairs per ZADD (Lua's unpack limit). Idempotent, like the writes themselves.
_APPLY_LUA = """
local ttl = ARGV[1]
local pos = 3
for i = 2, #KEYS do
  local key = KEYS[i]
  local keep = tonumber(ARGV[pos])
  local last = pos + 1 + 2 * tonumber(ARGV[pos + 1])
  pos = pos + 2
  while pos <= last do
    local upto = math.min(last, pos + 1999)
    redis.call('ZADD', key, 'GT', unpack(ARGV, pos, upto))
    pos = upto + 1
  end
  redis.call('ZREMRANGEBYRANK', key, 0, -(keep + 1))
  redis.call('EXPIRE', key, ttl)
end
if tonumber(ARGV[2]) > 0 then
  redis.call('INCRBY', KEYS[1], ARGV[2])
end
return #KEYS - 1
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
