"""Erasing users from every store the pipeline writes (`schemas.erasure` says the rule).

The worker that owns a user's partition calls `Eraser.erase` when it reaches their forget
record, with no batch of its own in flight. Per user, in this order:

1. Redis, the user's slot, one script: the last-k keys and the version key go, and the
   version they held is returned (the highest snapshot version issued for the user);
2. Redis, elsewhere: the user's entry in their partition's active set and their features
   (`<prefix>:f:u:{user}`) go; their served feed (`<prefix>:feed:{user}`) is replaced by
   the erasure's marker (`schemas.feed_layout.erased_feed`), which a trigger decided
   before the erasure cannot overwrite;
3. the cold tier: the snapshot and every history row, deleted at a write timestamp above
   that version and the current time, so a snapshot a flush in flight writes afterwards
   (its version is older) is deleted too;
4. the cold tier's `erasures` table: the user and T, for every reader of events.

Every step is idempotent, so a worker that crashes half way does it all again when the
forget record is read again (its offset is committed only after the erasure).
Aggregates the user's events went into (product counts, trending products, global rates)
hold no user id and are left as they are.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, cast

from schemas.erasure import ForgetAt
from schemas.events import EventType
from schemas.feature_layout import user_features_key
from schemas.feed_layout import FEED_TTL_MS, erased_feed, feed_key
from schemas.hot_layout import active_key, hot_key, version_key

if TYPE_CHECKING:
    from sinks.cold_store import CqlColdStore
    from sinks.redis_scripts import HotRedis

#: KEYS[1] the version key, then the last-k keys: delete them, return the version.
_ERASE_HOT_LUA = """
local version = redis.call('GET', KEYS[1])
redis.call('DEL', unpack(KEYS))
return version
"""


class Eraser:
    def __init__(self, client: HotRedis, prefix: str, cold: CqlColdStore) -> None:
        self._redis = client
        self._prefix = prefix
        self._cold = cold
        self._erase_hot = client.register_script(_ERASE_HOT_LUA)

    async def erase(self, forgets: Sequence[ForgetAt], now_ms: int) -> None:
        """Erase each request's user everywhere; raises on a store error (the caller
        retries the whole call: every step is idempotent)."""
        erased: dict[str, int] = {}
        for partition, offset, forget in forgets:
            version = await self._erase_redis(forget.user_id, partition, offset)
            # Above every version issued to the user (microseconds, like the versions)
            # and above now: nothing written before this erasure survives it.
            stamp = max(time.time_ns() // 1000, version + 1)
            await self._cold.erase(forget.user_id, stamp, now_ms)
            erased[forget.user_id] = max(erased.get(forget.user_id, 0), forget.erased_ms)
        await self._cold.record_erasures(erased, int(time.time() * 1000))

    async def _erase_redis(self, user_id: str, partition: int, offset: int) -> int:
        keys = [version_key(self._prefix, user_id)] + [
            hot_key(self._prefix, user_id, event_type)
            for event_type in EventType
            if event_type is not EventType.APP_OPEN
        ]
        version = await self._erase_hot(keys=keys)
        # Separate calls (other slots on a cluster); an erasure is rare, its latency moot.
        await self._redis.zrem(active_key(self._prefix, partition), user_id)
        await self._redis.delete(user_features_key(self._prefix, user_id))
        # Not deleted but fenced: a trigger decided before the erasure (a sequence below
        # this offset) still in the trigger topic is then stale, and writes no feed.
        await self._redis.set(feed_key(self._prefix, user_id), erased_feed(offset), px=FEED_TTL_MS)
        return int(cast("bytes | str | int", version)) if version is not None else 0

    async def erasures(self) -> Mapping[str, int]:
        """Every erased user and T (what a worker loads when it is assigned partitions)."""
        return await self._cold.erasures()
