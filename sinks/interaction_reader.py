"""The read client for the feed service: a user's recent interactions, wherever they are.

One call answers from the hot tier (Redis) when the user is active, and from the cold
tier (CQL) when not. "Active" is the presence of the user's version key
`<prefix>:{<user>}:v`, which the worker sets on every write and deletes on eviction in
the same script as the user's last-k keys; all of a user's keys share one hash slot, so
the check and the reads run as one MULTI/EXEC and can never see half an eviction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

from schemas.events import PRODUCT_EVENT_TYPES, EventType, check_user_id
from schemas.hot_layout import Item, UserLastK, hot_key, version_key
from sinks.redis_scripts import HotRedis

Tier = Literal["hot", "cold"]
#: Queues one read of one sorted set on a pipeline.
QueueRead = Callable[[Any, str], object]
#: Every product event type, in the order of `EventType`.
ALL_TYPES: tuple[EventType, ...] = tuple(t for t in EventType if t in PRODUCT_EVENT_TYPES)


class ColdReads(Protocol):
    """The cold-tier reads this client needs (`sinks.cold_store.CqlColdStore`)."""

    async def load_last_k(self, user_ids: Sequence[str]) -> dict[str, UserLastK]: ...

    async def window(
        self, user_id: str, event_type: EventType, start_ms: int, end_ms: int, limit: int
    ) -> list[Item]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Interactions:
    """An answer: newest-first (product id, event time ms) per type, and where it came from."""

    user_id: str
    tier: Tier
    items: dict[EventType, list[Item]] = field(default_factory=dict)


class InteractionReader:
    """`last_k`, `window` and multi-type reads over both tiers, one call each."""

    def __init__(self, hot: HotRedis, prefix: str, cold: ColdReads) -> None:
        self._redis = hot
        self._prefix = prefix
        self._cold = cold

    async def last_k(self, user_id: str, event_type: EventType, k: int) -> list[Item]:
        """The user's newest `k` interactions of one type."""
        return (await self.last_k_many(user_id, [event_type], k)).items.get(event_type, [])

    async def last_k_many(
        self, user_id: str, event_types: Sequence[EventType] = ALL_TYPES, k: int = 50
    ) -> Interactions:
        """The newest `k` per type for several types (the feed's usual read)."""
        types = _checked(event_types)
        hot = await self._hot_read(
            user_id, types, lambda pipe, key: pipe.zrevrange(key, 0, k - 1, withscores=True)
        )
        if hot is not None:
            return hot
        # One single-partition read gives every type of the user's cold snapshot.
        stored = (await self._cold.load_last_k([user_id])).get(user_id)
        found = stored.items if stored is not None else {}
        return Interactions(user_id, "cold", {t: found.get(t, [])[:k] for t in types})

    async def window(
        self,
        user_id: str,
        event_type: EventType,
        start_ms: int,
        end_ms: int,
        limit: int = 1000,
    ) -> Interactions:
        """Interactions of one type with start_ms <= event time <= end_ms, newest first.

        From the hot tier this covers what it keeps (the last k, re-hydrated history
        included); from the cold tier, the stored history in that range.
        """
        if end_ms < start_ms:
            raise ValueError(f"window end {end_ms} is before its start {start_ms}")
        [checked] = _checked([event_type])
        hot = await self._hot_read(
            user_id,
            [checked],
            lambda pipe, key: pipe.zrevrangebyscore(
                key, end_ms, start_ms, start=0, num=limit, withscores=True
            ),
        )
        if hot is not None:
            return hot
        rows = await self._cold.window(user_id, checked, start_ms, end_ms, limit)
        return Interactions(user_id, "cold", {checked: rows})

    async def close(self) -> None:
        await self._redis.aclose()
        await self._cold.close()

    async def tier_of(self, user_id: str) -> Tier:
        """Where a user's interactions are right now."""
        exists = await self._redis.exists(version_key(self._prefix, check_user_id(user_id)))
        return "hot" if exists else "cold"

    async def _hot_read(
        self, user_id: str, types: Sequence[EventType], read: QueueRead
    ) -> Interactions | None:
        """Run `read` per type inside MULTI with the activity check; None if not hot.
        Raises InvalidEvent for an id outside the contract's alphabet (it has no data, and
        on a Redis Cluster its keys might not share a slot)."""
        check_user_id(user_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.exists(version_key(self._prefix, user_id))
            for event_type in types:
                read(pipe, hot_key(self._prefix, user_id, event_type))
            active, *rows = await pipe.execute()
        if not active:
            return None
        items = {
            event_type: [(_text(m), int(s)) for m, s in cast("list[tuple[bytes, float]]", found)]
            for event_type, found in zip(types, rows, strict=True)
        }
        return Interactions(user_id, "hot", items)


def _checked(event_types: Sequence[EventType]) -> list[EventType]:
    checked = [EventType(t) for t in event_types]
    for event_type in checked:
        if event_type not in PRODUCT_EVENT_TYPES:
            raise ValueError(f"{event_type.value} events carry no product and have no last-k")
    return checked


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
