"""Served feeds on a real Redis and a real Redis Cluster (`sinks.feed_store`): a feed is
replaced only by one of a later trigger."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from schemas.feed_layout import FEED_TTL_MS, Feed, feed_key
from streams.bootstrap import build_feed_store, build_redis
from streams.settings import Settings
from tests.conftest import on_backend


@pytest.mark.parametrize("backend", ["single", "cluster"])
def test_only_a_later_trigger_replaces_a_feed(backend: str, isolated_settings: Settings) -> None:
    settings = on_backend(isolated_settings, backend, k=None)
    feed = Feed("u}1", 100, ["p1", "p2"], ["trending", "new"], "popularity", True, "views", 5, 6)

    async def scenario() -> None:
        store = build_feed_store(settings)
        client = build_redis(settings)
        try:
            assert await store.read("u}1") is None and await store.sequence("u}1") is None
            assert await store.write(feed)
            assert await store.read("u}1") == feed
            assert await store.sequence("u}1") == 100
            stale = dataclasses.replace(feed, sequence=99, products=["old"])
            assert not await store.write(stale)  # an older trigger, finishing late
            assert not await store.write(dataclasses.replace(feed, products=["again"]))
            newer = dataclasses.replace(feed, sequence=101, products=["p3"])
            assert await store.write(newer)
            assert await store.read("u}1") == newer
            ttl = await client.pttl(feed_key(settings.redis_key_prefix, "u}1"))
            assert FEED_TTL_MS - 60_000 < ttl <= FEED_TTL_MS
        finally:
            await store.close()
            await client.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize("backend", ["single", "cluster"])
def test_many_sequences_in_one_call_in_the_order_asked(
    backend: str, isolated_settings: Settings
) -> None:
    """`sequences` reads many users' feeds at once (one script call per hash slot): each
    user's sequence in the order asked, None for a user with no feed, duplicates kept."""
    settings = on_backend(isolated_settings, backend, k=None)
    users = [f"u{i}" for i in range(40)]

    async def scenario() -> None:
        store = build_feed_store(settings)
        try:
            assert await store.sequences([]) == []
            for i, user in enumerate(users):
                if i % 3:
                    feed = Feed(user, 1000 + i, ["p1"], ["trending"], "m", False, "views", 5, 6)
                    assert await store.write(feed)
            asked = [*reversed(users), "nobody", users[1], users[1]]
            expected = [
                1000 + users.index(u) if u in users and users.index(u) % 3 else None for u in asked
            ]
            assert await store.sequences(asked) == expected
            assert expected[-1] == 1001 and expected[-3] is None
        finally:
            await store.close()

    asyncio.run(scenario())
