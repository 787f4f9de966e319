"""User ids are part of the Redis key layout (`<prefix>:{<user_id>}:<type>`), so the event
contract defines their alphabet: an id the layout cannot hold (one that starts with `}`
gives its keys an empty hash tag, so a user's keys land on different cluster slots and
their flush script is refused for ever) is dead-lettered, and every other user's session
still ends and is flushed, on one Redis and on a Redis Cluster."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from schemas.codec import encode_event
from schemas.events import Event, EventType, InvalidEvent
from schemas.hot_layout import reference_last_k
from streams.settings import Settings
from tests.conftest import on_backend, wait_for
from tests.stack.oracle import Store
from tests.stack.test_dead_letters import dead_letter_reader, framed, next_dead_letter

GAP_ENV = {
    "SIGNALS_INACTIVITY_GAP_S": "1",
    "SIGNALS_SESSION_IDLE_GRACE_S": "0.5",
    "SIGNALS_FLUSH_INTERVAL_S": "0.2",
}


@pytest.mark.parametrize("backend", ["single", "cluster"])
def test_a_user_id_the_key_layout_cannot_hold_is_dead_lettered_and_flushes_go_on(
    backend: str, provisioned: Settings, isolated_env: dict[str, str], worker: Callable
) -> None:
    settings = on_backend(provisioned, backend, k=None)
    env = {**isolated_env, **GAP_ENV}
    if backend == "cluster":
        env |= {"SIGNALS_REDIS_URL": settings.redis_url, "SIGNALS_REDIS_CLUSTER": "1"}
    now_ms = int(time.time() * 1000)
    good_users = [f"ok-u{i}" for i in range(8)]
    good_events = [
        Event(f"ok-{number}", user, EventType.VIEW, now_ms, product_id=f"p{number}")
        for number, user in enumerate(good_users)
    ]
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    # Encoded by hand: our own encoder refuses such an id.
    bad_value = framed(user_id="}brace", event_time_ms=now_ms)
    # One partition for all, so the bad user shares the good users' flush.
    producer.produce(settings.events_topic, key=b"}brace", value=bad_value, partition=0)
    for event in good_events:
        producer.produce(
            settings.events_topic,
            key=event.user_id.encode(),
            value=encode_event(event),
            partition=0,
        )
    assert producer.flush(10) == 0

    consumer = dead_letter_reader(settings, "ids-dlq-reader")
    store = Store(settings)
    try:
        with worker(env) as running:
            # The good users' sessions end after the 1 s gap; every one of them is flushed,
            # their views in the cold tier.
            expected = reference_last_k(good_events, settings.last_k)
            wait_for(
                lambda: (
                    set(store.tiers(set(good_users)).values()) == {"cold"}
                    and store.state(set(good_users)) == expected
                ),
                60,
                "every good user's view to be flushed to the cold tier",
                on_fail=lambda: running.log_text()[-3000:],
            )
            dead = next_dead_letter(consumer)
            assert dead is not None, "the bad id was not dead-lettered"
            headers = dict(dead.headers() or [])
            assert dead.value() == bad_value
            assert headers["dlq.field"] == b"user_id"
            assert b"{" in headers["dlq.reason"] or b"}" in headers["dlq.reason"]
            # Never written, and the read client refuses the id with the contract's reason.
            with pytest.raises(InvalidEvent) as refused:
                store.state({"}brace"})
            assert refused.value.field == "user_id"
            assert not running.log_text().count("same key slot")
    finally:
        store.close()
        consumer.close()
