"""The flush through `SessionKeeper` against real Redis and the real CQL server: what a
user's history holds when their flush could not evict them because they came back, and a
user evicted by another worker between this worker's hot check and its write."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from schemas.cold_layout import decode_items
from schemas.events import EventType
from schemas.hot_layout import Interaction
from sinks.hot_sessions import EndedSession, HotSnapshot, RedisSessions
from sinks.hot_store import HotUsers
from streams.bootstrap import build_cold_store, build_hot_store, build_redis
from streams.sessions import SessionKeeper
from streams.settings import Settings

T0 = 1_760_000_000_000
GAP_MS = 1_000
PARTITION = 0


class ReturnsAfterTheSnapshot(RedisSessions):
    """Sessions whose user `u1` sends one more event right after their first snapshot is
    read, as when they come back while the flush is writing to the cold tier."""

    def __init__(self, client: Any, prefix: str, last_k: Any, comeback: Any) -> None:
        super().__init__(client, prefix, last_k)
        self._comeback = comeback

    async def snapshots(self, sessions: Sequence[EndedSession]) -> list[HotSnapshot]:
        read = await super().snapshots(sessions)
        if self._comeback is not None:
            comeback, self._comeback = self._comeback, None
            await comeback()
        return read


def test_a_user_who_came_back_gets_only_new_items_in_the_next_flush(
    provisioned: Settings,
) -> None:
    settings = provisioned

    async def scenario() -> list[tuple[str, int]]:
        client = build_redis(settings)
        store = build_hot_store(settings, client)
        cold = build_cold_store(settings)

        async def record(product: str, at: int) -> None:
            await store.record(
                [Interaction("u1", EventType.VIEW, product, at)], {PARTITION: {"u1": at}}
            )

        keeper = SessionKeeper(
            hot=ReturnsAfterTheSnapshot(
                client, settings.redis_key_prefix, settings.last_k, lambda: record("p3", T0 + 2)
            ),
            cold=cold,
            gap_ms=GAP_MS,
            idle_grace_ms=10**9,
        )
        try:
            await record("p1", T0)
            await record("p2", T0 + 1)
            keeper.observe(PARTITION, T0 + 2 + GAP_MS, wall_ms=0)
            assert await keeper.flush_ended(wall_ms=0) == 0  # written, but u1 came back
            assert keeper.counters.flush_skipped == 1
            keeper.observe(PARTITION, T0 + 3 + GAP_MS, wall_ms=0)
            assert await keeper.flush_ended(wall_ms=0) == 1
            assert await store.last_k("u1", EventType.VIEW, 10) == []  # cold now
        finally:
            await cold.close()
            await client.aclose()
        return await asyncio.to_thread(stored_history, settings)

    history = asyncio.run(scenario())
    # Every item once: the second flush skipped what the first one had written.
    assert sorted(history) == [("p1", T0), ("p2", T0 + 1), ("p3", T0 + 2)]


def test_a_user_evicted_by_another_worker_after_the_hot_check_is_re_hydrated(
    provisioned: Settings,
) -> None:
    """During a rebalance the partition's old owner may still be flushing it while the new
    owner applies a batch: the old owner's eviction can land between the new owner's hot
    check and its write (their locks are per worker). The write finds the keys gone and
    the new owner re-hydrates the user from what the eviction had just stored."""
    settings = provisioned

    async def scenario() -> list[tuple[str, int]]:
        client = build_redis(settings)
        store = build_hot_store(settings, client)
        cold = build_cold_store(settings)

        def keeper() -> SessionKeeper:
            sessions = RedisSessions(client, settings.redis_key_prefix, settings.last_k)
            return SessionKeeper(hot=sessions, cold=cold, gap_ms=GAP_MS, idle_grace_ms=10**9)

        old_owner, new_owner = keeper(), keeper()
        try:
            for product, at in [("p1", T0), ("p2", T0 + 1)]:
                await store.record(
                    [Interaction("u1", EventType.VIEW, product, at)], {PARTITION: {"u1": at}}
                )
            hydration = await new_owner.hydrate([(PARTITION, "u1")])
            assert hydration.hot == {"u1"} and hydration.history.rows == ()
            old_owner.observe(PARTITION, T0 + 1 + GAP_MS + 1, wall_ms=0)
            assert await old_owner.flush_ended(wall_ms=0) == 1  # stored, then evicted
            at = T0 + 2 + GAP_MS
            await store.record(
                [Interaction("u1", EventType.VIEW, "p3", at)],
                {PARTITION: {"u1": at}},
                counted=1,
                hot=HotUsers(hydration.hot, new_owner.rehydrate_unkeyed),
            )
            assert new_owner.counters.hot_without_keys == 1
            return await store.last_k("u1", EventType.VIEW, 10)
        finally:
            await cold.close()
            await client.aclose()

    assert asyncio.run(scenario()) == [("p3", T0 + 2 + GAP_MS), ("p2", T0 + 1), ("p1", T0)]


def stored_history(settings: Settings) -> list[tuple[str, int]]:
    from sinks.cql import connect  # noqa: PLC0415

    cluster, session = connect(settings)
    try:
        rows = session.execute(
            f"SELECT items FROM {settings.cql_keyspace}.history_by_user "
            "WHERE user_id = 'u1' AND event_type = 'view' AND day = %s",
            (T0 // 86_400_000,),
        )
        return [item for row in rows for item in decode_items(row.items)]
    finally:
        cluster.shutdown()
