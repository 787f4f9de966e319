"""What only a real broker and a real CQL server make testable: the stack's own Kafka and
Cassandra stopped and started under a running worker, a real consumer-group rebalance,
the broker's time index (offsets_for_times) and retention by time.

The restarts stop the shared stack's server process (SIGTERM, as an operator's restart
would) and start it again with the same data; every other test meets it up again.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import redis
from cassandra.cluster import NoHostAvailable
from confluent_kafka import Consumer, Producer, TopicPartition

from infra.cassandra_server import CassandraService
from infra.kafka_server import KafkaService
from infra.stack import load_config
from infra.topics import DAY_MS, TopicSpec, apply_topics, delete_topics
from schemas.events import Event
from schemas.hot_layout import active_key
from streams.settings import Settings
from tests.conftest import wait_for
from tests.stack.oracle import Store, all_cold, random_events, send_phase, settle

RESTART_READY_S = 120.0


@contextmanager
def stopped(service: KafkaService | CassandraService) -> Iterator[None]:
    """The server is down inside the block and up (same data, same port) after it, even if
    the block fails, so the rest of the suite finds the stack as it was."""
    assert service.stop(), f"{service.name} was not running"
    try:
        yield
    finally:
        service.start()
        service.wait_ready(RESTART_READY_S)


def test_a_broker_restart_mid_stream_loses_and_duplicates_nothing(
    session_settings: Settings, isolated_env: dict[str, str], store: Store, worker: Callable
) -> None:
    """The worker outlives its broker: events sent before, during (buffered and retried by
    the producer) and after a Kafka restart all land exactly as the oracle says."""
    rng = random.Random(11)
    users = [f"k-u{i}" for i in range(12)]
    kafka = KafkaService(load_config())
    sent: list[Event] = []
    with worker(isolated_env) as running:
        sent += send_phase(session_settings, random_events(rng, "k0", users, 150))
        settle(store, sent, running.log_text)
        during = random_events(rng, "k1", users, 150)
        with stopped(kafka):
            # The producer cannot reach the broker: it buffers and retries until it returns.
            sender = Background(lambda: send_phase(session_settings, during))
            time.sleep(3)
            assert running.process.poll() is None, "the worker died with its broker"
        sent += sender.result(timeout_s=120)
        sent += send_phase(session_settings, random_events(rng, "k2", users, 150))
        settle(store, sent, running.log_text)
        assert running.process.poll() is None
    assert len(sent) == 450


class Background:
    """A call on a thread whose result (or exception) the test gets back."""

    def __init__(self, call: Callable[[], list[Event]]) -> None:
        self._call = call
        self._result: list[Event] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = self._call()
        except BaseException as exc:  # handed to the test by result()
            self._error = exc

    def result(self, timeout_s: float) -> list[Event]:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"still running after {timeout_s:.0f}s"
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


def test_a_cassandra_restart_during_a_flush_evicts_no_user_without_a_cold_write(
    session_settings: Settings,
    isolated_env: dict[str, str],
    store: Store,
    worker: Callable,
) -> None:
    """Cassandra goes down while the worker is moving ended sessions to it: users already
    evicted from Redis must have their last-k in the cold tier when it is back, and the
    rest are flushed once it returns (the merged state equals the oracle)."""
    settings = session_settings
    rng = random.Random(12)
    users = [f"c-u{i}" for i in range(1500)]
    # Small flush chunks, so the flush of 1,500 users is many cold writes long; a gap longer
    # than the events' lateness (3 s), so no session has ended before every user is hot.
    env = {**isolated_env, "SIGNALS_FLUSH_BATCH": "10", "SIGNALS_INACTIVITY_GAP_S": "6"}
    cassandra = CassandraService(load_config())
    client = redis.Redis.from_url(settings.redis_url)

    def hot_users() -> int:
        pipe = client.pipeline(transaction=False)
        for partition in range(settings.events_partitions):
            pipe.zcard(active_key(settings.redis_key_prefix, partition))
        return sum(pipe.execute())

    try:
        with worker(env) as running:
            sent = send_phase(settings, random_events(rng, "c0", users, 3000))
            wait_for(
                lambda: hot_users() == len({e.user_id for e in sent}),
                60,
                "every user to be hot",
                on_fail=running.log_text,
            )
            everyone = hot_users()
            # The sessions end GAP_S after the last event; restart as the flush begins.
            wait_for(lambda: hot_users() < everyone, 60, "the flush to start", running.log_text)
            with stopped(cassandra):
                evicted_while_down = everyone - hot_users()
                time.sleep(2)
                assert running.process.poll() is None, "the worker died with the CQL server"
            assert 0 < evicted_while_down < everyone, "the restart did not land mid-flush"
            all_cold(store, set(users) & {e.user_id for e in sent}, running.log_text)
            # The test's own read client reconnects on the driver's schedule (it does not
            # retry a read); the worker retried its writes by itself.
            wait_for(lambda: reads(store, users[:1]), 60, "the read client to reconnect")
            settle(store, sent, running.log_text)
    finally:
        client.close()


def test_a_third_worker_joining_mid_stream_rebalances_without_loss(
    session_settings: Settings, isolated_env: dict[str, str], store: Store, worker: Callable
) -> None:
    """A real group rebalance: two workers share the topic, a third joins while events
    flow and takes partitions; the state still equals the oracle."""
    rng = random.Random(13)
    users = [f"g-u{i}" for i in range(24)]
    sent: list[Event] = []
    with worker(isolated_env) as first, worker(isolated_env) as second:

        def logs() -> str:
            return first.log_text() + second.log_text()

        for running in (first, second):
            wait_for(
                lambda running=running: assigned_events_partitions(
                    running.log_text(), session_settings
                ),
                90,
                "both first workers to own partitions of the events topic",
                on_fail=logs,
            )
        sent += send_phase(session_settings, random_events(rng, "g0", users, 200))
        settle(store, sent, logs)
        stop = threading.Event()

        def stream() -> list[Event]:
            streamed: list[Event] = []
            number = 0
            while not stop.is_set():
                events = random_events(rng, f"g1-{number}", users, 25)
                streamed += send_phase(session_settings, events)
                number += 1
                time.sleep(0.1)
            return streamed

        sender = Background(stream)
        try:
            with worker(isolated_env) as third:
                wait_for(
                    lambda: assigned_events_partitions(third.log_text(), session_settings),
                    90,
                    "the third worker to be assigned partitions of the events topic",
                    on_fail=third.log_text,
                )
                time.sleep(2)  # keep streaming into the new assignment
                stop.set()
                streamed = sender.result(timeout_s=60)
                sent += streamed
                settle(store, sent, lambda: logs() + third.log_text())
                assert third.process.poll() is None
        finally:
            stop.set()
    assert len(streamed) >= 25


def assigned_events_partitions(log: str, settings: Settings) -> bool:
    """The worker's latest assignment, as its log shows it, holds at least one partition of
    the events topic. The consumer logs every assignment, an empty one too, as a table:
    `Setting newly assigned partitions` ... `| <topic> | {1, 3} |` ... `for group <id>`."""
    blocks = re.findall(r"Setting newly assigned partitions(.*?)for group", log, re.DOTALL)
    if not blocks:
        return False
    row = re.search(rf"\|\s*{re.escape(settings.events_topic)}\s*\|\s*\{{([^}}]+)\}}", blocks[-1])
    return row is not None


def test_offsets_for_times_finds_the_first_record_at_or_after_a_time(
    provisioned: Settings,
) -> None:
    """The broker's time index on the events topic, as replay will use it: for each
    partition, the earliest offset whose timestamp is >= the time asked for."""
    settings = provisioned
    base_ms = int(time.time() * 1000) - 60_000
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all"})
    for index in range(10):
        producer.produce(
            settings.events_topic,
            value=b"x",
            key=b"u1",
            partition=0,
            timestamp=base_ms + index * 1000,
        )
    assert producer.flush(30) == 0
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"{settings.app_id}-oft"}
    )
    asked = [
        (0, base_ms + 3500),  # between offsets 3 and 4
        (0, base_ms + 5000),  # exactly offset 5's time
        (0, base_ms),  # the first record
        (0, base_ms + 60_000),  # after the last record
        (1, base_ms),  # an empty partition
    ]
    try:
        # One request per time: librdkafka keeps one entry per partition in a request.
        found = [
            consumer.offsets_for_times(
                [TopicPartition(settings.events_topic, partition, at_ms)], timeout=15
            )[0]
            for partition, at_ms in asked
        ]
    finally:
        consumer.close()
    assert [tp.error for tp in found] == [None] * len(asked)
    # No record at or after the time: -1 (OFFSET_END), the log's end.
    assert [tp.offset for tp in found] == [4, 5, 0, -1, -1]


def test_a_topic_with_a_short_retention_really_loses_its_old_records(
    isolated_settings: Settings,
) -> None:
    """Retention by time: records older than retention.ms go once their segment is closed
    (the stack's broker checks every 5 s); the log start offset moves past them."""
    settings = isolated_settings
    spec = TopicSpec(
        name=f"{settings.events_topic}.short",
        partitions=1,
        cleanup_policy="delete",
        retention_ms=1000,
        purpose="test: a short retention",
        segment_ms=500,
    )
    assert spec.retention_ms < DAY_MS
    apply_topics(settings, [spec])
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all"})
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "retention"})

    def produce(count: int) -> None:
        for _ in range(count):
            producer.produce(spec.name, value=b"old", key=b"k")
        assert producer.flush(30) == 0

    def watermarks() -> tuple[int, int]:
        low, high = consumer.get_watermark_offsets(TopicPartition(spec.name, 0), timeout=10)
        return int(low), int(high)

    try:
        produce(20)
        assert watermarks() == (0, 20)
        time.sleep(1.5)  # older than retention.ms and segment.ms
        produce(1)  # appending rolls the aged segment, which retention may then delete

        def gone() -> bool:
            produce(1)
            return watermarks()[0] >= 20

        wait_for(gone, 60, "the old records to be deleted", on_fail=lambda: str(watermarks()))
        low, high = watermarks()
        assert 20 <= low <= high
    finally:
        consumer.close()
        delete_topics(settings, [spec])


def reads(store: Store, users: list[str]) -> bool:
    try:
        store.state(set(users))
    except NoHostAvailable:
        return False
    return True


@pytest.fixture(autouse=True)
def _servers_are_up_afterwards() -> Iterator[None]:
    """A restart test that failed half-way must not leave the shared stack down."""
    yield
    config = load_config()
    for service in (KafkaService(config), CassandraService(config)):
        if not service.is_running():
            service.start()
            service.wait_ready(RESTART_READY_S)
