"""`signals replay` and `signals backfill` on the real broker, Redis and CQL server: exact
event-time boundaries, every record once (also after an interruption), a topic copy that
keeps keys, values, timestamps and headers, bad requests refused with one line and
nothing written, an isolated what-if run equal to the live one, and a backfill that
equals the offline computation and changes nothing when run again."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from confluent_kafka import KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from infra.namespace import drop, provision, whatif_settings
from jobs.backfill import backfill
from jobs.event_log import counted_events
from jobs.replay import (
    ParquetSink,
    ReplayError,
    ReplayRequest,
    TopicSink,
    replay_consumer,
    replay_to_parquet,
    replay_to_topic,
    run_pipeline,
)
from jobs.replay_files import load_replay, replay_manifest
from jobs.traffic import TrafficParams, simulate
from schemas.codec import encode_event
from schemas.events import PRODUCT_EVENT_TYPES, Event
from schemas.features import OfflineFeatures
from schemas.replay_layout import EventTimeRange, part_name
from streams.bootstrap import build_feature_store, build_interaction_reader
from streams.settings import Settings
from tests.conftest import ROOT, wait_for
from tests.stack.harness import cql_execute
from tests.stack.test_feature_pipeline import (
    FEATURES_ON,
    applied_up_to_the_end,
    committed_to_the_end,
)
from tests.stack.test_feature_store import assert_product_equal, assert_user_equal

MINUTE_MS = 60_000
BAD_VALUE = b"\x00\x00\x00\x00\x01garbage"


@dataclasses.dataclass(frozen=True)
class Sent:
    """One produced record and where the broker put it."""

    event: Event | None  # None: the corrupt record
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes
    headers: list[tuple[str, bytes]]


def produce(
    settings: Settings,
    events: list[Event],
    *,
    bad_at: tuple[int, ...] = (),
    timestamps: Callable[[Event], int | None] = lambda _e: None,
) -> list[Sent]:
    """Send `events` (and a corrupt record before each index in `bad_at`), each with a
    header; returns every record with its partition, offset and broker timestamp."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 5})
    sent: list[Sent] = []
    pending: list[tuple[Event | None, bytes, list[tuple[str, bytes]]]] = []

    def report(entry: tuple[Event | None, bytes, list[tuple[str, bytes]]]) -> Callable[..., None]:
        def on_delivery(error: KafkaError | None, message: Message) -> None:
            assert error is None, error
            sent.append(
                Sent(
                    entry[0],
                    int(message.partition() or 0),
                    int(message.offset() or 0),
                    message.timestamp()[1],
                    entry[1],
                    entry[2],
                )
            )

        return on_delivery

    for index, event in enumerate(events):
        if index in bad_at:
            pending.append((None, event.user_id.encode(), [("trace", b"bad")]))
        pending.append((event, event.user_id.encode(), [("trace", str(index).encode())]))
    for entry in pending:
        event, key, headers = entry
        stamp = timestamps(event) if event is not None else None
        producer.produce(
            settings.events_topic,
            key=key,
            value=encode_event(event) if event is not None else BAD_VALUE,
            headers=headers,
            on_delivery=report(entry),
            **({"timestamp": stamp} if stamp is not None else {}),
        )
    assert producer.flush(30) == 0
    assert len(sent) == len(pending)
    return sent


def generated(count: int, first_ms: int, last_ms: int, seed: int = 5) -> list[Event]:
    """`count` simulated events with times spread evenly over [first_ms, last_ms]."""
    params = TrafficParams(seed=seed, users=40, products=300, categories=6, rate=50.0)
    events = list(itertools.islice(simulate(params, first_ms), count))
    step = (last_ms - first_ms) / max(count - 1, 1)
    return [
        dataclasses.replace(e, event_time_ms=int(first_ms + i * step)) for i, e in enumerate(events)
    ]


@pytest.fixture
def window() -> tuple[int, int]:
    """A range an hour ago, half an hour long."""
    now = int(time.time() * 1000)
    return now - 60 * MINUTE_MS, now - 30 * MINUTE_MS


def boundary_events(start: int, end: int) -> list[Event]:
    """Events around and exactly at both boundaries, and a wide spread outside them."""
    spread = generated(300, start - 10 * MINUTE_MS, end + 10 * MINUTE_MS)
    at = [start - 1, start, start + 1, end - 1, end, end + 1]
    exact = [dataclasses.replace(e, event_time_ms=t) for e, t in zip(spread[:6], at, strict=True)]
    return exact + spread[6:]


def expected_ids(sent: list[Sent], start: int, end: int) -> set[tuple[str, int, int]]:
    return {
        (s.event.event_id, s.partition, s.offset)
        for s in sent
        if s.event is not None and start <= s.event.event_time_ms < end
    }


def test_parquet_holds_exactly_the_range_with_exact_boundaries(
    provisioned: Settings, tmp_path: Path, window: tuple[int, int]
) -> None:
    start, end = window
    sent = produce(provisioned, boundary_events(start, end), bad_at=(50, 120))
    expected = expected_ids(sent, start, end)
    times = {s.event.event_time_ms for s in sent if s.event is not None}
    assert {start, end - 1, end, start - 1} <= times
    request = ReplayRequest(provisioned.events_topic, EventTimeRange(start, end))
    out = tmp_path / "replay"
    summary = replay_to_parquet(
        provisioned.kafka_bootstrap, request, out, progress=False, chunk_records=40
    )

    frame = load_replay(out)
    found = set(
        zip(frame["event_id"], frame["kafka_partition"], frame["kafka_offset"], strict=True)
    )
    assert found == expected and len(frame) == len(expected)
    assert frame["event_time_ms"].min() >= start and frame["event_time_ms"].max() < end
    assert start in set(frame["event_time_ms"]) and end - 1 in set(frame["event_time_ms"])
    assert end not in set(frame["event_time_ms"])
    by_id = {s.event.event_id: s for s in sent if s.event is not None}
    for row in frame.head(50).to_dict("records"):
        record = by_id[row["event_id"]]
        assert record.event is not None
        assert row["user_id"] == record.event.user_id
        assert row["event_type"] == record.event.event_type.value
        assert row["kafka_timestamp_ms"] == record.timestamp_ms
        assert row["product_id"] == record.event.product_id
        assert row["date"] == time.strftime("%Y-%m-%d", time.gmtime(row["event_time_ms"] / 1000))
    assert summary.selected == len(expected)
    assert sum(c.selected for c in summary.partitions.values()) == len(expected)

    # The corrupt records are in the error report with where they were, not in the output.
    bad = {(s.partition, s.offset) for s in sent if s.event is None}
    reported = [
        json.loads(line)
        for path in sorted((out / "_errors").glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    assert {(r["partition"], r["offset"]) for r in reported} == bad
    assert summary.errors == 2

    # DuckDB reads the same folder with hive partitioning.
    [(count, types)] = duckdb.sql(
        f"select count(*), count(distinct event_type) from read_parquet('{out}/**/*.parquet', "
        "hive_partitioning=true)"
    ).fetchall()
    assert count == len(expected) and types == len(set(frame["event_type"]))


def test_an_interrupted_parquet_replay_resumes_without_duplicates(
    provisioned: Settings, tmp_path: Path, window: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    start, end = window
    sent = produce(provisioned, generated(600, start, end - 1))
    expected = expected_ids(sent, start, end)
    request = ReplayRequest(provisioned.events_topic, EventTimeRange(start, end))
    out = tmp_path / "replay"
    real_write = ParquetSink._write_chunk
    calls = itertools.count()

    def crash_on_the_fourth(self: ParquetSink, partition: int, after: int) -> None:
        if next(calls) == 3:
            # What a crash half way through a chunk leaves: a file no manifest names.
            stray = out / "date=2000-01-01/event_type=view" / part_name(0, 0, 1)
            stray.parent.mkdir(parents=True, exist_ok=True)
            stray.write_bytes(b"partial")
            raise KeyboardInterrupt
        real_write(self, partition, after)

    monkeypatch.setattr(ParquetSink, "_write_chunk", crash_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        replay_to_parquet(
            provisioned.kafka_bootstrap, request, out, progress=False, chunk_records=50
        )
    partial = replay_manifest(out)
    assert len(partial.chunks) == 3 and not partial.finished
    monkeypatch.setattr(ParquetSink, "_write_chunk", real_write)

    summary = replay_to_parquet(
        provisioned.kafka_bootstrap, request, out, progress=False, chunk_records=50
    )
    frame = load_replay(out)
    assert len(frame) == len(expected) == summary.selected
    assert (
        set(zip(frame["event_id"], frame["kafka_partition"], frame["kafka_offset"], strict=True))
        == expected
    )
    assert not (out / "date=2000-01-01").exists(), "the interrupted chunk's file is gone"
    assert replay_manifest(out).finished

    # Run again when finished: nothing changes.
    files = sorted(p.relative_to(out) for p in out.rglob("*.parquet"))
    again = replay_to_parquet(provisioned.kafka_bootstrap, request, out, progress=False)
    assert again.selected == len(expected)
    assert sorted(p.relative_to(out) for p in out.rglob("*.parquet")) == files


def read_committed(settings: Settings, topic: str) -> dict[int, list[tuple[Any, ...]]]:
    """Every committed record of `topic`: (key, value, timestamp, headers) per partition."""
    consumer = replay_consumer(settings.kafka_bootstrap)
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        found: dict[int, list[tuple[Any, ...]]] = {p: [] for p in partitions}
        at_end: set[int] = set()
        deadline = time.monotonic() + 60
        while len(at_end) < len(partitions) and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.5):
                p = int(message.partition() or 0)
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(p)
                    continue
                found[p].append(
                    (message.key(), message.value(), message.timestamp()[1], message.headers())
                )
        assert len(at_end) == len(partitions), "the copy could not be read to its end"
        return found
    finally:
        consumer.close()


def test_a_topic_copy_keeps_everything_and_resumes_once(
    provisioned: Settings, tmp_path: Path, window: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Record timestamps set to the event times (as a producer could): the copy keeps them,
    the keys, values and headers, in the same partitions, each record once even though
    the first run was interrupted."""
    start, end = window
    events = generated(500, start - 5 * MINUTE_MS, end + 5 * MINUTE_MS)
    sent = produce(provisioned, events, bad_at=(7,), timestamps=lambda e: e.event_time_ms)
    target = f"{provisioned.events_topic}.copy"
    request = ReplayRequest(provisioned.events_topic, EventTimeRange(start, end))
    errors = tmp_path / "errors.jsonl"
    real_add = TopicSink.add
    calls = itertools.count()

    def crash_on_the_third(self: TopicSink, *args: Any) -> None:
        if next(calls) == 2:
            # A crash half way through a transaction (nothing aborts it here): the next
            # run's producer fences it, and no read_committed reader ever sees it.
            self.producer.begin_transaction()
            self.producer.produce(target, value=b"never committed", partition=0)
            self.producer.flush(10)
            raise KeyboardInterrupt
        real_add(self, *args)

    admin = AdminClient({"bootstrap.servers": provisioned.kafka_bootstrap})
    try:
        monkeypatch.setattr(TopicSink, "add", crash_on_the_third)
        with pytest.raises(KeyboardInterrupt):
            replay_to_topic(
                provisioned.kafka_bootstrap, request, target, errors_path=errors, progress=False
            )
        monkeypatch.setattr(TopicSink, "add", real_add)
        summary = replay_to_topic(
            provisioned.kafka_bootstrap, request, target, errors_path=errors, progress=False
        )
        again = replay_to_topic(
            provisioned.kafka_bootstrap, request, target, errors_path=errors, progress=False
        )
        copied = read_committed(provisioned, target)
    finally:
        admin.delete_topics([target], request_timeout=30)[target].result()

    want: dict[int, list[tuple[Any, ...]]] = {p: [] for p in copied}
    for s in sorted(sent, key=lambda s: (s.partition, s.offset)):
        if s.event is not None and start <= s.event.event_time_ms < end:
            want[s.partition].append((s.key, encode_event(s.event), s.timestamp_ms, s.headers))
    assert copied == want
    assert sum(len(v) for v in want.values()) > 100
    assert summary.selected == sum(len(v) for v in want.values())
    assert again.selected == summary.selected, "a finished copy copies nothing more"
    reported = [json.loads(line) for line in errors.read_text().splitlines()]
    bad = [s for s in sent if s.event is None]
    assert {(r["partition"], r["offset"]) for r in reported} == {
        (s.partition, s.offset) for s in bad
    }


def run_replay_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", "replay", "--no-progress", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_bad_requests_get_one_line_and_write_nothing(
    provisioned: Settings, isolated_env: dict[str, str], tmp_path: Path, window: tuple[int, int]
) -> None:
    import os  # noqa: PLC0415

    start, end = window
    sent = produce(provisioned, generated(200, start, end))
    env = {**os.environ, **isolated_env}
    out = tmp_path / "out"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cases = [
        (["--start", str(start), "--end", str(start)], out, "empty"),
        (["--start", str(end), "--end", str(start)], out, "end is before start"),
        (
            ["--topic", "no.such.topic", "--start", str(start), "--end", str(end)],
            out,
            "does not exist",
        ),
        (["--start", str(start), "--end", str(end)], blocker / "sub", "cannot write"),
        (["--offsets", "0:0-999999"], out, "outside the log"),
        (["--start", str(start), "--end", str(end), "--partitions", "0,99"], out, "no partition"),
    ]
    for args, folder, message in cases:
        done = run_replay_cli(env, *args, "--to-parquet", str(folder))
        assert done.returncode != 0, (args, done.stdout)
        assert "Traceback" not in done.stderr
        errors = [line for line in done.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and message in errors[0], (args, done.stderr)
        assert not folder.exists(), f"{args} wrote {folder}"

    # Records deleted by retention: a range reaching before the oldest record is refused.
    admin = AdminClient({"bootstrap.servers": provisioned.kafka_bootstrap})
    first = min(s.partition for s in sent)
    deleted = admin.delete_records([TopicPartition(provisioned.events_topic, first, 5)])
    for future in deleted.values():
        future.result(30)
    done = run_replay_cli(env, "--start", str(start), "--end", str(end), "--to-parquet", str(out))
    assert done.returncode != 0 and "retention" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def _last_k_everywhere(settings: Settings, users: list[str]) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        reader = build_interaction_reader(settings)
        try:
            return {
                user: (await reader.last_k_many(user, sorted(PRODUCT_EVENT_TYPES), 100)).items
                for user in users
            }
        finally:
            await reader.close()

    return asyncio.run(read())


def _features(settings: Settings, users: list[str], products: list[str], at: int) -> Any:
    async def read() -> Any:
        store = build_feature_store(settings)
        try:
            return (
                [await store.user_features(u, at) for u in users],
                await store.product_features(products, at),
            )
        finally:
            await store.close()

    return asyncio.run(read())


@pytest.fixture
def whatif(provisioned: Settings) -> Iterator[Callable[[str], Settings]]:
    made: list[Settings] = []

    def make(name: str) -> Settings:
        namespace = whatif_settings(provisioned, name)
        made.append(namespace)
        return namespace

    yield make
    for namespace in made:
        drop(namespace)


def test_a_whatif_pipeline_run_equals_the_live_run(
    provisioned: Settings,
    isolated_env: dict[str, str],
    worker: Callable[..., Any],
    whatif: Callable[[str], Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same events through the live worker and through `--to-pipeline`: every user's
    last-k (from whichever tier holds it) and every feature are equal, and the live
    namespace is untouched by the what-if run."""
    for key, value in FEATURES_ON.items():
        monkeypatch.setenv(key, value)
    settings = provisioned.model_copy(update={"features_enabled": True})
    now = int(time.time() * 1000)
    events = generated(1500, now - 40 * MINUTE_MS, now - MINUTE_MS, seed=11)
    produce(settings, events)
    with worker({**isolated_env, **FEATURES_ON}) as live:
        wait_for(applied_up_to_the_end(settings), 90, "the live run", on_fail=live.log_text)
        wait_for(committed_to_the_end(settings), 30, "live commits", on_fail=live.log_text)
    users = sorted({e.user_id for e in events})
    products = sorted({e.product_id for e in events if e.product_id})
    live_state = _last_k_everywhere(settings, users)
    newest = max(e.event_time_ms for e in events)
    live_features = _features(settings, users, products, newest)
    live_keys = _redis_keys(settings)

    namespace = whatif("same")
    request = ReplayRequest(settings.events_topic, EventTimeRange(now - 3_600_000, now))
    summary = run_pipeline(settings, request, "same", tmp_path / "errors.jsonl", progress=False)
    assert summary.selected == len(events)

    assert _last_k_everywhere(namespace, users) == live_state
    what_users, what_products = _features(namespace, users, products, newest)
    for online, offline in zip(what_users, live_features[0], strict=True):
        assert_user_equal(online, offline)
    for online, offline in zip(what_products, live_features[1], strict=True):
        assert_product_equal(online, offline)
    assert _redis_keys(settings) == live_keys, "the what-if run wrote into the live namespace"
    assert any(live_state[u] for u in users)


def _redis_keys(settings: Settings) -> dict[bytes, Any]:
    """Every key of the namespace with its value (by type), for equality checks."""
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(settings.redis_url)
    try:
        found: dict[bytes, Any] = {}
        for key in client.scan_iter(match=f"{settings.redis_key_prefix}:*", count=1000):
            kind = client.type(key)
            if kind == b"hash":
                found[key] = client.hgetall(key)
            elif kind == b"zset":
                found[key] = client.zrange(key, 0, -1, withscores=True)
            elif kind == b"string":
                found[key] = client.get(key)
            else:
                found[key] = kind
        return found
    finally:
        client.close()


def _cold_rows(settings: Settings) -> dict[str, list[Any]]:
    return {
        table: sorted(
            map(tuple, cql_execute(settings, f"SELECT * FROM {settings.cql_keyspace}.{table}"))
        )
        for table in ("lastk_by_user", "history_by_user")
    }


def test_a_backfill_equals_the_offline_computation_and_changes_nothing_twice(
    provisioned: Settings,
    whatif: Callable[[str], Settings],
    tmp_path: Path,
) -> None:
    now = int(time.time() * 1000)
    events = generated(1200, now - 50 * MINUTE_MS, now - MINUTE_MS, seed=13)
    produce(provisioned, events)
    out = tmp_path / "replay"
    request = ReplayRequest(provisioned.events_topic, EventTimeRange(now - 3_600_000, now))
    replay_to_parquet(provisioned.kafka_bootstrap, request, out, progress=False)
    target = whatif("backfill")
    provision(target)

    first = backfill(target, out, progress=False)
    with_items = {e.user_id for e in events if e.product_id}
    assert first.events == len(events) and first.snapshots >= len(with_items)
    redis_after_one, cold_after_one = _redis_keys(target), _cold_rows(target)
    second = backfill(target, out, progress=False)
    assert second.events == first.events
    assert _redis_keys(target) == redis_after_one, "a second backfill changed the features"
    assert _cold_rows(target) == cold_after_one, "a second backfill changed the cold tier"
    # The same from the topic range instead of the folder: still nothing changes.
    backfill(target, request, progress=False)
    assert _redis_keys(target) == redis_after_one
    assert _cold_rows(target) == cold_after_one

    log, _invalid = counted_events(
        provisioned.kafka_bootstrap, provisioned.events_topic, provisioned.admission_limits()
    )
    offline = OfflineFeatures(log, target.feature_config())
    newest = max(e.event_time_ms for e in events)
    users = sorted({e.user_id for e in events})
    products = sorted({e.product_id for e in events if e.product_id})
    online_users, online_products = _features(target, users, products, newest)
    for user, online in zip(users, online_users, strict=True):
        assert_user_equal(online, offline.user(user, newest))
    for product, online in zip(products, online_products, strict=True):
        assert_product_equal(online, offline.product(product, newest))

    # The cold tier holds each user's final last-k (the newest k per type of their events).
    last = _last_k_everywhere(target, users)
    for user in users[:10]:
        mine = [e for e in events if e.user_id == user and e.product_id]
        for kind, items in last[user].items():
            newest_per_product: dict[str, int] = {}
            for e in mine:
                if e.event_type == kind and e.product_id is not None:
                    newest_per_product[e.product_id] = max(
                        e.event_time_ms, newest_per_product.get(e.product_id, 0)
                    )
            ranked = sorted(newest_per_product.items(), key=lambda i: (i[1], i[0]), reverse=True)
            assert items == ranked[: len(items)]
            assert len(items) == min(len(ranked), target.last_k[kind])


def test_replay_refuses_a_folder_holding_another_replay(
    provisioned: Settings, tmp_path: Path, window: tuple[int, int]
) -> None:
    start, end = window
    produce(provisioned, generated(50, start, end - 1))
    out = tmp_path / "replay"
    first = ReplayRequest(provisioned.events_topic, EventTimeRange(start, end))
    replay_to_parquet(provisioned.kafka_bootstrap, first, out, progress=False)
    other = ReplayRequest(provisioned.events_topic, EventTimeRange(start, end - 1))
    with pytest.raises(ReplayError, match="holds another replay"):
        replay_to_parquet(provisioned.kafka_bootstrap, other, out, progress=False)
