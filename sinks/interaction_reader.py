"""The read client for the feed service: a user's recent interactions, wherever they are.

One call answers from the hot tier (Redis) when the user is active, and from the cold
tier (CQL) when not. "Active" is the presence of the user's version key
`<prefix>:{<user>}:v`, which the worker sets on every write and deletes on eviction in
the same script as the user's last-k keys; all of a user's keys share one hash slot, so
the check and the reads run as one Lua script (`_HOT_READ`, atomic like MULTI/EXEC, and
one command and one reply instead of nine: about 2x faster per read) and can never see
half an eviction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from hashlib import sha1
from typing import Literal, Protocol, cast

from redis.exceptions import NoScriptError

from schemas.events import PRODUCT_EVENT_TYPES, EventType, check_user_id
from schemas.hot_layout import Item, UserLastK, hot_key, version_key
from sinks.redis_scripts import HotRedis

Tier = Literal["hot", "cold"]

# KEYS[1] = the user's version key, KEYS[2..] = their last-k keys; ARGV[1] = "k" (ARGV[2]
# = k: the newest k) or "range" (ARGV[2], ARGV[3] = newest and oldest event time, ARGV[4]
# = at most that many). Nil when the user is not hot; else per key a flat member, score
# list, newest first.
_HOT_READ = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local out = {}
for i = 2, #KEYS do
  if ARGV[1] == 'k' then
    out[i - 1] = redis.call('ZREVRANGE', KEYS[i], 0, tonumber(ARGV[2]) - 1, 'WITHSCORES')
  else
    out[i - 1] = redis.call('ZREVRANGEBYSCORE', KEYS[i], ARGV[2], ARGV[3],
      'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[4]))
  end
end
return out
"""
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
        self._sha = sha1(_HOT_READ.encode(), usedforsecurity=False).hexdigest()

    async def last_k(self, user_id: str, event_type: EventType, k: int) -> list[Item]:
        """The user's newest `k` interactions of one type."""
        return (await self.last_k_many(user_id, [event_type], k)).items.get(event_type, [])

    async def last_k_many(
        self, user_id: str, event_types: Sequence[EventType] = ALL_TYPES, k: int = 50
    ) -> Interactions:
        """The newest `k` per type for several types (the feed's usual read)."""
        types = _checked(event_types)
        hot = await self._hot_read(user_id, types, ("k", k))
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
        hot = await self._hot_read(user_id, [checked], ("range", end_ms, start_ms, limit))
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
        self, user_id: str, types: Sequence[EventType], args: tuple[str | int, ...]
    ) -> Interactions | None:
        """The activity check and one read per type in one script (`_HOT_READ`); None if
        not hot. Raises InvalidEvent for an id outside the contract's alphabet (it has no
        data, and on a Redis Cluster its keys might not share a slot)."""
        check_user_id(user_id)
        keys = [
            version_key(self._prefix, user_id),
            *(hot_key(self._prefix, user_id, t) for t in types),
        ]
        try:
            found = await self._redis.evalsha(self._sha, len(keys), *keys, *args)
        except NoScriptError:
            await self._redis.script_load(_HOT_READ)
            found = await self._redis.evalsha(self._sha, len(keys), *keys, *args)
        if found is None:
            return None
        items = {
            event_type: [
                (_text(member), int(float(score)))
                for member, score in zip(flat[::2], flat[1::2], strict=True)
            ]
            for event_type, flat in zip(types, cast("list[list[bytes]]", found), strict=True)
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
