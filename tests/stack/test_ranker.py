"""The feed ranker through the real `signals worker` and `signals ranker` on the real
broker and Redis: a shopper's events become triggers, and every trigger becomes a feed
that obeys the re-ranking rules; a stale trigger changes nothing and a malformed one is
dead-lettered with its reason."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections import Counter
from collections.abc import Callable

from confluent_kafka import Producer

from jobs.catalog import generated_items, load_items
from jobs.dead_letters import read_dead_letters
from jobs.traffic import TrafficParams, simulate
from jobs.traffic.catalog import Catalog
from schemas.catalog import CatalogItem
from schemas.events import EventType
from schemas.feed_layout import POPULARITY_MODEL, Feed
from schemas.triggers import RankTrigger, encode_trigger
from streams.bootstrap import build_catalog_store, build_feed_store, build_hot_store
from streams.logic.candidates import Channel
from streams.settings import Settings
from tests.conftest import wait_for
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
