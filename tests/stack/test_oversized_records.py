"""A record the broker took but the dead-letter topic cannot take as it is (about 1 MB:
over the producer's request limit once the dead-letter headers are added) must not stop
the worker: it is dead-lettered as a truncated copy with its reason, its original size and
its source coordinates, and the events behind it are applied."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from confluent_kafka import Producer

from schemas.codec import encode_event
from schemas.events import Event, EventType
from schemas.hot_layout import hot_key
from streams.settings import Settings
from tests.conftest import wait_for
from tests.stack.test_dead_letters import dead_letter_reader, next_dead_letter

#: Just under what Kafka's default `message.max.bytes` (1,048,588 per batch) accepts, and
#: over the worker producer's default request limit (1,000,000).
HUGE_BYTES = 1_040_000


def test_a_record_too_large_to_dead_letter_as_is_goes_truncated_and_the_worker_goes_on(
    provisioned: Settings, isolated_env: dict[str, str], worker: Callable
) -> None:
    settings = provisioned
    huge = b"\x00\x00\x00\x00\x01" + b"x" * (HUGE_BYTES - 5)
    good = Event("after-huge", "u-after", EventType.VIEW, int(time.time() * 1000), product_id="p1")
    producer = Producer(
        {"bootstrap.servers": settings.kafka_bootstrap, "message.max.bytes": 1_048_000}
    )
    producer.produce(settings.events_topic, key=b"u-huge", value=huge, partition=0)
    producer.produce(settings.events_topic, key=b"u-after", value=encode_event(good), partition=0)
    assert producer.flush(30) == 0

    consumer = dead_letter_reader(settings, "oversized-dlq-reader")
    client = redis.Redis.from_url(settings.redis_url)
    try:
        with worker(isolated_env) as running:
            key = hot_key(settings.redis_key_prefix, "u-after", EventType.VIEW)
            wait_for(
                lambda: client.zrange(key, 0, -1) == [b"p1"],
                60,
                "the event behind the oversized one to be applied",
                on_fail=lambda: running.log_text()[-3000:],
            )
            dead = next_dead_letter(consumer)
            assert dead is not None, "the oversized record was not dead-lettered"
            assert running.process.poll() is None, "the worker stopped"
    finally:
        client.close()
        consumer.close()
    headers = dict(dead.headers() or [])
    assert headers["dlq.field"] == b"payload"
    assert int(headers["dlq.truncated.from.bytes"]) == len(huge)
    assert dead.value() == huge[: len(dead.value())]  # the start of the original bytes
    assert len(dead.value()) < len(huge)
    assert headers["dlq.source.topic"].decode() == settings.events_topic
    assert headers["dlq.source.partition"] == b"0"
    assert int(headers["dlq.source.offset"]) == 0
