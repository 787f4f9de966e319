"""Events reach Redis through a real `signals worker` on the real local broker."""

from __future__ import annotations

import io
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import Callable

import fastavro
import redis

from jobs.traffic import TrafficParams, simulate
from schemas.events import Event, EventType
from sinks.events_producer import EventProducer
from streams.logic.lastk import hot_key, interaction_of
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


def test_an_event_from_kcat_reaches_redis(
    provisioned: Settings, isolated_env: dict[str, str], worker: Callable, tmp_path
) -> None:
    """kcat is not ours: it sends the framed Avro bytes from a file, byte for byte."""
    assert shutil.which("kcat"), "kcat is installed by ./dev setup (apt-get install kcat)"
    event = Event("kcat-1", "u-kcat", EventType.WISHLIST, 1_760_000_000_123, product_id="p-kcat")
    key = hot_key(provisioned.redis_key_prefix, "u-kcat", EventType.WISHLIST)
    # Framed by hand, from the published .avsc, without our codec.
    schema = fastavro.parse_schema(json.loads((ROOT / "schemas/avro/event-v1.avsc").read_text()))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema, event.to_dict())
    framed = tmp_path / "event.bin"
    framed.write_bytes(b"\x00" + (1).to_bytes(4, "big") + body.getvalue())
    with worker(isolated_env) as running:
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
                str(framed),  # kcat sends a whole file as one message
            ],
            check=True,
            timeout=30,
        )
        wait_for(
            lambda: redis_state(provisioned, [key])[key] == [(b"p-kcat", 1_760_000_000_123.0)],
            timeout_s=90,
            what="the kcat event in Redis",
            on_fail=lambda: running.log_text()[-3000:],
        )
