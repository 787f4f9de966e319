"""Features and triggers through the real `signals worker` on the real broker, single
Redis and Redis Cluster: a generated stream (duplicates, late events, a worker killed
mid-stream and restarted) gives online features equal to the offline computation over
the topic, feature by feature, and triggers the ranker can trust."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable

import pytest
import redis
from confluent_kafka import Consumer, TopicPartition

from jobs.event_log import counted_events, topic_records
from jobs.traffic import TrafficParams, simulate
from schemas.events import Event, EventType
from schemas.feature_layout import CountedEvent, fence_field, global_features_key
from schemas.features import HOUR_MS, OfflineFeatures
from schemas.triggers import RankTrigger, Reason, decode_trigger
from sinks.events_producer import EventProducer
from streams.bootstrap import build_feature_store
from streams.settings import Settings
from tests.conftest import TcpProxy, on_backend, wait_for
from tests.stack.test_feature_store import assert_product_equal, assert_top_equal, assert_user_equal

#: Features and triggers are off by default (they cost most of the ingest rate for now).
FEATURES_ON = {"SIGNALS_FEATURES_ENABLED": "true", "SIGNALS_TRIGGERS_ENABLED": "true"}


def read_topic(settings: Settings, topic: str) -> dict[int, list[tuple[int, bytes | None]]]:
    return {
        partition: [(offset, value) for offset, value, _ in records]
        for partition, records in topic_records(settings.kafka_bootstrap, topic).items()
    }


def counted_log(settings: Settings) -> list[CountedEvent]:
    log, _invalid = counted_events(
        settings.kafka_bootstrap, settings.events_topic, settings.admission_limits()
    )
    return log


def sync_redis(settings: Settings) -> redis.Redis | redis.RedisCluster:
    if settings.redis_cluster:
        return redis.RedisCluster.from_url(settings.redis_url)
    return redis.Redis.from_url(settings.redis_url)


def applied_up_to_the_end(settings: Settings) -> Callable[[], bool]:
    """Whether the global hash's fence of every partition is at its last offset."""
    topic = read_topic(settings, settings.events_topic)
    ends = {p: records[-1][0] for p, records in topic.items() if records}
    client = sync_redis(settings)
    key = global_features_key(settings.redis_key_prefix)

    def check() -> bool:
        fences = client.hmget(key, [fence_field(p) for p in ends])
        return all(f is not None and int(f) == ends[p] for p, f in zip(ends, fences, strict=True))

    return check


def committed_to_the_end(settings: Settings) -> Callable[[], bool]:
    """Whether the worker's group has committed every partition to its end: the batches'
    triggers were published before their offsets were committed."""
    topic = settings.events_topic
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.app_id}
    )
    partitions = list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    ends = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        for p in partitions
    }

    def check() -> bool:
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return all(tp.offset == ends[tp.partition] for tp in committed)

    return check


def some_applied(settings: Settings) -> Callable[[], bool]:
    client = sync_redis(settings)
    key = global_features_key(settings.redis_key_prefix)
    return lambda: any(name.startswith(b"o:") for name in client.hkeys(key))


def send(settings: Settings, events: list[Event]) -> None:
    with EventProducer(settings.kafka_bootstrap, settings.events_topic) as producer:
        for event in events:
            producer.send(event)
    assert producer.delivered == len(events)


@pytest.mark.parametrize("backend", ["single", "cluster"])
def test_features_through_the_worker_equal_the_offline_computation_after_a_kill(
    backend: str, provisioned: Settings, isolated_env: dict[str, str], worker: Callable
) -> None:
    settings = on_backend(provisioned, backend, k=None).model_copy(
        update={"allowed_lateness_s": 5.0}
    )
    env = {**isolated_env, **FEATURES_ON, "SIGNALS_ALLOWED_LATENESS_S": "5"}
    if backend == "cluster":
        env |= {"SIGNALS_REDIS_URL": settings.redis_url, "SIGNALS_REDIS_CLUSTER": "1"}
    params = TrafficParams(
        seed=23, users=30, products=200, categories=8, rate=25.0, session_gap_ms=60_000
    )
    start_ms = int(time.time() * 1000) - 900_000
    events = list(itertools.islice(simulate(params, start_ms), 2400))
    assert len({e.event_id for e in events}) < len(events), "some duplicates are sent"
    with worker(env) as first:
        send(settings, events[:1200])
        wait_for(
            some_applied(settings), 60, "the first worker to apply a batch", on_fail=first.log_text
        )
        send(settings, events[1200:1800])
        first.process.kill()  # mid-stream: what it applied but did not commit is re-read
        first.process.wait()
    send(settings, events[1800:])
    with worker(env) as second:
        wait_for(
            applied_up_to_the_end(settings),
            90,
            "every event to be applied",
            on_fail=second.log_text,
        )
        wait_for(
            committed_to_the_end(settings), 30, "every offset committed", on_fail=second.log_text
        )
    log = counted_log(settings)
    offline = OfflineFeatures(log, settings.feature_config())
    newest = max(e.event_time_ms for e in log)

    async def compare() -> int:
        store = build_feature_store(settings)
        compared = 0
        try:
            for at in (newest, newest + HOUR_MS):
                for user in sorted({e.user_id for e in log}):
                    assert_user_equal(await store.user_features(user, at), offline.user(user, at))
                    compared += 1
                products = sorted({e.product_id for e in log if e.product_id})
                for online, product in zip(
                    await store.product_features(products, at), products, strict=True
                ):
                    assert_product_equal(online, offline.product(product, at))
                    compared += 1
                for category in sorted({e.category_id for e in log if e.category_id}):
                    assert_top_equal(
                        await store.trending(category, 10, at), offline.trending(category, at, 10)
                    )
        finally:
            await store.close()
        return compared

    assert asyncio.run(compare()) > 100
    late = sum(offline.user(u, newest).late_events for u in {e.user_id for e in log})
    assert late > 0, "the stream has events beyond the allowed lateness"

    triggers = [
        decode_trigger(value)
        for records in read_topic(settings, settings.trigger_topic).values()
        for _, value in records
    ]
    check_triggers(triggers, log)


def check_triggers(triggers: list[RankTrigger], log: list[CountedEvent]) -> None:
    """Every trigger names one of its user's events by offset, high-intent events all
    triggered, and the only repeats are exact ones (batches read again after the kill)."""
    by_offset = {(e.partition, e.offset): e for e in log}
    assert triggers, "no trigger was published"
    for trigger in triggers:
        event = by_offset[(trigger.partition, trigger.sequence)]
        assert event.user_id == trigger.user_id
        assert event.event_time_ms <= trigger.newest_event_time_ms
    reasons = Counter(t.reason for t in triggers)
    assert reasons[Reason.HIGH_INTENT] and reasons[Reason.SESSION_START]
    intent = {e.user_id for e in log if e.event_type in (EventType.CLICK, EventType.ORDER)}
    assert intent <= {t.user_id for t in triggers if t.reason is Reason.HIGH_INTENT}
    seen: dict[tuple[str, int], Reason] = {}
    repeats = 0
    for trigger in triggers:
        key = (trigger.user_id, trigger.sequence)
        if key in seen:
            repeats += 1
            assert seen[key] is trigger.reason or trigger.reason is not Reason.HIGH_INTENT
        seen[key] = trigger.reason
    # The kill re-reads at most what was applied since the last commit (0.5 s of it).
    assert repeats < len(triggers) // 4
    assert len(triggers) < len(log), "triggers per event must stay below one"


def compare_all(settings: Settings, log: list[CountedEvent]) -> int:
    """Every user's and product's features online against the offline computation."""
    offline = OfflineFeatures(log, settings.feature_config())
    newest = max(e.event_time_ms for e in log)

    async def run() -> int:
        store = build_feature_store(settings)
        try:
            users = sorted({e.user_id for e in log})
            for user in users:
                assert_user_equal(
                    await store.user_features(user, newest), offline.user(user, newest)
                )
            products = sorted({e.product_id for e in log if e.product_id})
            online = await store.product_features(products, newest)
            for features, product in zip(online, products, strict=True):
                assert_product_equal(features, offline.product(product, newest))
            return len(users) + len(products)
        finally:
            await store.close()

    return asyncio.run(run())


def test_a_redis_outage_mid_stream_loses_and_doubles_no_count(
    provisioned: Settings, isolated_env: dict[str, str], worker: Callable
) -> None:
    """Redis cut away from the worker mid-stream (replies of calls it made may be lost):
    the worker retries until it is back, and every count equals the offline one."""
    port = int(provisioned.redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy(port)
    env = {
        **isolated_env,
        **FEATURES_ON,
        "SIGNALS_REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0",
    }
    params = TrafficParams(seed=31, users=20, products=100, categories=6, rate=25.0)
    events = list(itertools.islice(simulate(params, int(time.time() * 1000) - 600_000), 1500))
    try:
        with worker(env) as running:
            send(provisioned, events[:500])
            wait_for(some_applied(provisioned), 60, "a first batch", on_fail=running.log_text)
            proxy.cut()
            send(provisioned, events[500:1000])
            wait_for(lambda: "store unavailable" in running.log_text(), 30, "the worker to retry")
            time.sleep(1.0)
            proxy.restore()
            send(provisioned, events[1000:])
            wait_for(
                committed_to_the_end(provisioned), 90, "every offset committed", running.log_text
            )
            assert running.process.poll() is None, "the worker must ride the outage out"
    finally:
        proxy.close()
    assert compare_all(provisioned, counted_log(provisioned)) > 50


def test_a_restart_invents_no_trigger(
    provisioned: Settings, isolated_env: dict[str, str], worker: Callable
) -> None:
    """After a restart every user starts fresh in the new worker's memory: a batch that
    changes nothing worth a re-rank (one view in the user's top category, within the
    session, past the debounce) triggers nothing, for any of them."""
    now = int(time.time() * 1000) - 120_000
    users = [f"rs-u{i}" for i in range(12)]
    clicks = [
        Event(f"c-{user}", user, EventType.CLICK, now, product_id="p1", category_id="shoes")
        for user in users
    ]
    views = [
        Event(f"v-{user}", user, EventType.VIEW, now + 30_000, product_id="p2", category_id="shoes")
        for user in users
    ]
    with worker({**isolated_env, **FEATURES_ON}) as first:
        send(provisioned, clicks)
        wait_for(committed_to_the_end(provisioned), 60, "the clicks committed", first.log_text)
    first_triggers = trigger_list(provisioned)
    assert sorted(t.user_id for t in first_triggers) == sorted(users)
    assert {t.reason for t in first_triggers} == {Reason.HIGH_INTENT}
    with worker({**isolated_env, **FEATURES_ON}) as second:
        send(provisioned, views)
        wait_for(committed_to_the_end(provisioned), 60, "the views committed", second.log_text)
    assert trigger_list(provisioned) == first_triggers  # nothing new


def trigger_list(settings: Settings) -> list[RankTrigger]:
    records = read_topic(settings, settings.trigger_topic)
    return [decode_trigger(value) for batch in records.values() for _, value in batch]
