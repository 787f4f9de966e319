"""Active sets, versions and conditional eviction against a real Redis and a real cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from typing import TypeVar

import pytest

from schemas.events import EventType
from schemas.hot_layout import Interaction, hot_key
from sinks.hot_sessions import EndedSession, RedisSessions, group_by_partition
from sinks.hot_store import HotUsers, RedisHotStore, Rehydrated
from sinks.redis_scripts import HotRedis
from streams.bootstrap import build_redis
from streams.settings import Settings

T0 = 1_760_000_000_000
T = TypeVar("T")


@pytest.fixture
def client(backend_settings: Settings) -> HotRedis:
    """A client on the single Redis or on the cluster (every test runs on both)."""
    return build_redis(backend_settings)


def run(coro):
    return asyncio.run(coro)


async def seed(
    client: HotRedis, settings: Settings, partition: int, rows: list[Interaction]
) -> tuple[RedisHotStore, RedisSessions]:
    store = RedisHotStore(client, settings.redis_key_prefix, settings.last_k)
    sessions = RedisSessions(client, settings.redis_key_prefix, settings.last_k)
    latest: dict[str, int] = {}
    for row in rows:
        latest[row.user_id] = max(latest.get(row.user_id, 0), row.event_time_ms)
    await store.record(rows, {partition: latest})
    return store, sessions


def test_active_set_finds_ended_sessions_oldest_first_and_knows_who_is_hot(
    client: HotRedis, backend_settings: Settings
) -> None:
    async def scenario() -> None:
        rows = [
            Interaction("u1", EventType.VIEW, "p1", T0),
            Interaction("u2", EventType.VIEW, "p2", T0 + 10),
            Interaction("u3", EventType.CLICK, "p3", T0 + 20),
            Interaction("u1", EventType.CLICK, "p9", T0 + 5),  # late: u1's activity stays T0+5
        ]
        _, sessions = await seed(client, backend_settings, 3, rows)
        ended = await sessions.ended(3, before_ms=T0 + 20, limit=10)
        assert ended == [EndedSession("u1", 3, T0 + 5), EndedSession("u2", 3, T0 + 10)]
        assert await sessions.ended(3, before_ms=T0 + 20, limit=1) == ended[:1]
        assert await sessions.ended(4, before_ms=T0 + 99, limit=10) == []
        hot = await sessions.hot_users({3: ["u1", "u3", "ghost"], 4: ["u2"]})
        assert hot == {"u1", "u3"}
        assert await sessions.newest_activity(3) == T0 + 20
        assert await sessions.newest_activity(5) is None
        await client.aclose()

    run(scenario())


def test_snapshot_then_evict_moves_a_user_out_completely(
    client: HotRedis, backend_settings: Settings
) -> None:
    async def scenario() -> None:
        prefix = backend_settings.redis_key_prefix
        rows = [
            Interaction("u1", EventType.VIEW, "p1", T0),
            Interaction("u1", EventType.VIEW, "p2", T0 + 1),
            Interaction("u1", EventType.ORDER, "p2", T0 + 2),
        ]
        _, sessions = await seed(client, backend_settings, 0, rows)
        [snapshot] = await sessions.snapshots(await sessions.ended(0, T0 + 100, 10))
        assert snapshot.last_k.items == {
            EventType.VIEW: [("p2", T0 + 1), ("p1", T0)],
            EventType.ORDER: [("p2", T0 + 2)],
        }
        assert int(snapshot.version) > 1_700_000_000 * 10**6  # began at the server clock, us
        evicted = await sessions.evict([snapshot])
        assert evicted == [snapshot.session]
        assert await sessions.hot_users({0: ["u1"]}) == set()
        leftovers = [hot_key(prefix, "u1", t) for t in EventType] + [sessions.version_key("u1")]
        assert await client.exists(*leftovers) == 0
        await client.aclose()

    run(scenario())


def test_a_user_active_again_after_the_snapshot_is_not_evicted(
    client: HotRedis, backend_settings: Settings
) -> None:
    """New writes between snapshot and eviction bump the version: nothing is lost."""

    async def scenario() -> None:
        _, sessions = await seed(
            client, backend_settings, 1, [Interaction("u1", EventType.VIEW, "p1", T0)]
        )
        [snapshot] = await sessions.snapshots(await sessions.ended(1, T0 + 100, 10))
        # The user comes back while the flush is in flight (even with a late event).
        await seed(client, backend_settings, 1, [Interaction("u1", EventType.VIEW, "p0", T0 - 5)])
        assert await sessions.evict([snapshot]) == []
        assert await sessions.hot_users({1: ["u1"]}) == {"u1"}
        key = hot_key(backend_settings.redis_key_prefix, "u1", EventType.VIEW)
        assert await client.zcard(key) == 2
        await client.aclose()

    run(scenario())


def test_a_user_active_between_ended_and_the_snapshot_stays_hot_and_findable(
    client: HotRedis, backend_settings: Settings
) -> None:
    """The flush reads who ended, then (later, another read) their sets and version. New
    events in between are in the snapshot, but the user is active again: keep them hot,
    never delete their keys while leaving them in the active set."""

    async def scenario() -> None:
        _, sessions = await seed(
            client, backend_settings, 1, [Interaction("u1", EventType.VIEW, "p1", T0)]
        )
        ended = await sessions.ended(1, T0 + 100, 10)
        await seed(client, backend_settings, 1, [Interaction("u1", EventType.VIEW, "p2", T0 + 50)])
        [snapshot] = await sessions.snapshots(ended)
        assert len(snapshot.last_k.items[EventType.VIEW]) == 2  # the new event is in it
        assert await sessions.evict([snapshot]) == []
        assert await sessions.hot_users({1: ["u1"]}) == {"u1"}
        assert await client.exists(sessions.version_key("u1")) == 1
        key = hot_key(backend_settings.redis_key_prefix, "u1", EventType.VIEW)
        assert await client.zcard(key) == 2
        # The next pass sees the newer activity and moves the user out completely.
        [later] = await sessions.snapshots(await sessions.ended(1, T0 + 200, 10))
        assert await sessions.evict([later]) == [later.session]
        assert await sessions.hot_users({1: ["u1"]}) == set()
        assert await client.exists(sessions.version_key("u1"), key) == 0
        await client.aclose()

    run(scenario())


def test_a_flush_interrupted_after_deleting_keys_completes_on_the_next_pass(
    client: HotRedis, backend_settings: Settings
) -> None:
    async def scenario() -> None:
        _, sessions = await seed(
            client, backend_settings, 2, [Interaction("u1", EventType.WISHLIST, "p1", T0)]
        )
        prefix = backend_settings.redis_key_prefix
        # Crash after the user's keys were deleted but before leaving the active set.
        await client.delete(hot_key(prefix, "u1", EventType.WISHLIST), sessions.version_key("u1"))
        [snapshot] = await sessions.snapshots(await sessions.ended(2, T0 + 100, 10))
        assert snapshot.last_k.items == {}  # nothing left to write to the cold tier
        assert await sessions.evict([snapshot]) == [snapshot.session]
        assert await sessions.ended(2, T0 + 100, 10) == []
        await client.aclose()

    run(scenario())


def test_group_by_partition_keeps_first_seen_order_without_duplicates() -> None:
    pairs = [(1, "a"), (0, "b"), (1, "a"), (1, "c")]
    assert group_by_partition(pairs) == {1: ["a", "c"], 0: ["b"]}


def test_a_write_for_a_user_found_hot_whose_keys_are_gone_re_hydrates_them_first(
    client: HotRedis, backend_settings: Settings
) -> None:
    """An eviction deleted u1's keys and a crash came before u1 left the active set, so
    the hot check still says hot. The write sees u1's version key gone, writes nothing,
    asks for u1's history (through `retry`: the first load fails) and applies the batch
    again with it; u2 (intact) is counted once; a later write with every key present asks
    for nothing."""

    async def scenario() -> None:
        store, sessions = await seed(
            client,
            backend_settings,
            2,
            [
                Interaction("u1", EventType.VIEW, "p1", T0),
                Interaction("u2", EventType.VIEW, "p5", T0),
            ],
        )
        prefix = backend_settings.redis_key_prefix
        await client.delete(hot_key(prefix, "u1", EventType.VIEW), sessions.version_key("u1"))
        asked: list[set[str]] = []
        retried: list[str] = []

        async def rehydrate(users: Collection[str]) -> Rehydrated:
            asked.append(set(users))
            if len(asked) == 1:
                raise ConnectionError("the cold tier is away for a moment")
            return Rehydrated(
                [
                    Interaction("u1", EventType.VIEW, "p1", T0),
                    Interaction("u1", EventType.VIEW, "p0", T0 - 1),
                ]
            )

        hot = await sessions.hot_users({2: ["u1", "u2"]})
        assert hot == {"u1", "u2"}  # the active set alone cannot tell
        before = await store.applied_count()
        batch = [
            Interaction("u1", EventType.VIEW, "p2", T0 + 10),
            Interaction("u2", EventType.VIEW, "p6", T0 + 10),
        ]

        async def retry(call: Callable[[], Awaitable[T]]) -> T:
            """Like the worker's `until_applied`: only this step runs again."""
            while True:
                try:
                    return await call()
                except ConnectionError as exc:
                    retried.append(str(exc))

        await store.record(
            batch, {2: {"u1": T0 + 10, "u2": T0 + 10}}, hot=HotUsers(hot, rehydrate, retry)
        )
        assert asked == [{"u1"}, {"u1"}]
        assert retried == ["the cold tier is away for a moment"]
        assert await store.last_k("u1", EventType.VIEW, 10) == [
            ("p2", T0 + 10),
            ("p1", T0),
            ("p0", T0 - 1),
        ]
        assert await store.last_k("u2", EventType.VIEW, 10) == [("p6", T0 + 10), ("p5", T0)]
        assert await store.applied_count() - before == len(batch)
        assert await client.exists(sessions.version_key("u1")) == 1

        later = [Interaction("u1", EventType.VIEW, "p3", T0 + 20)]
        await store.record(later, {2: {"u1": T0 + 20}}, hot=HotUsers({"u1"}, rehydrate, retry))
        assert len(asked) == 2
        assert (await store.last_k("u1", EventType.VIEW, 1)) == [("p3", T0 + 20)]
        await client.aclose()

    run(scenario())


def test_an_eviction_sent_again_with_the_old_version_never_deletes_a_new_session(
    client: HotRedis, backend_settings: Settings
) -> None:
    """A version starts at the server's clock, so it never repeats after an eviction: an
    eviction sent again with the version of before (the client retrying after a lost
    reply, say) does not match the keys of a session that began since."""

    async def scenario() -> None:
        store, sessions = await seed(
            client, backend_settings, 1, [Interaction("u1", EventType.VIEW, "p1", T0)]
        )
        [snapshot] = await sessions.snapshots(await sessions.ended(1, T0 + 100, 10))
        assert await sessions.evict([snapshot]) == [snapshot.session]
        # A new session, one batch like the old one.
        await seed(client, backend_settings, 1, [Interaction("u1", EventType.VIEW, "p2", T0 + 200)])
        assert await client.get(sessions.version_key("u1")) != snapshot.version.encode()
        await sessions.evict([snapshot])  # the old eviction, again
        assert await store.last_k("u1", EventType.VIEW, 10) == [("p2", T0 + 200)]
        assert await sessions.hot_users({1: ["u1"]}) == {"u1"}
        await client.aclose()

    run(scenario())


def test_hot_users_outside_the_batch_activity_are_refused(
    client: HotRedis, backend_settings: Settings
) -> None:
    async def rehydrate(users: Collection[str]) -> Rehydrated:
        raise AssertionError(f"not expected: {users}")

    async def scenario() -> None:
        store, _ = await seed(
            client, backend_settings, 1, [Interaction("u1", EventType.VIEW, "p1", T0)]
        )
        with pytest.raises(ValueError, match="must be in the batch's activity"):
            await store.record(
                [Interaction("u1", EventType.VIEW, "p2", T0 + 1)],
                {1: {"u1": T0 + 1}},
                hot=HotUsers({"u1", "u2"}, rehydrate),
            )
        await client.aclose()

    run(scenario())
