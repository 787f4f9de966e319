"""The hot store applies a whole batch in one script call: large keys, many keys, counter."""

from __future__ import annotations

import asyncio

from schemas.events import EventType
from schemas.hot_layout import Interaction
from sinks.hot_store import RedisHotStore
from streams.bootstrap import build_redis
from streams.settings import Settings


def test_a_batch_larger_than_one_zadd_call_keeps_the_newest_k(
    isolated_settings: Settings,
) -> None:
    """3000 products for one key in one batch: more pairs than one ZADD in the script takes."""
    batch = [Interaction("u1", EventType.VIEW, f"p{i}", 1_000 + i) for i in range(3000)]
    batch += [Interaction(f"u{n}", EventType.CLICK, "p1", 5 + n) for n in range(2, 500)]

    async def go() -> tuple[int, list[tuple[str, int]], list[tuple[str, int]], int]:
        store = RedisHotStore(
            build_redis(isolated_settings),
            isolated_settings.redis_key_prefix,
            isolated_settings.last_k,
        )
        try:
            applied = await store.record(batch)
            views = await store.last_k("u1", EventType.VIEW, 1000)
            clicks = await store.last_k("u499", EventType.CLICK, 10)
            return applied, views, clicks, await store.applied_count()
        finally:
            await store.close()

    applied, views, clicks, counted = asyncio.run(go())
    k = isolated_settings.last_k[EventType.VIEW]
    assert applied == counted == len(batch)
    assert views == [(f"p{i}", 1_000 + i) for i in range(2999, 2999 - k, -1)]
    assert clicks == [("p1", 504)]
