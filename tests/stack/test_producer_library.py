"""The producer library against the real broker: keys, encoding, delivery reports, failures."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer

from schemas.codec import decode_event
from schemas.events import Event, EventType, InvalidEvent
from sinks.events_producer import DeliveryFailed, DeliveryReport, EventProducer
from streams.settings import Settings
from tests.conftest import free_port

NOW_MS = int(time.time() * 1000)


def every_type(user: str) -> list[Event]:
    return [
        Event(
            f"{user}-{event_type.value}",
            user,
            event_type,
            NOW_MS + index,
            product_id=None if event_type is EventType.APP_OPEN else f"p{index}",
            price_paise=None if event_type is EventType.APP_OPEN else 19_900,
            order_id="o-1" if event_type is EventType.ORDER else None,
            quantity=2 if event_type is EventType.ORDER else None,
        )
        for index, event_type in enumerate(EventType)
    ]


def read_all(settings: Settings, expected: int, timeout_s: float = 20.0) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([settings.events_topic])
    messages = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                messages.append(message)
    finally:
        consumer.close()
    return messages


def test_every_type_arrives_keyed_by_user_and_decodes_to_the_same_event(
    provisioned: Settings,
) -> None:
    sent = every_type("u-lib-1") + every_type("u-lib-2")
    reports: list[DeliveryReport] = []
    with EventProducer(
        provisioned.kafka_bootstrap, provisioned.events_topic, on_delivery=reports.append
    ) as producer:
        for event in sent:
            producer.send(event)
    assert producer.delivered == len(sent)
    assert producer.failed == 0
    assert sorted(r.event_id for r in reports) == sorted(e.event_id for e in sent)
    assert all(r.ok and r.offset is not None and r.partition is not None for r in reports)
    # One user, one partition: that is what keeps a user's events in order.
    partitions = {r.user_id: set() for r in reports}
    for report in reports:
        partitions[report.user_id].add(report.partition)
    assert all(len(used) == 1 for used in partitions.values())

    messages = read_all(provisioned, len(sent))
    assert {m.key() for m in messages} == {b"u-lib-1", b"u-lib-2"}
    received = sorted((decode_event(m.value()) for m in messages), key=lambda e: e.event_id)
    assert received == sorted(sent, key=lambda e: e.event_id)


def test_an_invalid_event_raises_naming_the_field_and_nothing_is_sent(
    provisioned: Settings,
) -> None:
    with EventProducer(provisioned.kafka_bootstrap, provisioned.events_topic) as producer:
        with pytest.raises(InvalidEvent) as info:
            producer.send_dict(
                {"event_id": "e1", "user_id": "u1", "event_type": "click", "event_time_ms": NOW_MS}
            )
        assert info.value.field == "product_id"
        with pytest.raises(InvalidEvent) as info:
            producer.send_dict(
                {
                    "event_id": "e2",
                    "user_id": "u1",
                    "event_type": "order",
                    "event_time_ms": NOW_MS,
                    "product_id": "p1",
                    "order_id": "o1",
                    "quantity": -3,
                }
            )
        assert info.value.field == "quantity"
        assert producer.pending == 0
        # A good event afterwards still goes through, alone.
        producer.send_dict(
            {
                "event_id": "e3",
                "user_id": "u1",
                "event_type": "view",
                "event_time_ms": NOW_MS,
                "product_id": "p1",
            }
        )
    assert producer.delivered == 1
    assert [decode_event(m.value()).event_id for m in read_all(provisioned, 1)] == ["e3"]


def test_undeliverable_events_are_reported_to_the_caller_and_close_raises() -> None:
    """Nothing listens on the port: librdkafka gives up after message.timeout.ms."""
    reports: list[DeliveryReport] = []
    producer = EventProducer(
        f"127.0.0.1:{free_port()}",
        "nowhere",
        on_delivery=reports.append,
        **{"message.timeout.ms": 1500},
    )
    events = every_type("u-lost")[:3]
    for event in events:
        producer.send(event)
    with pytest.raises(DeliveryFailed) as info:
        producer.close(timeout_s=10)
    assert producer.failed == 3
    assert producer.delivered == 0
    assert sorted(r.event_id for r in info.value.failures) == sorted(e.event_id for e in events)
    assert all(not r.ok and r.error for r in reports)
    assert "events not delivered: 3 failed" in str(info.value)


def test_the_delivery_guarantees_cannot_be_weakened() -> None:
    with pytest.raises(ValueError, match="acks"):
        EventProducer("127.0.0.1:1", "t", acks=1)
    with pytest.raises(ValueError, match=r"enable\.idempotence"):
        EventProducer("127.0.0.1:1", "t", **{"enable.idempotence": False})
