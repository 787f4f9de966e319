"""The feed ranker through the real `signals worker` and `signals ranker` on the real
broker and Redis: a shopper's events become triggers, and every trigger becomes a feed
that obeys the re-ranking rules; a stale trigger changes nothing and a malformed one is
dead-lettered with its reason."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable

import httpx
import redis
from confluent_kafka import Producer

from jobs.catalog import generated_items, load_items
from jobs.dead_letters import read_dead_letters
from jobs.traffic import TrafficParams, simulate
from jobs.traffic.catalog import Catalog
from jobs.train import TrainOptions, run_training
from schemas.catalog import CatalogItem
from schemas.events import EventType
from schemas.features import FeatureConfig
from schemas.feed_layout import POPULARITY_MODEL, Feed
from schemas.triggers import RankTrigger, Reason, encode_trigger
from sinks.model_store import ModelStore
from streams.bootstrap import (
    build_catalog_store,
    build_drift_store,
    build_feature_store,
    build_feed_store,
    build_hot_store,
)
from streams.logic.candidates import Channel
from streams.logic.ranking import FEATURES
from streams.models import ModelSlot
from streams.ranker import FeedRanker
from streams.settings import Settings
from tests.conftest import free_port, wait_for
from tests.stack.test_faults import PrivateRedis
from tests.stack.test_feature_pipeline import FEATURES_ON, send, trigger_list

PARAMS = TrafficParams(seed=5, users=15, products=120, categories=6, rate=30.0)


def latest_triggers(settings: Settings) -> dict[str, RankTrigger]:
    latest: dict[str, RankTrigger] = {}
    for trigger in trigger_list(settings):
        known = latest.get(trigger.user_id)
        if known is None or trigger.sequence > known.sequence:
            latest[trigger.user_id] = trigger
    return latest


def feeds_of(settings: Settings, users: list[str]) -> dict[str, Feed | None]:
    async def read() -> dict[str, Feed | None]:
        store = build_feed_store(settings)
        try:
            return {user: await store.read(user) for user in users}
        finally:
            await store.close()

    return asyncio.run(read())


def every_trigger_served(settings: Settings) -> Callable[[], bool]:
    def check() -> bool:
        latest = latest_triggers(settings)
        if not latest:
            return False
        feeds = feeds_of(settings, list(latest))
        return all(
            (feed := feeds[user]) is not None and feed.sequence == trigger.sequence
            for user, trigger in latest.items()
        )

    return check


def load_catalog(settings: Settings) -> dict[str, CatalogItem]:
    items = list(generated_items(Catalog.build(PARAMS)))

    async def load() -> None:
        store = build_catalog_store(settings)
        try:
            await load_items(store, items, len(items), "test")
        finally:
            await store.close()

    asyncio.run(load())
    return {item.product_id: item for item in items}


def orders_of(settings: Settings, users: list[str]) -> dict[str, set[str]]:
    async def read() -> dict[str, set[str]]:
        store = build_hot_store(settings)
        try:
            return {
                user: {p for p, _ in await store.last_k(user, EventType.ORDER, 100)}
                for user in users
            }
        finally:
            await store.close()

    return asyncio.run(read())


def test_every_trigger_becomes_a_feed_that_obeys_the_rules(
    provisioned: Settings, isolated_env: dict[str, str], worker: Callable
) -> None:
    catalog = load_catalog(provisioned)
    events = list(itertools.islice(simulate(PARAMS, int(time.time() * 1000) - 300_000), 400))
    env = {**isolated_env, **FEATURES_ON}
    with worker(env) as running, worker(env, "ranker") as ranker:
        send(provisioned, events)
        wait_for(
            every_trigger_served(provisioned),
            90,
            "a feed for every user's latest trigger",
            on_fail=lambda: running.log_text()[-3000:] + ranker.log_text()[-3000:],
        )
        latest = latest_triggers(provisioned)
        feeds = feeds_of(provisioned, list(latest))
        orders = orders_of(provisioned, list(latest))
        for user, feed in feeds.items():
            assert feed is not None and feed.products, user
            assert feed.model == POPULARITY_MODEL and feed.fallback
            assert feed.trigger_reason == latest[user].reason.value
            assert len(feed.products) == len(set(feed.products))
            assert not set(feed.products) & orders[user]
            assert {Channel(c) for c in feed.channels}  # every channel name is known
            sellers = Counter(catalog[p].seller_id for p in feed.products[:20] if p in catalog)
            assert max(sellers.values()) <= 3

        # A stale trigger (an older sequence) and a malformed one, then a fresh one.
        user, trigger = next(iter(latest.items()))
        producer = Producer({"bootstrap.servers": provisioned.kafka_bootstrap})
        stale = dataclasses.replace(trigger, sequence=trigger.sequence - 1)
        producer.produce(provisioned.trigger_topic, key=user.encode(), value=encode_trigger(stale))
        producer.produce(provisioned.trigger_topic, key=b"junk", value=b"not a trigger")
        fresh = dataclasses.replace(trigger, sequence=trigger.sequence + 1000)
        producer.produce(provisioned.trigger_topic, key=user.encode(), value=encode_trigger(fresh))
        assert producer.flush(10) == 0

        def fresh_served() -> bool:
            feed = feeds_of(provisioned, [user])[user]
            return feed is not None and feed.sequence == fresh.sequence

        wait_for(fresh_served, 60, "the fresh trigger's feed", on_fail=ranker.log_text)
        letters = list(
            read_dead_letters(provisioned.kafka_bootstrap, provisioned.dead_letter_topic, 10, 3.0)
        )
        reasons = [letter.headers.get("dlq.reason", "") for letter in letters]
        assert any(reason.startswith("trigger: ") for reason in reasons), reasons
        assert ranker.process.poll() is None


def drift_report(settings: Settings) -> dict:
    async def read() -> dict:
        store = build_drift_store(settings)
        try:
            saved = await store.read()
        finally:
            await store.close()
        assert saved is not None
        return saved

    return asyncio.run(read())


def scrape(port: int) -> dict[str, float]:
    """A process's /metrics as {sample with labels: value}."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def publish_model(model_dir: str, catalog: dict[str, CatalogItem], rounds: int) -> str:
    """Train on generated traffic of the test's world (an hour before now) and publish."""
    events = list(itertools.islice(simulate(PARAMS, int(time.time() * 1000) - 7_200_000), 6000))
    trained = run_training(
        events,
        catalog,
        FeatureConfig(),
        ModelStore(model_dir),
        options=TrainOptions(rounds=rounds, min_data_in_leaf=20),
        progress=False,
    )
    return trained.version


def send_trigger(settings: Settings, trigger: RankTrigger) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    producer.produce(
        settings.trigger_topic, key=trigger.user_id.encode(), value=encode_trigger(trigger)
    )
    assert producer.flush(10) == 0


def test_the_ranker_serves_the_published_model_and_swaps_it_without_a_restart(
    provisioned: Settings, isolated_env: dict[str, str], worker: Callable
) -> None:
    catalog = load_catalog(provisioned)
    model_dir = isolated_env["SIGNALS_MODEL_DIR"]
    first = publish_model(model_dir, catalog, rounds=30)
    events = list(itertools.islice(simulate(PARAMS, int(time.time() * 1000) - 300_000), 300))
    ports = {"worker": free_port(), "ranker": free_port()}
    env = {
        **isolated_env,
        **FEATURES_ON,
        "SIGNALS_MODEL_POLL_S": "0.3",
        "SIGNALS_DRIFT_INTERVAL_S": "0.5",
        "SIGNALS_WORKER_METRICS_PORT": str(ports["worker"]),
        "SIGNALS_RANKER_METRICS_PORT": str(ports["ranker"]),
    }
    with worker(env) as running, worker(env, "ranker") as ranker:
        send(provisioned, events)
        wait_for(
            every_trigger_served(provisioned),
            90,
            "a feed for every user's latest trigger",
            on_fail=lambda: running.log_text()[-3000:] + ranker.log_text()[-3000:],
        )
        latest = latest_triggers(provisioned)
        for user, feed in feeds_of(provisioned, list(latest)).items():
            assert feed is not None and feed.products, user
            assert (feed.model, feed.fallback) == (first, False)
        # Both processes' /metrics moved with the traffic.
        worker_metrics = scrape(ports["worker"])
        assert worker_metrics["feedsignals_events_consumed_total"] >= len(events)
        published = sum(
            v
            for k, v in worker_metrics.items()
            if k.startswith("feedsignals_triggers_published_total{")
        )
        assert published >= len(latest)
        assert worker_metrics["feedsignals_batch_duration_seconds_count"] >= 1
        lags = [v for k, v in worker_metrics.items() if k.startswith("feedsignals_consumer_lag_")]
        assert lags and all(lag >= 0 for lag in lags)
        users = {event.user_id for event in events}
        assert worker_metrics["feedsignals_event_freshness_seconds_count"] >= len(users)
        # The events are five minutes old, in a 30-minute session gap: everyone is hot,
        # counted by the next flush round (once a second).
        wait_for(
            lambda: (
                sum(
                    v
                    for k, v in scrape(ports["worker"]).items()
                    if k.startswith("feedsignals_sessions_hot{")
                )
                >= len(users)
            ),
            10,
            "every user counted hot",
        )
        ranker_metrics = scrape(ports["ranker"])
        assert ranker_metrics["feedsignals_ranker_triggers_total"] >= len(latest)
        assert ranker_metrics['feedsignals_ranker_feeds_written_total{ranking="model"}'] >= len(
            latest
        )
        assert any(
            k.startswith("feedsignals_ranker_model_info{compiled=") and f'version="{first}"' in k
            for k in ranker_metrics
        )
        assert ranker_metrics["feedsignals_ranker_rank_duration_seconds_count"] >= len(latest)
        # The ranker compared its live sample with the model's training distributions.
        wait_for(
            lambda: (
                f'feedsignals_drift_psi{{feature="score",model="{first}"}}'
                in scrape(ports["ranker"])
            ),
            10,
            "the ranker's drift figures",
        )
        assert drift_report(provisioned)["source"].startswith("ranker ")
        assert all(trigger.language for trigger in latest.values())  # travels with it

        user, trigger = next(iter(latest.items()))
        pid = ranker.process.pid

        def served_by(sequence: int) -> Callable[[], bool]:
            def check() -> bool:
                feed = feeds_of(provisioned, [user])[user]
                return feed is not None and feed.sequence == sequence

            return check

        second = publish_model(model_dir, catalog, rounds=12)
        assert second != first
        time.sleep(1.0)  # a few polls
        fresh = dataclasses.replace(trigger, sequence=trigger.sequence + 1000)
        send_trigger(provisioned, fresh)
        wait_for(served_by(fresh.sequence), 60, "the fresh trigger's feed", ranker.log_text)
        feed = feeds_of(provisioned, [user])[user]
        assert feed is not None and (feed.model, feed.fallback) == (second, False)

        # A corrupt model is refused with a log line; the previous one keeps serving.
        store = ModelStore(model_dir)
        store.write("corrupt", "tree\nthis is not a model\n", "{}")
        store.publish("corrupt")
        time.sleep(1.0)
        later = dataclasses.replace(trigger, sequence=trigger.sequence + 2000)
        send_trigger(provisioned, later)
        wait_for(served_by(later.sequence), 60, "the later trigger's feed", ranker.log_text)
        feed = feeds_of(provisioned, [user])[user]
        assert feed is not None and feed.model == second
        assert "ranker model corrupt refused" in ranker.log_text()
        assert ranker.process.poll() is None and ranker.process.pid == pid

    # `signals drift` samples the hot tier itself (the ranker stopped, so its own checks
    # do not overwrite the report): a PSI per feature, stored, exit 1 when due.
    ModelStore(model_dir).publish(first)
    checked = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "drift", "--json", "--users", "50"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode in (0, 1), checked.stderr  # 1: retraining is due
    report = json.loads(checked.stdout)
    assert report["model"] == first and report["rows"] > 0
    assert set(report["psi"]) == {*FEATURES, "score"}
    assert report["retrain_due"] == (checked.returncode == 1)
    assert drift_report(provisioned)["source"] == "signals drift"


class _BrokenModel:
    version = "broken"

    def score(self, rows: object) -> object:
        raise ValueError("the model cannot score")


def test_a_failing_model_falls_back_to_popularity_and_an_unknown_user_still_gets_a_feed(
    provisioned: Settings,
) -> None:
    load_catalog(provisioned)

    async def scenario() -> tuple[Feed | None, Feed | None, FeedRanker]:
        slot = ModelSlot(None)
        ranker = FeedRanker(
            hot_store=build_hot_store(provisioned),
            features=build_feature_store(provisioned),
            catalog=build_catalog_store(provisioned),
            feeds=build_feed_store(provisioned),
            models=slot,
        )
        now = int(time.time() * 1000)
        unknown = RankTrigger("u-never-seen", 5, Reason.SESSION_START, now, 0, None, now, "hi")
        cold = await ranker.rank(unknown)
        slot.model = _BrokenModel()  # type: ignore[assignment]
        try:
            broken = await ranker.rank(dataclasses.replace(unknown, sequence=6))
        finally:
            await ranker.close()
        return cold, broken, ranker

    cold, broken, ranker = asyncio.run(scenario())
    assert cold is not None and cold.products  # never an empty feed
    assert (cold.model, cold.fallback) == (POPULARITY_MODEL, True)
    assert broken is not None and broken.products and broken.fallback
    assert broken.model == POPULARITY_MODEL
    assert ranker.counters.scoring_errors == 1 and ranker.counters.fallbacks == 2


def test_the_ranker_waits_out_a_redis_outage_and_skips_no_trigger(
    provisioned: Settings,
    isolated_env: dict[str, str],
    worker: Callable,
    private_redis: PrivateRedis,
) -> None:
    env = {**isolated_env, "SIGNALS_REDIS_URL": private_redis.url}
    settings = provisioned.model_copy(update={"redis_url": private_redis.url})
    load_catalog(settings)
    now = int(time.time() * 1000)
    trigger = RankTrigger("u1", 10, Reason.SESSION_START, now, 0, None, now, "en")

    def served(sequence: int) -> Callable[[], bool]:
        def check() -> bool:
            try:
                feed = feeds_of(settings, ["u1"])["u1"]
            except redis.ConnectionError:
                return False
            return feed is not None and feed.sequence == sequence

        return check

    with worker(env, "ranker") as ranker:
        send_trigger(settings, trigger)
        wait_for(served(10), 60, "the first feed", ranker.log_text)
        private_redis.stop()
        send_trigger(settings, dataclasses.replace(trigger, sequence=20))
        time.sleep(3.0)  # the ranker retries meanwhile
        assert ranker.process.poll() is None
        private_redis.start()  # back, and empty
        wait_for(served(20), 60, "the trigger sent while Redis was down", ranker.log_text)


def test_triggers_ranked_together_give_the_feeds_ranked_one_at_a_time(
    provisioned: Settings,
) -> None:
    """`rank_many` (what a ranker that is behind does) against `rank`, same stores, same
    clock: the same feeds in the same places, a stale trigger skipped in its place."""
    load_catalog(provisioned)
    now = int(time.time() * 1000)
    users = [f"u-batch-{i}" for i in range(6)]
    triggers = [
        RankTrigger(user, 7, Reason.SESSION_START, now, 0, None, now, lang)
        for user, lang in zip(users, ["hi", "en", "ta", "hi", None, "en"], strict=True)
    ]

    def ranker_writing_to(prefix: str) -> FeedRanker:
        return FeedRanker(
            hot_store=build_hot_store(provisioned),
            features=build_feature_store(provisioned),
            catalog=build_catalog_store(provisioned),
            feeds=build_feed_store(provisioned.model_copy(update={"redis_key_prefix": prefix})),
            clock_ms=lambda: now,
        )

    async def scenario() -> tuple[list[Feed | None], list[Feed | None], FeedRanker]:
        alone = ranker_writing_to(provisioned.redis_key_prefix + "-alone")
        together = ranker_writing_to(provisioned.redis_key_prefix + "-together")
        try:
            one_by_one = [await alone.rank(trigger) for trigger in triggers]
            # A feed of a later trigger is already there for the fourth user: skipped.
            await together.rank(dataclasses.replace(triggers[3], sequence=9))
            batched = await together.rank_many(triggers)
        finally:
            await alone.close()
            await together.close()
        return one_by_one, batched, together

    one_by_one, batched, together = asyncio.run(scenario())
    assert batched[3] is None and together.counters.stale == 1
    for position, (single, joint) in enumerate(zip(one_by_one, batched, strict=True)):
        assert single is not None and single.products, position
        if position == 3:
            continue
        assert joint == single, position
    assert together.counters.written == 1 + 5 and together.counters.fallbacks == 6
