"""The Redis hot-tier adapter against a real Redis and a real Redis Cluster: layout,
idempotence, ordering, trimming; on the cluster also slots and round trips per node."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.asyncio.cluster import ClusterNode

from schemas.events import PRODUCT_EVENT_TYPES, EventType
from schemas.hot_layout import Interaction, hot_key
from sinks.hot_store import RedisHotStore
from streams.bootstrap import build_redis
from streams.settings import Settings
from tests.conftest import on_backend

K = 5

SyncRedis = redis.Redis | redis.RedisCluster


@pytest.fixture
def cluster_settings(isolated_settings: Settings) -> Settings:
    return on_backend(isolated_settings, "cluster")


def make_store(settings: Settings) -> RedisHotStore:
    return RedisHotStore(build_redis(settings), settings.redis_key_prefix, settings.last_k)


@pytest.fixture
def store(backend_settings: Settings) -> RedisHotStore:
    return make_store(backend_settings)


@pytest.fixture
def cluster_store(cluster_settings: Settings) -> RedisHotStore:
    return make_store(cluster_settings)


def sync_client(settings: Settings) -> SyncRedis:
    if settings.redis_cluster:
        return redis.RedisCluster.from_url(settings.redis_url)
    return redis.Redis.from_url(settings.redis_url)


@pytest.fixture
def client(backend_settings: Settings) -> Iterator[SyncRedis]:
    """A plain (blocking) client on the same backend, to check what the store wrote."""
    connection = sync_client(backend_settings)
    yield connection
    connection.close()


@pytest.fixture
def cluster_client(cluster_settings: Settings) -> Iterator[redis.RedisCluster]:
    connection = redis.RedisCluster.from_url(cluster_settings.redis_url)
    yield connection
    connection.close()


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


def test_many_types_are_read_in_one_call_in_order(store: RedisHotStore) -> None:
    async def scenario() -> list[list[tuple[str, int]]]:
        try:
            await store.record(
                [
                    *views("u1", [("p1", 10), ("p2", 30)]),
                    Interaction("u1", EventType.CLICK, "p2", 31),
                ]
            )
            kinds = [EventType.CLICK, EventType.ORDER, EventType.VIEW]
            return await store.last_k_many("u1", kinds, 1)
        finally:
            await store.close()

    assert run(scenario()) == [[("p2", 31)], [], [("p2", 30)]]


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


def test_keys_follow_the_documented_layout_and_never_expire(
    store: RedisHotStore, client: SyncRedis, backend_settings: Settings
) -> None:
    run(record_then_read(store, [Interaction("u9", EventType.ADD_TO_CART, "p7", 123)], user="u9"))
    key = f"{backend_settings.redis_key_prefix}:{{u9}}:add_to_cart"
    assert client.zrange(key, 0, -1, withscores=True) == [(b"p7", 123.0)]
    assert client.ttl(key) == -1  # they leave through the session flush only
    assert client.object("encoding", key) == b"listpack"


def many_users_batch(users: int, prefix: str = "m") -> list[Interaction]:
    """Every user gets every product event type, K + 2 products each (so trimming applies)."""
    return [
        Interaction(f"{prefix}{u:04d}", event_type, f"p{i}", 1_000 + 10 * u + i)
        for u in range(users)
        for event_type in sorted(PRODUCT_EVENT_TYPES)
        for i in range(K + 2)
    ]


def expected_last_k(batch: list[Interaction]) -> dict[tuple[str, EventType], list[tuple[str, int]]]:
    rows: dict[tuple[str, EventType], list[tuple[str, int]]] = {}
    for item in batch:
        rows.setdefault((item.user_id, item.event_type), []).append(
            (item.product_id, item.event_time_ms)
        )
    return {key: sorted(items, key=lambda r: -r[1])[:K] for key, items in rows.items()}


def test_a_batch_of_many_users_is_applied_completely(store: RedisHotStore) -> None:
    batch = many_users_batch(200)
    expected = expected_last_k(batch)

    async def record_and_read_all() -> tuple[dict[Any, list[tuple[str, int]]], int]:
        try:
            await store.record(batch)
            got = {key: await store.last_k(key[0], key[1], 100) for key in expected}
            return got, await store.applied_count()
        finally:
            await store.close()

    got, applied = run(record_and_read_all())
    assert got == expected
    assert applied == len(batch)


def test_on_the_cluster_all_of_one_users_keys_are_in_one_slot(
    cluster_store: RedisHotStore, cluster_client: redis.RedisCluster, cluster_settings: Settings
) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"  # its own slot contents: no other test uses this user
    batch = [Interaction(user, t, "p1", 100) for t in sorted(PRODUCT_EVENT_TYPES)]
    run(record_then_read(cluster_store, batch, user=user))

    keys = {hot_key(cluster_settings.redis_key_prefix, user, t) for t in PRODUCT_EVENT_TYPES}
    slots = {cluster_client.keyslot(key) for key in keys}
    assert len(slots) == 1
    slot = slots.pop()
    # Asked of the server that owns the slot: it holds exactly this user's keys.
    owner = cluster_client.nodes_manager.get_node_from_slot(slot)
    in_slot = cluster_client.execute_command(
        "CLUSTER", "GETKEYSINSLOT", slot, 100, target_nodes=owner
    )
    mine = {
        key.decode()
        for key in in_slot
        if key.decode().startswith(cluster_settings.redis_key_prefix)
    }
    assert mine == keys


def test_on_the_cluster_a_batch_over_every_master_is_one_round_trip_per_node(
    cluster_store: RedisHotStore,
    cluster_client: redis.RedisCluster,
) -> None:
    batch = many_users_batch(200, prefix="r")
    expected = expected_last_k(batch)
    masters = {node.name for node in cluster_client.get_primaries()}
    touched = {cluster_client.get_node_from_key(f"{{{item.user_id}}}").name for item in batch}
    assert touched == masters and len(masters) == 3

    round_trips: Counter[str] = Counter()
    execute_pipeline = ClusterNode.execute_pipeline

    async def counted(node: ClusterNode, commands: list[Any]) -> bool:
        round_trips[node.name] += 1
        return await execute_pipeline(node, commands)

    async def scenario() -> tuple[dict[Any, list[tuple[str, int]]], int]:
        try:
            await cluster_store.record(batch)  # warms up: loads the script where missing
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(ClusterNode, "execute_pipeline", counted)
                await cluster_store.record(batch)  # idempotent: the same batch again
            got = {key: await cluster_store.last_k(key[0], key[1], 100) for key in expected}
            return got, await cluster_store.applied_count()
        finally:
            await cluster_store.close()

    got, applied = run(scenario())
    assert got == expected
    assert applied == 2 * len(batch)
    assert round_trips == dict.fromkeys(masters, 1)


def test_on_the_cluster_a_node_without_the_script_gets_it_and_counts_once(
    cluster_store: RedisHotStore, cluster_client: redis.RedisCluster
) -> None:
    batch = many_users_batch(30, prefix="s")
    cluster_client.script_flush()  # on every primary, as after a restart
    got = run(record_then_read(cluster_store, batch, user="s0007"))
    assert got == expected_last_k(batch)[("s0007", EventType.VIEW)]
    assert int(cluster_client.get(cluster_store.stats_key) or 0) == len(batch)
