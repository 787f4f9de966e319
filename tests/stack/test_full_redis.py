"""A full Redis (`maxmemory` with `noeviction`, as the README advises for the hot tier,
whose keys have no TTL) refuses batch writes, and the flush must still free it: its
reads, its evictions and its leave step all run when Redis is out of memory. A private
redis-server, so the shared one is never filled."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from schemas.events import EventType
from schemas.hot_layout import Interaction
from sinks.hot_sessions import RedisSessions
from sinks.hot_store import RedisHotStore
from streams.settings import DEFAULT_LAST_K
from tests.stack.test_faults import PrivateRedis

T0 = 1_760_000_000_000
PARTITION = 3


@pytest.fixture
def full_redis(tmp_path: Path) -> Iterator[int]:
    server = PrivateRedis(tmp_path, "--maxmemory", "3mb", "--maxmemory-policy", "noeviction")
    server.start()
    try:
        yield server.port
    finally:
        server.stop()


def test_a_full_redis_is_emptied_by_the_flush(full_redis: int) -> None:
    async def scenario() -> None:
        client = aioredis.Redis(port=full_redis)
        store = RedisHotStore(client, "ix", DEFAULT_LAST_K)
        sessions = RedisSessions(client, "ix", DEFAULT_LAST_K)
        try:
            users = 0
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                while users < 100_000:
                    batch = [
                        Interaction(f"u{users + n}", EventType.VIEW, f"p{i:040d}", T0 + i)
                        for n in range(20)
                        for i in range(40)
                    ]
                    await store.record(batch, {PARTITION: {r.user_id: T0 + 39 for r in batch}})
                    users += 20
            assert users > 100, "Redis filled up before holding any users"
            moved = 0
            while True:  # the flush's Redis steps, as SessionKeeper runs them
                ended = await sessions.ended(PARTITION, T0 + 1_000, 500)
                if not ended:
                    break
                snapshots = await sessions.snapshots(ended)
                assert all(len(s.last_k.items[EventType.VIEW]) == 40 for s in snapshots)
                moved += len(await sessions.evict(snapshots))
            assert moved >= users
            await store.record(
                [Interaction("after", EventType.VIEW, "p1", T0)], {PARTITION: {"after": T0}}
            )
        finally:
            await client.aclose()

    asyncio.run(scenario())
