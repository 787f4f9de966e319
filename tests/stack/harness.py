"""An in-process worker for stack tests that need to step a user's life precisely: each
batch goes through the worker's own path (`SessionKeeper.hydrate`, then
`RedisHotStore.record` with `HotUsers`), and each flush through `SessionKeeper.flush_ended`,
against the real Redis (or cluster) and the real CQL server. Several harnesses on the same
settings are several workers (a restart with other settings, or a partition's old and new
owner during a rebalance)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from schemas.events import EventType
from schemas.hot_layout import Interaction, Item
from sinks.hot_sessions import RedisSessions
from sinks.hot_store import HotUsers
from sinks.redis_scripts import HotRedis
from streams.bootstrap import build_cold_index, build_cold_store, build_hot_store, build_redis
from streams.sessions import SessionKeeper
from streams.settings import Settings

GAP_MS = 1_000
PARTITION = 0


class Worker:
    """One worker's hot store, sessions and cold store; `close()` when done."""

    def __init__(self, settings: Settings, client: HotRedis | None = None) -> None:
        self.settings = settings
        self.client = client or build_redis(settings)
        self.hot = build_hot_store(settings, self.client)
        self.sessions = RedisSessions(self.client, settings.redis_key_prefix, settings.last_k)
        self.cold = build_cold_store(settings)
        # The cold-tier index as the worker has it (on by default): every flush adds its
        # users, and re-hydration reads only those the index says may be stored.
        self.keeper = SessionKeeper(
            hot=self.sessions,
            cold=self.cold,
            gap_ms=GAP_MS,
            idle_grace_ms=10**9,
            index=build_cold_index(settings, self.client),
        )
        self._index_prepared = False
        self.newest_ms = 0

    async def batch(self, rows: Sequence[tuple[str, EventType, str, int]]) -> None:
        """Apply (user, type, product, event time) rows as one batch of partition 0."""
        if not self._index_prepared:  # as the worker does at start
            await self.keeper.prepare_index()
            self._index_prepared = True
        interactions = [Interaction(*row) for row in rows]
        latest: dict[str, int] = {}
        for row in interactions:
            latest[row.user_id] = max(latest.get(row.user_id, 0), row.event_time_ms)
        hydration = await self.keeper.hydrate((PARTITION, user) for user in latest)
        await self.hot.record(
            [*hydration.history.rows, *interactions],
            {PARTITION: latest},
            counted=len(interactions),
            hot=HotUsers(hydration.hot, self.keeper.rehydrate_unkeyed),
            floors=hydration.history.floors,
        )
        self.newest_ms = max(self.newest_ms, *latest.values())

    async def flush(self) -> int:
        """End every session of partition 0 (the clock jumps past the gap); users moved."""
        self.keeper.observe(PARTITION, self.newest_ms + GAP_MS + 1, wall_ms=0)
        return await self.keeper.flush_ended(wall_ms=0)

    async def hot_items(self, user: str, event_type: EventType) -> list[Item]:
        return await self.hot.last_k(user, event_type, 10_000)

    async def cold_items(self, user: str, event_type: EventType) -> list[Item]:
        return await self.cold.last_k(user, event_type, 10_000)

    async def is_active(self, user: str) -> bool:
        return await self.sessions.hot_users({PARTITION: [user]}) == {user}

    async def close(self) -> None:
        await self.cold.close()
        await self.client.aclose()


def cql_execute(settings: Settings, cql: str, values: Sequence[Any] = ()) -> list[Any]:
    """One statement on the test's keyspace, as an operator at a CQL shell would run it
    (the driver's own write timestamp, the current time)."""
    from sinks.cql import connect  # noqa: PLC0415

    cluster, session = connect(settings, settings.cql_keyspace)
    try:
        return list(session.execute(cql, tuple(values)))
    finally:
        cluster.shutdown()
