"""The cold-tier index against a real Redis and a real Redis Cluster, and with the worker's
session keeper against the real CQL server: never a false "not stored"."""

from __future__ import annotations

import asyncio

from schemas.events import EventType
from schemas.hot_layout import COLD_INDEX_BUCKETS, ColdIndexShape
from sinks.cold_index import RedisColdIndex
from streams.bootstrap import build_redis
from streams.settings import Settings
from tests.stack.harness import Worker

SMALL = ColdIndexShape.sized(expected_users=10_000, false_positive_rate=0.01)
T0 = 1_760_000_000_000


def test_an_incomplete_index_says_every_user_may_be_stored(backend_settings: Settings) -> None:
    async def scenario() -> None:
        client = build_redis(backend_settings)
        index = RedisColdIndex(client, backend_settings.redis_key_prefix, SMALL)
        try:
            users = [f"u{i}" for i in range(300)]
            assert await index.complete_buckets() == 0
            assert sorted(await index.may_hold(users)) == sorted(users)
            await index.add(users[:10])  # adding does not make a bucket trusted
            assert sorted(await index.may_hold(users)) == sorted(users)
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_a_complete_index_keeps_every_added_user_and_drops_nearly_all_others(
    backend_settings: Settings,
) -> None:
    async def scenario() -> None:
        client = build_redis(backend_settings)
        index = RedisColdIndex(client, backend_settings.redis_key_prefix, SMALL)
        try:
            await index.mark_complete()
            assert await index.complete_buckets() == COLD_INDEX_BUCKETS
            stored = [f"stored-{i}" for i in range(5000)]
            for start in range(0, len(stored), 700):
                await index.add(stored[start : start + 700])
            never = [f"new-{i}" for i in range(5000)]
            maybe = set(await index.may_hold([*stored, *never]))
            assert set(stored) <= maybe  # no false negative, ever
            false_positives = len(maybe) - len(stored)
            # Sized for 10,000 users at 1%, holding 5,000: well under 1% (about 0.05%).
            assert false_positives < 0.01 * len(never), false_positives
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_a_lost_bucket_reads_as_incomplete_for_its_users_only(backend_settings: Settings) -> None:
    async def scenario() -> None:
        client = build_redis(backend_settings)
        index = RedisColdIndex(client, backend_settings.redis_key_prefix, SMALL)
        try:
            await index.mark_complete()
            stored = [f"stored-{i}" for i in range(2000)]
            await index.add(stored)
            victim = SMALL.bits(stored[0])[0]
            await client.delete(index.key(victim))  # as a Redis restart or a lost node would
            assert await index.complete_buckets() == COLD_INDEX_BUCKETS - 1
            never = [f"new-{i}" for i in range(2000)]
            in_victim = {u for u in never if SMALL.bits(u)[0] == victim}
            maybe = set(await index.may_hold([*stored, *never]))
            assert set(stored) <= maybe
            assert in_victim <= maybe  # no longer trusted: read from the cold tier
            assert len(maybe - set(stored) - in_victim) < 0.01 * len(never)
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_a_new_user_is_not_read_from_the_cold_tier_and_a_flushed_one_is(
    session_settings: Settings,
) -> None:
    """The session keeper with the index, as the worker runs it: the cold tier starts
    empty, so the index is trusted; a flushed user comes back with their history."""

    async def scenario() -> None:
        worker = Worker(session_settings)
        try:
            t0 = T0
            await worker.batch([("alice", EventType.VIEW, "p1", t0)])
            counters = worker.keeper.counters
            assert (counters.hydrated_users, counters.hydration_skipped) == (0, 1)
            assert await worker.flush() == 1
            await worker.batch(
                [("alice", EventType.CLICK, "p2", t0 + 5000), ("bob", EventType.VIEW, "p3", t0)]
            )
            assert (counters.hydrated_users, counters.hydration_skipped) == (1, 2)
            assert await worker.hot_items("alice", EventType.VIEW) == [("p1", t0)]
        finally:
            await worker.close()

    asyncio.run(scenario())


async def flushed_then_redis_lost(settings: Settings, users: list[str]) -> None:
    """A worker sees these users once and flushes them; then Redis loses everything under
    the test's prefix (the index with it), as a restart without persistence would. The
    cold tier keeps them."""
    worker = Worker(settings)
    try:
        await worker.batch([(user, EventType.VIEW, f"p-{user}", T0) for user in users])
        assert await worker.flush() == len(users)
    finally:
        await worker.close()
    client = build_redis(settings)
    try:
        async for key in client.scan_iter(match=f"{settings.redis_key_prefix}*"):
            await client.delete(key)
    finally:
        await client.aclose()


def test_a_cold_tier_with_data_leaves_the_index_untrusted_until_rebuilt(
    session_settings: Settings,
) -> None:
    async def scenario() -> None:
        await flushed_then_redis_lost(session_settings, ["carol"])
        second = Worker(session_settings)
        try:
            await second.batch([("carol", EventType.CLICK, "p2", T0 + 5000)])
            assert second.keeper.counters.hydrated_users == 1  # read: not trusted
            assert await second.hot_items("carol", EventType.VIEW) == [("p-carol", T0)]
            assert second.keeper.index is not None
            assert await second.keeper.index.complete_buckets() == 0
        finally:
            await second.close()

    asyncio.run(scenario())


def test_a_rebuild_scans_the_cold_tier_and_makes_the_index_trusted(
    session_settings: Settings,
) -> None:
    from jobs.cold_index import index_status, rebuild_index  # noqa: PLC0415

    async def scenario() -> None:
        await flushed_then_redis_lost(session_settings, [f"user{i}" for i in range(30)])
        assert not (await index_status(session_settings)).trusted
        users, _seconds = await rebuild_index(session_settings, progress=False)
        assert users == 30
        assert (await index_status(session_settings)).trusted
        second = Worker(session_settings)
        try:
            await second.batch(
                [("user7", EventType.CLICK, "p2", T0 + 5000), ("newcomer", EventType.VIEW, "p", T0)]
            )
            counters = second.keeper.counters
            assert (counters.hydrated_users, counters.hydration_skipped) == (1, 1)
            assert await second.hot_items("user7", EventType.VIEW) == [("p-user7", T0)]
        finally:
            await second.close()

    asyncio.run(scenario())
