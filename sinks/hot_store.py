"""The Redis hot tier: each user's last-k interactions per type in sorted sets.

The key layout and the write plan are pure (`streams.logic.lastk`); this adapter only
carries a plan out, one pipeline round trip per batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, cast

import redis.asyncio as aioredis

from schemas.events import EventType
from streams.logic.lastk import Interaction, KeyWrite, hot_key, plan_writes


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
        client: aioredis.Redis,
        prefix: str,
        last_k: Mapping[EventType, int],
        ttl_s: int,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._last_k = dict(last_k)
        self._ttl_s = ttl_s

    @property
    def stats_key(self) -> str:
        """Counter of interactions applied, read by the demo and the benchmark."""
        return f"{self._prefix}:stats:applied"

    async def record(self, interactions: Sequence[Interaction]) -> int:
        writes = plan_writes(interactions, self._prefix, self._last_k)
        if not writes:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for write in writes:
                _queue_write(pipe, write, self._ttl_s)
            pipe.incrby(self.stats_key, len(interactions))
            await pipe.execute()
        return len(interactions)

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


def _queue_write(pipe: aioredis.client.Pipeline, write: KeyWrite, ttl_s: int) -> None:
    # GT: a redelivered or late event never moves a product back in time; new members
    # are always added. Then keep only the newest `keep` by score (event time).
    pipe.zadd(write.key, write.members, gt=True)
    pipe.zremrangebyrank(write.key, 0, -(write.keep + 1))
    pipe.expire(write.key, ttl_s)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
