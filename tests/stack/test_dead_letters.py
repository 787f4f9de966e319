"""Every kind of bad message lands on the dead-letter topic with its original bytes and the
reason, nothing touches the store, and the worker keeps going."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

import fastavro
import redis
from confluent_kafka import Consumer, Message, Producer

from schemas.codec import encode_event
from schemas.events import Event, EventType
from schemas.hot_layout import hot_key
from schemas.registry import CURRENT_EVENT_SCHEMA_ID, schema_for
from streams.settings import Settings
from tests.conftest import ROOT, wait_for

NOW_MS = int(time.time() * 1000)


def framed(**fields: object) -> bytes:
    """An event encoded by hand, so it can break rules our own encoder refuses to break."""
    record = {
        "event_id": "bad",
        "user_id": "u-bad",
        "event_type": "click",
        "event_time_ms": NOW_MS,
        "platform": "android",
        "language": "en",
        "product_id": "p1",
        "category_id": None,
        "price_paise": None,
        "feed_position": None,
        "order_id": None,
        "quantity": None,
        **fields,
    }
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema_for(CURRENT_EVENT_SCHEMA_ID), record)
    return b"\x00" + CURRENT_EVENT_SCHEMA_ID.to_bytes(4, "big") + body.getvalue()


def dead_letter_reader(settings: Settings, group: str) -> Consumer:
    """A consumer of the test's dead-letter topic from its start (close it afterwards)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([settings.dead_letter_topic])
    return consumer


def next_dead_letter(consumer: Consumer, timeout_s: float = 30) -> Message | None:
    """The next dead letter, or None if none comes within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            return message
    return None


BAD_MESSAGES: dict[str, tuple[bytes, str]] = {
    # case: (value, dlq.field header)
    "not our framing": (b'{"event_id": "e1"}', "payload"),
    "unknown schema id": (b"\x00\x00\x00\x00\x63" + framed()[5:], "schema_id"),
    "avro that does not decode": (framed()[:9], "payload"),
    "empty user id": (framed(user_id=""), "user_id"),
    "event time far in the future": (framed(event_time_ms=NOW_MS + 86_400_000), "event_time_ms"),
    "event time before the lower bound": (framed(event_time_ms=1_000), "event_time_ms"),
    "negative price": (framed(price_paise=-100), "price_paise"),
    "oversized payload": (framed(product_id="p" * 20_000), "payload"),
}


def test_each_bad_message_is_dead_lettered_with_its_reason_and_good_ones_still_apply(
    provisioned: Settings, isolated_env: dict[str, str], worker: Callable
) -> None:
    good = Event("good-1", "u-good", EventType.ORDER, NOW_MS, product_id="p-good", order_id="o-1")
    producer = Producer({"bootstrap.servers": provisioned.kafka_bootstrap})
    for case, (value, _field) in BAD_MESSAGES.items():
        producer.produce(
            provisioned.events_topic, key=b"u-bad", value=value, headers=[("case", case.encode())]
        )
    producer.produce(provisioned.events_topic, key=b"u-good", value=encode_event(good))
    assert producer.flush(10) == 0

    consumer = dead_letter_reader(provisioned, "dlq-reader")
    received: dict[bytes, dict[str, bytes]] = {}
    try:
        with worker(isolated_env) as running:
            deadline = time.monotonic() + 90
            while len(received) < len(BAD_MESSAGES) and time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is None or message.error():
                    continue
                received[message.value()] = dict(message.headers() or [])
            assert len(received) == len(BAD_MESSAGES), running.log_text()[-3000:]
            client = redis.Redis.from_url(provisioned.redis_url)
            try:
                key = hot_key(provisioned.redis_key_prefix, "u-good", EventType.ORDER)
                wait_for(lambda: client.zrange(key, 0, -1) == [b"p-good"], 30, "the good event")
                bad_keys = client.keys(f"{provisioned.redis_key_prefix}:{{u-bad}}:*")
                assert bad_keys == [], "a dead-lettered event touched the store"
            finally:
                client.close()
    finally:
        consumer.close()

    for case, (value, field) in BAD_MESSAGES.items():
        headers = received[value]  # the original bytes, unchanged
        assert headers["dlq.field"].decode() == field, case
        assert headers["dlq.reason"], case
        assert headers["dlq.source.topic"].decode() == provisioned.events_topic
        assert int(headers["dlq.source.offset"]) >= 0
        assert abs(int(headers["dlq.time.ms"]) - time.time() * 1000) < 300_000


def signals_cli(env: dict[str, str], *args: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_dead_letter_is_listed_corrected_and_re_driven(
    provisioned: Settings, isolated_env: dict[str, str], worker: Callable
) -> None:
    producer = Producer({"bootstrap.servers": provisioned.kafka_bootstrap})
    producer.produce(
        provisioned.events_topic, key=b"u-bad", value=framed(event_id="fix-me", price_paise=-100)
    )
    assert producer.flush(10) == 0
    key = hot_key(provisioned.redis_key_prefix, "u-bad", EventType.CLICK)
    with worker(isolated_env) as running:
        listing = signals_cli(isolated_env, "dlq", "list", "--idle", "20", "--max", "1")
        assert listing.returncode == 0, listing.stderr + running.log_text()[-2000:]
        assert "price_paise: must not be negative" in listing.stdout
        assert f"from {provisioned.events_topic}[0]@0" in listing.stdout
        assert "1 dead letters" in listing.stdout

        records = signals_cli(isolated_env, "dlq", "list", "--records", "--max", "1")
        record = json.loads(records.stdout.strip())
        assert record["event_id"] == "fix-me"
        record["price_paise"] = 100  # the correction
        bad_line = '{"event_id": "x", "user_id": "", "event_type": "view", "event_time_ms": 1}'
        sent = signals_cli(
            isolated_env,
            "produce",
            "--file",
            "-",
            stdin=json.dumps(record) + "\n" + bad_line + "\nnot json\n",
        )
        assert sent.returncode == 1  # some lines were rejected
        assert sent.stdout.startswith("sent 1, rejected 2, failed 0")
        assert "line 2: user_id: must be a non-empty string" in sent.stdout
        assert "line 3: not JSON" in sent.stdout

        client = redis.Redis.from_url(provisioned.redis_url)
        try:
            wait_for(
                lambda: client.zrange(key, 0, -1) == [b"p1"],
                60,
                "the re-driven event",
                on_fail=lambda: running.log_text()[-2000:],
            )
        finally:
            client.close()
