"""Events reach Redis through a real `signals worker` on the real local broker."""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

import fastavro
import redis
from confluent_kafka import Consumer

from jobs.traffic import TrafficParams, simulate
from schemas.codec import decode_event
from schemas.events import PRODUCT_EVENT_TYPES, Event, EventType
from schemas.hot_layout import hot_key, interaction_of
from sinks.events_producer import EventProducer
from streams.settings import Settings
from tests.conftest import ROOT, wait_for


def expected_last_k(
    events: list[Event], settings: Settings
) -> dict[str, list[tuple[bytes, float]]]:
    """The reference answer: per key, newest time per product, newest first, cut to k.

    Independent of delivery order and repeats, as the store must be: a duplicate changes
    nothing, and a late event counts by its event time, not by when it arrived.
    """
    newest: dict[str, dict[str, int]] = {}
    for event in events:
        item = interaction_of(event)
        if item is None:
            continue
        key = hot_key(settings.redis_key_prefix, item.user_id, item.event_type)
        products = newest.setdefault(key, {})
        products[item.product_id] = max(products.get(item.product_id, 0), item.event_time_ms)
    return {
        key: [(p.encode(), float(t)) for p, t in sorted(items.items(), key=lambda pt: -pt[1])][
            : settings.last_k[EventType(key.rsplit(":", 1)[1])]
        ]
        for key, items in newest.items()
    }


def redis_state(settings: Settings, keys: list[str]) -> dict[str, list[tuple[bytes, float]]]:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return {key: client.zrevrange(key, 0, -1, withscores=True) for key in keys}
    finally:
        client.close()


def test_events_from_our_producer_land_in_redis_as_last_k(
    provisioned: Settings, isolated_env: dict[str, str], worker: Callable
) -> None:
    # A few users with short gaps, so each has several sessions; event times end about
    # five minutes ago (the worker rejects events from its future).
    params = TrafficParams(
        seed=11, users=20, products=300, categories=12, rate=20.0, session_gap_ms=60_000
    )
    start_ms = int(time.time() * 1000) - 480_000
    events = list(itertools.islice(simulate(params, start_ms), 3000))
    assert len({e.event_id for e in events}) < len(events), "some duplicates are delivered"
    assert any(
        later.event_time_ms < earlier.event_time_ms for earlier, later in itertools.pairwise(events)
    ), "some events arrive out of order"
    # One user's events have distinct times (one session at a time, think time > 0), so
    # the newest-first order has no ties.
    expected = expected_last_k(events, provisioned)
    with worker(isolated_env) as running:
        with EventProducer(provisioned.kafka_bootstrap, provisioned.events_topic) as producer:
            for event in events:
                producer.send(event)
        assert producer.delivered == len(events)
        wait_for(
            lambda: redis_state(provisioned, list(expected)) == expected,
            timeout_s=90,
            what="the worker to apply every event to Redis",
            on_fail=lambda: running.log_text()[-3000:],
        )


def test_library_cli_and_kcat_events_decode_identically_in_the_worker(
    provisioned: Settings, isolated_env: dict[str, str], worker: Callable, tmp_path
) -> None:
    """One event of every type, sent three ways (only the user differs): our producer
    library, `signals produce` from a JSON-lines file, and kcat sending bytes framed by
    hand from the published .avsc (kcat is not ours). The worker must record all three
    identically."""
    assert shutil.which("kcat"), "kcat is installed by ./dev setup (apt-get install kcat)"
    now_ms = int(time.time() * 1000)

    def events_for(user: str) -> list[Event]:
        return [
            Event(
                f"{user}-{event_type.value}",
                user,
                event_type,
                now_ms - 1000 + index,
                product_id=None if event_type is EventType.APP_OPEN else f"p-{event_type.value}",
                price_paise=None if event_type is EventType.APP_OPEN else 19_900 + index,
                feed_position=index,
                order_id="o-1" if event_type is EventType.ORDER else None,
                quantity=2 if event_type in (EventType.ORDER, EventType.ADD_TO_CART) else None,
                language="hi",
            )
            for index, event_type in enumerate(EventType)
        ]

    schema = fastavro.parse_schema(json.loads((ROOT / "schemas/avro/event-v1.avsc").read_text()))
    framed_files = []
    for event in events_for("u-kcat"):
        body = io.BytesIO()
        fastavro.schemaless_writer(body, schema, event.to_dict())
        path = tmp_path / f"{event.event_id}.bin"
        path.write_bytes(b"\x00" + (1).to_bytes(4, "big") + body.getvalue())
        framed_files.append(path)
    lines = tmp_path / "events.jsonl"
    lines.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in events_for("u-cli")))

    with worker(isolated_env) as running:
        with EventProducer(provisioned.kafka_bootstrap, provisioned.events_topic) as producer:
            for event in events_for("u-lib"):
                producer.send(event)
        env = {**os.environ, **isolated_env}
        cli = subprocess.run(
            [sys.executable, "-m", "jobs.cli", "produce", str(lines)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert cli.returncode == 0, cli.stderr
        assert "sent 7, rejected 0, failed 0" in cli.stdout
        for path in framed_files:  # kcat sends a whole file as one message
            subprocess.run(
                [
                    "kcat",
                    "-P",
                    "-b",
                    provisioned.kafka_bootstrap,
                    "-t",
                    provisioned.events_topic,
                    "-k",
                    "u-kcat",
                    str(path),
                ],
                check=True,
                timeout=30,
            )

        def recorded(user: str) -> dict[str, list[tuple[bytes, float]]]:
            keys = [hot_key(provisioned.redis_key_prefix, user, t) for t in PRODUCT_EVENT_TYPES]
            return {
                key.rsplit(":", 1)[1]: rows for key, rows in redis_state(provisioned, keys).items()
            }

        expected = {
            event.event_type.value: [(event.product_id.encode(), float(event.event_time_ms))]
            for event in events_for("u-lib")
            if event.product_id
        }
        wait_for(
            lambda: recorded("u-lib") == recorded("u-cli") == recorded("u-kcat") == expected,
            timeout_s=90,
            what="the same interactions for all three producers",
            on_fail=lambda: (
                f"{recorded('u-lib')}\n{recorded('u-cli')}\n{recorded('u-kcat')}\n"
                + running.log_text()[-3000:]
            ),
        )
    # The raw messages decode to equal events, apart from the user.
    consumer = Consumer(
        {
            "bootstrap.servers": provisioned.kafka_bootstrap,
            "group.id": f"check-{time.time_ns()}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([provisioned.events_topic])
    decoded: dict[str, list[Event]] = {}
    deadline = time.monotonic() + 30
    while sum(map(len, decoded.values())) < 21 and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            event = decode_event(message.value())
            decoded.setdefault(event.user_id, []).append(event)
    consumer.close()

    def anonymous(events: list[Event]) -> list[dict]:
        return sorted(
            (
                {**e.to_dict(), "user_id": "", "event_id": e.event_id.split("-", 2)[-1]}
                for e in events
            ),
            key=lambda d: d["event_id"],
        )

    assert (
        anonymous(decoded["u-lib"]) == anonymous(decoded["u-cli"]) == anonymous(decoded["u-kcat"])
    )
