"""The Redis hot-tier adapter against a real Redis: layout, idempotence, ordering, trimming."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest
import redis

from schemas.events import EventType
from sinks.hot_store import RedisHotStore
from streams.bootstrap import build_redis
from streams.logic.lastk import Interaction
from streams.settings import Settings

K = 5


@pytest.fixture
def store(isolated_settings: Settings) -> Iterator[RedisHotStore]:
    settings = isolated_settings.model_copy(
        update={"last_k": {t: K for t in isolated_settings.last_k}}
    )
    yield RedisHotStore(
        build_redis(settings), settings.redis_key_prefix, settings.last_k, ttl_s=3600
    )


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def views(user: str, items: list[tuple[str, int]]) -> list[Interaction]:
    return [Interaction(user, EventType.VIEW, product, at) for product, at in items]


async def record_then_read(store: RedisHotStore, *batches: list[Interaction], user: str = "u1"):
    try:
        for batch in batches:
            await store.record(batch)
        return await store.last_k(user, EventType.VIEW, 100)
    finally:
        await store.close()


def test_last_k_is_newest_first_with_event_times(store: RedisHotStore) -> None:
    got = run(record_then_read(store, views("u1", [("p1", 10), ("p2", 30), ("p3", 20)])))
    assert got == [("p2", 30), ("p3", 20), ("p1", 10)]


def test_redelivery_changes_nothing(store: RedisHotStore) -> None:
    batch = views("u1", [("p1", 10), ("p2", 20)])

    async def deliver_twice() -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        try:
            await store.record(batch)
            once = await store.last_k("u1", EventType.VIEW, 100)
            await store.record(batch)
            return once, await store.last_k("u1", EventType.VIEW, 100)
        finally:
            await store.close()

    once, twice = run(deliver_twice())
    assert once == twice == [("p2", 20), ("p1", 10)]


def test_a_late_event_never_moves_a_product_back_in_time(store: RedisHotStore) -> None:
    got = run(record_then_read(store, views("u1", [("p1", 50)]), views("u1", [("p1", 10)])))
    assert got == [("p1", 50)]


def test_trimming_keeps_the_newest_k_by_event_time_whatever_the_arrival_order(
    store: RedisHotStore,
) -> None:
    items = [(f"p{i}", 1000 + i) for i in range(20)]
    shuffled = items[:]
    random.Random(1).shuffle(shuffled)
    batches = [views("u1", shuffled[i : i + 3]) for i in range(0, len(shuffled), 3)]
    got = run(record_then_read(store, *batches))
    assert got == sorted(items, key=lambda item: -item[1])[:K]


def test_keys_follow_the_documented_layout_and_carry_a_ttl(
    store: RedisHotStore, isolated_settings: Settings
) -> None:
    run(record_then_read(store, [Interaction("u9", EventType.ADD_TO_CART, "p7", 123)], user="u9"))
    client = redis.Redis.from_url(isolated_settings.redis_url)
    try:
        key = f"{isolated_settings.redis_key_prefix}:{{u9}}:add_to_cart"
        assert client.zrange(key, 0, -1, withscores=True) == [(b"p7", 123.0)]
        assert 0 < client.ttl(key) <= 3600
        assert client.object("encoding", key) == b"listpack"
    finally:
        client.close()
