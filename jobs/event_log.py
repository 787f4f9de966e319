"""Read a topic from its start into memory: the event log the offline feature
computation (`schemas.features.OfflineFeatures`) and the training job work from.

Reads with an assigned consumer (no group join, nothing committed), every partition from
offset 0 to its end as of the call, so a live worker's group is never disturbed.
"""

from __future__ import annotations

import json
import time
import uuid

from confluent_kafka import Consumer, TopicPartition

from schemas.codec import decode_event
from schemas.events import Event, InvalidEvent
from schemas.feature_layout import CountedEvent
from sinks.connectivity import KafkaTarget, librdkafka_base
from streams.logic.admission import Limits, check_size, check_time

#: (offset, value, timestamp in ms) of one record.
Record = tuple[int, bytes | None, int]


def topic_records(
    bootstrap: KafkaTarget, topic: str, timeout_s: float = 60.0
) -> dict[int, list[Record]]:
    """Every record of `topic` up to its current end, per partition in offset order:
    (offset, value, record timestamp). Raises TimeoutError if the end is not reached in
    `timeout_s`."""
    consumer = Consumer(
        {
            **librdkafka_base(bootstrap),
            "group.id": f"event-log-{uuid.uuid4().hex[:8]}",  # required; never joined
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
        records: dict[int, list[Record]] = {p: [] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions if ends[p] > 0])
        deadline = time.monotonic() + timeout_s

        def behind() -> bool:
            return any(
                records[p][-1][0] + 1 < ends[p] if records[p] else ends[p] > 0 for p in partitions
            )

        while behind():
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} to its end took over {timeout_s:.0f}s")
            for message in consumer.consume(1000, timeout=0.5):
                partition, offset = message.partition(), message.offset()
                if (
                    message.error() is None
                    and partition is not None
                    and offset is not None
                    and offset < ends[partition]
                ):
                    records[partition].append((offset, message.value(), message.timestamp()[1]))
        return records
    finally:
        consumer.close()


def counted_events(
    bootstrap: KafkaTarget, topic: str, limits: Limits | None = None
) -> tuple[list[CountedEvent], int]:
    """The events of an events topic as the features count them (partition by partition,
    in offset order), and how many records the worker dead-letters instead (they count
    nowhere). With the worker's `limits`, records it rejects for their size or time are
    left out too; "now" for the future-skew check is the record's timestamp (when it was
    produced), which is about when a worker keeping up saw it."""
    log: list[CountedEvent] = []
    invalid = 0
    for partition, records in topic_records(bootstrap, topic).items():
        for offset, value, timestamp_ms in records:
            try:
                if limits is not None:
                    check_size(value, limits)
                event = decode_event(value)
                if limits is not None:
                    check_time(event, timestamp_ms, limits)
            except InvalidEvent:
                invalid += 1
                continue
            log.append(CountedEvent.of(event, partition, offset))
    return log, invalid


def topic_events(bootstrap: KafkaTarget, topic: str) -> tuple[list[Event], int]:
    """Every event of an events topic (partition by partition, in offset order), and how
    many records could not be decoded (left out, as the worker dead-letters them)."""
    events: list[Event] = []
    invalid = 0
    for records in topic_records(bootstrap, topic).values():
        for _offset, value, _timestamp_ms in records:
            try:
                events.append(decode_event(value))
            except InvalidEvent:
                invalid += 1
    return events, invalid


def file_events(path: str) -> tuple[list[Event], int]:
    """The events of a JSON-lines file (the format `signals produce` reads), and how many
    lines were not valid events (left out)."""
    events: list[Event] = []
    invalid = 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                events.append(Event.from_dict(json.loads(line)))
            except (ValueError, TypeError):  # JSONDecodeError and InvalidEvent are ValueErrors
                invalid += 1
    return events, invalid
