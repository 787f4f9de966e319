"""The benches' log trimmer against the real local mock broker: it deletes exactly what a
consumer group has committed, and a reader from the beginning then starts there."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, Producer, TopicPartition

from bench.harness import GroupCommits, LogTrimmer
from infra.kafka_mock import control
from infra.topics import apply_topics
from streams.settings import Settings


def _produce(settings: Settings, partition: int, count: int) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 0})
    for n in range(count):
        # One flush per message: many small produce batches, as live traffic makes.
        producer.produce(settings.events_topic, value=b"%d" % n, partition=partition)
        producer.flush(10)


def _consumer(settings: Settings, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )


def test_trimmer_deletes_what_the_group_committed_and_nothing_more(
    isolated_settings: Settings,
) -> None:
    settings = isolated_settings
    assert settings.kafka_mock_control, "the local stack runs the mock broker"
    apply_topics(settings)
    _produce(settings, partition=1, count=40)
    group = f"{settings.app_id}-trim"
    committer = _consumer(settings, group)
    committer.commit(offsets=[TopicPartition(settings.events_topic, 1, 25)], asynchronous=False)
    committer.close()

    commits = GroupCommits(settings, settings.events_topic, settings.events_partitions, group)
    try:
        with LogTrimmer(settings, commits, every_s=0.1) as trimmer:
            deadline = time.monotonic() + 10
            while trimmer.records_deleted < 25 and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        commits.close()
    assert trimmer.active
    assert trimmer.errors == []
    assert trimmer.records_deleted == 25

    reader = _consumer(settings, f"{settings.app_id}-reader")
    try:
        low, high = reader.get_watermark_offsets(
            TopicPartition(settings.events_topic, 1), timeout=10
        )
        assert (low, high) == (25, 40)
        reader.assign([TopicPartition(settings.events_topic, 1, 0)])  # from before the start
        offsets: list[int] = []
        deadline = time.monotonic() + 10
        while len(offsets) < 15 and time.monotonic() < deadline:
            message = reader.poll(0.5)
            if message is not None and message.error() is None:
                offset = message.offset()
                assert offset is not None
                offsets.append(offset)
        assert offsets == list(range(25, 40))
    finally:
        reader.close()


def test_mock_refuses_to_delete_past_the_end_of_a_partition(isolated_settings: Settings) -> None:
    settings = isolated_settings
    assert settings.kafka_mock_control
    apply_topics(settings)
    _produce(settings, partition=0, count=3)
    request = {"op": "delete_records", "name": settings.events_topic, "partition": 0}
    assert control(settings.kafka_mock_control, {**request, "before_offset": 3})["ok"]
    past = control(settings.kafka_mock_control, {**request, "before_offset": 50})
    assert not past["ok"]
    assert "out of range" in past["error"].lower()
