"""The online feature store (`sinks.feature_store`) against a real Redis and a real
Redis Cluster: written in batches, with batches read again in part or whole, every
feature read online equals the offline computation (`schemas.features.OfflineFeatures`)
over the same log, feature by feature, with an event exactly at the read time counted."""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from schemas.events import EventType
from schemas.feature_layout import (
    PRUNE_EVERY_MS,
    CountedEvent,
    product_features_key,
    trending_key,
    user_features_key,
)
from schemas.features import (
    DAY_MS,
    FeatureConfig,
    FeaturePlan,
    OfflineFeatures,
    ProductFeatures,
    UserFeatures,
    UserShare,
    UserStep,
    plan_features,
)
from sinks.feature_store import FeatureRead, RedisFeatureStore
from streams.bootstrap import build_redis
from streams.settings import Settings
from tests.conftest import on_backend

T0 = 1_760_000_000_000
CONFIG = FeatureConfig(allowed_lateness_ms=60_000, session_gap_ms=10 * 60_000)
TYPES = [
    EventType.VIEW,
    EventType.VIEW,
    EventType.VIEW,
    EventType.CLICK,
    EventType.ADD_TO_CART,
    EventType.WISHLIST,
    EventType.ORDER,
    EventType.REMOVE_FROM_CART,
    EventType.APP_OPEN,
]


def generated_log(rnd: random.Random, size: int) -> list[CountedEvent]:
    """Two partitions, users keyed to one each, time moving ~2 h forward with jitter:
    some events late within the lateness, some beyond it, some sent twice (a new record
    of the same event), some in a category-less product, a user with a brace in the id."""
    offsets = {0: 1000, 1: 7}
    clock = T0
    events = []
    for index in range(size):
        if events and rnd.random() < 0.05:  # an app's retry: the same event, a new record
            again = rnd.choice(events[-30:])
            offsets[again.partition] += 1
            events.append(again._replace(offset=offsets[again.partition]))
            continue
        clock += rnd.randrange(0, 30_000)
        partition = rnd.randrange(2)
        offsets[partition] += 1
        event_type = rnd.choice(TYPES)
        shift = rnd.choice([0, 0, 0, -rnd.randrange(50_000), -rnd.randrange(60_000, 600_000)])
        if rnd.random() < 0.02:
            shift = 40 * 60_000  # a quiet user's next session, far ahead
        user = rnd.randrange(8)
        product = rnd.randrange(12)
        events.append(
            CountedEvent(
                f"u{user}-{partition}" if user else f"u}}{partition}",
                event_type,
                clock + shift,
                None if event_type is EventType.APP_OPEN else f"p{product}",
                None if event_type is EventType.APP_OPEN or product == 11 else f"c{product % 4}",
                partition,
                offsets[partition],
                f"e{index}",
            )
        )
    return events


def assert_user_equal(online: UserFeatures, offline: UserFeatures) -> None:
    assert online.counts == offline.counts
    assert online.distinct_categories_24h == offline.distinct_categories_24h
    assert online.ms_since_previous == offline.ms_since_previous
    assert online.session_events == offline.session_events
    assert online.late_events == offline.late_events
    assert_top_equal(online.top_categories, offline.top_categories)


def assert_product_equal(online: ProductFeatures, offline: ProductFeatures) -> None:
    assert online.counts == offline.counts
    assert math.isclose(online.click_rate_24h, offline.click_rate_24h, rel_tol=1e-12)
    assert math.isclose(online.cart_rate_24h, offline.cart_rate_24h, rel_tol=1e-12)


def assert_top_equal(online: list[tuple[str, float]], offline: list[tuple[str, float]]) -> None:
    assert [member for member, _ in online] == [member for member, _ in offline]
    for (_, a), (_, b) in zip(online, offline, strict=True):
        assert math.isclose(a, b, rel_tol=1e-9)


async def compare(store: RedisFeatureStore, log: list[CountedEvent], at_ms: int) -> int:
    """Every user, product and category of `log` read online at `at_ms` against the
    offline computation; returns how many features were compared."""
    offline = OfflineFeatures(log, CONFIG)
    compared = 0
    for user in sorted({e.user_id for e in log}):
        assert_user_equal(await store.user_features(user, at_ms), offline.user(user, at_ms))
        compared += 1
    products = sorted({e.product_id for e in log if e.product_id})
    read = await store.product_features(products, at_ms)
    for online, product in zip(read, products, strict=True):
        assert_product_equal(online, offline.product(product, at_ms))
        compared += 1
    for category in sorted({e.category_id for e in log if e.category_id}):
        assert_top_equal(
            await store.trending(category, 20, at_ms), offline.trending(category, at_ms, 20)
        )
        compared += 1
    return compared


@pytest.mark.parametrize("cached", [0, 1000])
@pytest.mark.parametrize("backend", ["single", "cluster"])
def test_overlapped_batches_equal_the_offline_computation(
    backend: str, cached: int, isolated_settings: Settings
) -> None:
    """As the worker applies two batches at once: each batch is read and advanced before
    the one before it is written, its users shared with that one advanced from the values
    that write sends. Some of those values are swapped for the stored ones (older than the
    write): the write must notice they are not what landed and read those users again,
    or their events of the batch before would be lost. With and without the store's
    cache of the shares it wrote."""
    settings = on_backend(isolated_settings, backend, k=None)
    rnd = random.Random(7)
    log = generated_log(rnd, 700)

    async def scenario() -> None:
        store = RedisFeatureStore(
            build_redis(settings), settings.redis_key_prefix, CONFIG, cached_users=cached
        )
        watermarks: dict[int, int] = {}
        position = 0
        pending: tuple[FeaturePlan, FeatureRead, dict[str, UserShare] | None] | None = None
        written: dict[str, UserShare] | None = None
        swapped = assumed = 0
        try:
            while position < len(log) or pending is not None:
                read = None
                if position < len(log):
                    size = rnd.randrange(1, 90)
                    start = position
                    if position and rnd.random() < 0.3:
                        start = max(0, position - rnd.randrange(1, 60))  # read again
                    plan = plan_features(log[start : position + size], watermarks, CONFIG)
                    watermarks = plan.watermarks
                    position += size
                    earlier = pending[1].shares() if pending is not None else None
                    if earlier and rnd.random() < 0.3:
                        user = rnd.choice(sorted(earlier))
                        stored = await store.user_share(user)  # older than the write
                        if stored is not None:
                            earlier[user] = stored
                            swapped += 1
                    read = await store.read(plan, earlier)
                    assumed += len(read.assumed)
                if pending is not None:
                    done = await store.write(*pending)
                    written = done.written
                pending = (plan, read, written) if read is not None else None
            assert assumed > 20 and swapped > 3, (assumed, swapped)
            newest = max(e.event_time_ms for e in log)
            assert await compare(store, log, newest) > 20
            assert await compare(store, log, newest + 3_600_000) > 20
            assert await store.watermarks([0, 1]) == {p: watermarks[p] for p in (0, 1)}
        finally:
            await store.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("backend", ["single", "cluster"])
def test_online_features_equal_the_offline_computation_through_re_reads(
    backend: str, isolated_settings: Settings
) -> None:
    settings = on_backend(isolated_settings, backend, k=None)
    rnd = random.Random(2026)
    log = generated_log(rnd, 700)

    async def scenario() -> None:
        store = RedisFeatureStore(build_redis(settings), settings.redis_key_prefix, CONFIG)
        watermarks: dict[int, int] = {}
        position = 0
        compared = 0
        try:
            while position < len(log):
                size = rnd.randrange(1, 90)
                start = position
                if position and rnd.random() < 0.4:
                    start = max(0, position - rnd.randrange(1, 60))  # read again from a commit
                batch = log[start : position + size]
                plan = plan_features(batch, watermarks, CONFIG)
                await store.apply(plan)
                if rnd.random() < 0.2:
                    await store.apply(plan)  # the whole batch again (a retried call)
                watermarks = plan.watermarks
                position += size
                if rnd.random() < 0.15 or position >= len(log):
                    seen = log[:position]
                    newest = max(e.event_time_ms for e in seen)
                    # At the newest event (counted), and later: windows sliding past tiles.
                    for at in (newest, newest + 61_000, newest + 3_600_000, newest + DAY_MS):
                        compared += await compare(store, seen, at)
            assert compared > 200
            stored = await store.watermarks([0, 1])
            assert stored == {p: watermarks[p] for p in (0, 1)}
        finally:
            await store.close()

    asyncio.run(scenario())
    offline = OfflineFeatures(log, CONFIG)
    newest = max(e.event_time_ms for e in log)
    users = {e.user_id for e in log}
    assert sum(offline.user(u, newest).late_events for u in users) > 0, "no late events drawn"
    assert offline.trending("c3", newest, 50), "the generated log has no trending products"


def test_keys_expire_and_the_affinity_outlives_the_counts(isolated_settings: Settings) -> None:
    """A user away for three weeks: their key lives 10 affinity half-lives after its last
    write (the counts in it are long out of every window), a product's counts hash only
    the counter TTL (here 1 s, plus one pruning step); on the user's return their affinity
    equals the offline decayed score over both visits."""
    settings = on_backend(isolated_settings, "single", k=None)
    prefix = settings.redis_key_prefix
    config = FeatureConfig(counter_ttl_ms=1000)
    away = 21 * DAY_MS
    first = [
        CountedEvent("u1", EventType.ORDER, T0 - away, "p1", "shoes", 0, 1),
        CountedEvent("u1", EventType.VIEW, T0 - away + 5, "p2", "bags", 0, 2),
    ]
    back = [CountedEvent("u1", EventType.VIEW, T0, "p3", "bags", 0, 3)]

    async def scenario() -> None:
        client = build_redis(settings)
        store = RedisFeatureStore(client, prefix, config)
        try:
            plan = plan_features(first, {}, config)
            await store.apply(plan)
            user_ttl = await client.pttl(user_features_key(prefix, "u1"))
            assert user_ttl > 10 * config.affinity_half_life_ms - 60_000
            assert (
                0 < await client.pttl(product_features_key(prefix, "p1")) <= 1000 + PRUNE_EVERY_MS
            )
            assert await client.pttl(trending_key(prefix, "shoes")) > 0
            await store.apply(plan_features(back, plan.watermarks, config))
            online = await store.user_features("u1", T0)
            offline = OfflineFeatures([*first, *back], config).user("u1", T0)
            assert [c for c, _ in online.top_categories] == ["shoes", "bags"]
            assert_user_equal(online, offline)
            assert online.session_events == 1  # the session rule saw the old newest time go
            assert await store.user_category_affinity("u1", 5, T0) == online.top_categories
        finally:
            await store.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("backend", ["single", "cluster"])
def test_a_cached_share_that_moved_elsewhere_is_read_again(
    backend: str, isolated_settings: Settings
) -> None:
    """A worker's cache of the shares it wrote goes stale when its partition went to
    another worker and came back, or when the key went (an erasure, a TTL): its write is
    refused, and it reads the user again instead of writing over what it never saw."""
    settings = on_backend(isolated_settings, backend, k=None)
    prefix = settings.redis_key_prefix
    log = [
        CountedEvent("u1", EventType.CLICK, T0 + i * 1000, f"p{i % 3}", "c1", 0, 1 + i, f"e{i}")
        for i in range(12)
    ]

    async def scenario() -> None:
        client = build_redis(settings)
        first = RedisFeatureStore(client, prefix, CONFIG, cached_users=10)
        second = RedisFeatureStore(build_redis(settings), prefix, CONFIG, cached_users=10)
        try:
            watermarks: dict[int, int] = {}
            for store, part in ((first, log[:3]), (second, log[3:6]), (first, log[6:9])):
                plan = plan_features(part, watermarks, CONFIG)
                await store.apply(plan)
                watermarks = plan.watermarks
            at = T0 + 20_000
            offline = OfflineFeatures(log[:9], CONFIG)
            assert_user_equal(await first.user_features("u1", at), offline.user("u1", at))
            for online, product in zip(
                await first.product_features(["p0", "p1", "p2"], at),
                ["p0", "p1", "p2"],
                strict=True,
            ):
                assert_product_equal(online, offline.product(product, at))
            await client.delete(user_features_key(prefix, "u1"))  # erased, or expired
            await first.apply(plan_features(log[9:], watermarks, CONFIG))
            again = OfflineFeatures(log[9:], CONFIG).user("u1", at)
            assert_user_equal(await first.user_features("u1", at), again)
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())


class RacedStore(RedisFeatureStore):
    """A worker that lost its partition mid-batch: right after it read its users, its
    successor applies a longer batch of the same partition."""

    rival: RedisFeatureStore
    rival_plan: FeaturePlan
    raced = False

    async def _advanced(
        self, plan: FeaturePlan, users: list[str]
    ) -> tuple[dict[str, UserStep], dict[str, int]]:
        read = await super()._advanced(plan, users)
        if not self.raced:
            self.raced = True
            await self.rival.apply(self.rival_plan)
        return read


@pytest.mark.parametrize("backend", ["single", "cluster"])
def test_a_worker_that_lost_the_race_overwrites_nothing(
    backend: str, isolated_settings: Settings
) -> None:
    """The old owner's write is refused (its users' fences moved since it read them): it
    reads them again and finds its events applied, so nothing counts twice or is lost."""
    settings = on_backend(isolated_settings, backend, k=None)
    prefix = settings.redis_key_prefix
    log = [
        CountedEvent("u1", EventType.CLICK, T0 + i, f"p{i % 2}", "c1", 0, 1 + i, f"e{i}")
        for i in range(6)
    ]

    async def scenario() -> None:
        store = RacedStore(build_redis(settings), prefix, CONFIG)
        store.rival = RedisFeatureStore(build_redis(settings), prefix, CONFIG)
        store.rival_plan = plan_features(log, {}, CONFIG)
        try:
            outcomes = await store.apply(plan_features(log[:3], {}, CONFIG))
            assert store.raced and outcomes["u1"].duplicates == frozenset()
            at = T0 + 10
            offline = OfflineFeatures(log, CONFIG)
            assert_user_equal(await store.user_features("u1", at), offline.user("u1", at))
            for online, product in zip(
                await store.product_features(["p0", "p1"], at), ["p0", "p1"], strict=True
            ):
                assert_product_equal(online, offline.product(product, at))
            assert_top_equal(await store.trending("c1", 5, at), offline.trending("c1", at, 5))
        finally:
            await store.close()
            await store.rival.close()

    asyncio.run(scenario())
