"""The fenced feature counters (`schemas.feature_layout`) applied by the hot store's batch
script against a real Redis and a real cluster: batches read again, in part or whole,
count nothing twice, and the stored hashes equal the pure plan applied once (issue 12, in
progress: the worker does not send counters yet)."""

from __future__ import annotations

import asyncio
import random

import pytest

from schemas.events import EventType
from schemas.feature_layout import (
    COUNTER_TTL_MS,
    CountedEvent,
    FencedWrite,
    fence_field,
    plan_counters,
    user_features_key,
)
from schemas.hot_layout import Interaction
from sinks.hot_store import RedisHotStore
from streams.bootstrap import build_redis
from streams.settings import Settings
from tests.conftest import on_backend

T0 = 1_760_000_000_000
TYPES = [EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART, EventType.APP_OPEN]


def stream(rnd: random.Random, size: int) -> list[CountedEvent]:
    offsets = {0: 100, 1: 500}
    events = []
    for _ in range(size):
        partition = rnd.randrange(2)
        offsets[partition] += 1
        event_type = rnd.choice(TYPES)
        events.append(
            CountedEvent(
                f"u{rnd.randrange(6)}-{partition}",
                event_type,
                T0 + rnd.randrange(-120_000, 900_000),  # some beyond the lateness
                None if event_type is EventType.APP_OPEN else f"p{rnd.randrange(5)}",
                partition,
                offsets[partition],
            )
        )
    return events


@pytest.mark.parametrize("backend", ["single", "cluster"])
def test_counters_read_again_count_nothing_twice(backend: str, isolated_settings: Settings) -> None:
    settings = on_backend(isolated_settings, backend, k=None)
    prefix = settings.redis_key_prefix
    rnd = random.Random(12)
    events = stream(rnd, 400)

    async def scenario() -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]], int]:
        client = build_redis(settings)
        store = RedisHotStore(client, prefix, settings.last_k)
        oracle: dict[str, dict[str, int]] = {}
        fences: dict[tuple[str, int], int | None] = {}
        watermarks: dict[int, int] = {}
        try:
            start = 0
            while start < len(events):
                size = rnd.randint(10, 60)
                chunks = [events[start : start + size]]
                if rnd.random() < 0.5:  # read again from an earlier offset, as after a crash
                    chunks.append(
                        events[max(0, start + size - rnd.randint(1, size)) : start + size]
                    )
                for chunk in chunks:
                    plan = plan_counters(chunk, prefix, watermarks, allowed_lateness_ms=60_000)
                    # With the batch's interactions, as the worker will send them.
                    rows = [
                        Interaction(e.user_id, e.event_type, e.product_id, e.event_time_ms)
                        for e in chunk
                        if e.product_id is not None
                    ]
                    activity = {0: {e.user_id: e.event_time_ms for e in chunk}}
                    await store.record(rows, activity, counters=plan.writes)
                    once_more(plan.writes, oracle, fences)
                    for event in chunk:
                        watermarks[event.partition] = max(
                            watermarks.get(event.partition, 0), event.event_time_ms
                        )
                start += size
            stored = {}
            for key in oracle:
                raw = await client.hgetall(key)
                stored[key] = {k.decode(): int(v) for k, v in raw.items()}
            ttl = await client.pttl(user_features_key(prefix, events[0].user_id))
            return stored, oracle, ttl
        finally:
            await client.aclose()

    stored, oracle, ttl = asyncio.run(scenario())
    fenceless = {
        k: {f: n for f, n in v.items() if not f.startswith("o:")} for k, v in stored.items()
    }
    assert fenceless == oracle
    # Each hash's fence is the highest offset of its partitions that reached it.
    for key, fields in stored.items():
        for partition in (0, 1):
            mine = [e.offset for e in events if e.partition == partition and key_of(e, key, prefix)]
            if mine:
                assert fields[fence_field(partition)] == max(mine)
    assert 0 < ttl <= COUNTER_TTL_MS


def once_more(
    writes: list[FencedWrite],
    oracle: dict[str, dict[str, int]],
    fences: dict[tuple[str, int], int | None],
) -> None:
    for write in writes:
        counters = oracle.setdefault(write.key, {})
        fences[(write.key, write.partition)] = write.apply_above(
            fences.get((write.key, write.partition)), counters
        )


def key_of(event: CountedEvent, key: str, prefix: str) -> bool:
    from schemas.feature_layout import PRODUCT_COUNTED_TYPES, product_features_key  # noqa: PLC0415

    if key == user_features_key(prefix, event.user_id):
        return True
    return (
        event.product_id is not None
        and event.event_type in PRODUCT_COUNTED_TYPES
        and key == product_features_key(prefix, event.product_id)
    )
