"""`signals replay`: read an events topic over an exact event-time range (or explicit
offsets) and write it to Parquet, to another topic, or into an isolated pipeline run.

Which records a range selects, and the Parquet layout, are the contract in
`schemas.replay_layout`. The reader is its own consumer: it assigns partitions (never
joins a group) and never commits to a live group, so a live worker is not disturbed.

- Parquet (`ParquetSink`): chunks per partition, a manifest replaced atomically after
  each chunk; an interrupted run resumes without duplicates (see the layout's docstring).
- Another topic (`TopicSink`): keys, values, timestamps and headers copied into the
  same partition numbers, in Kafka transactions that also commit the replay's progress
  (source offsets, to a consumer group of its own derived from the request): an
  interrupted copy resumes where its last transaction ended, and a reader with
  `isolation.level=read_committed` (the worker's) sees every record once.
- An isolated pipeline run (`run_pipeline`): the range copied into a namespace's own
  events topic (`infra.namespace`), then the real `signals worker` run under that
  namespace until it has committed every offset.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from tqdm import tqdm

from schemas.avro_columns import DecodedColumns, decode_event_columns
from schemas.codec import decode_event
from schemas.erasure import ErasureFilter, InvalidForget, decode_forget, is_forget
from schemas.events import Event, EventType, InvalidEvent
from schemas.replay_layout import (
    MANIFEST_NAME,
    PARQUET_SCHEMA,
    Chunk,
    EventTimeRange,
    Manifest,
    errors_name,
    part_name,
    partition_folder,
    utc_date,
)
from sinks.connectivity import KafkaTarget, kafka_config, librdkafka_base, with_servers
from streams.settings import Settings, state_dir

#: Records per consume call, and per Parquet chunk of one partition.
CONSUME_BATCH = 10_000
CHUNK_RECORDS = 500_000
#: Records of one partition decoded together on the way to Parquet.
DECODE_BATCH = 16_384
#: Chunks handed to the Parquet writer thread and not yet written, at most.
WRITES_AHEAD = 2
#: No record from partitions that still have some to give for this long: give up.
STALL_S = 60.0
DEFAULT_LATENESS_S = 3600.0
DAY_MS = 86_400_000


class ReplayError(Exception):
    """A bad request or an unusable topic or folder: one line for the user, nothing written."""


@dataclass(frozen=True)
class ReplayRequest:
    """What to replay: an event-time range or explicit offsets, from some partitions."""

    topic: str
    time_range: EventTimeRange | None = None
    offsets: dict[int, tuple[int, int]] | None = None
    partitions: list[int] | None = None  # None: all
    lateness_ms: int = int(DEFAULT_LATENESS_S * 1000)
    future_skew_ms: int = 300_000
    to_end: bool = False

    def __post_init__(self) -> None:
        if (self.time_range is None) == (self.offsets is None):
            raise ReplayError("give either --start and --end or --offsets")

    def describe(self) -> dict[str, Any]:
        """The request as JSON-able data: what a resumed run must match."""
        data: dict[str, Any] = {"topic": self.topic, "partitions": self.partitions}
        if self.time_range is not None:
            data |= {
                "start_ms": self.time_range.start_ms,
                "end_ms": self.time_range.end_ms,
                "lateness_ms": self.lateness_ms,
                "future_skew_ms": self.future_skew_ms,
                "to_end": self.to_end,
            }
        else:
            data["offsets"] = {str(p): list(r) for p, r in sorted((self.offsets or {}).items())}
        return data

    def digest(self) -> str:
        text = json.dumps(self.describe(), sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()

    def selects(self, event_time_ms: int) -> bool:
        return self.time_range is None or self.time_range.contains(event_time_ms)


@dataclass
class PartitionCounts:
    """What one partition's scan found."""

    scanned_from: int
    scanned_to: int
    selected: int = 0
    outside: int = 0
    errors: int = 0
    max_lateness_ms: int = 0
    near_the_edge: int = 0  # in-range events in the last tenth of the lateness window
    erased: int = 0  # in-range events of erased users, left out (`schemas.erasure`)
    unread_after: int = 0  # records after the scan window (sent later than the lateness)


@dataclass
class ReplaySummary:
    partitions: dict[int, PartitionCounts] = field(default_factory=dict)
    seconds: float = 0.0
    output: str = ""

    @property
    def selected(self) -> int:
        return sum(c.selected for c in self.partitions.values())

    @property
    def errors(self) -> int:
        return sum(c.errors for c in self.partitions.values())

    @property
    def scanned(self) -> int:
        return sum(c.scanned_to - c.scanned_from for c in self.partitions.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "seconds": round(self.seconds, 3),
            "selected": self.selected,
            "errors": self.errors,
            "partitions": {str(p): asdict(c) for p, c in sorted(self.partitions.items())},
        }


# --- reading ---------------------------------------------------------------------------


def replay_consumer(bootstrap: KafkaTarget, group_id: str | None = None) -> Consumer:
    """An assign-only consumer: `group_id` is never joined (the replay's own progress
    group for a topic copy; a random one otherwise) and nothing is committed by it."""
    return Consumer(
        {
            **librdkafka_base(bootstrap),
            "group.id": group_id or f"feedsignals-replay-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
            "queued.max.messages.kbytes": 256 * 1024,
        }
    )


def plan_scan(consumer: Consumer, request: ReplayRequest) -> dict[int, tuple[int, int]]:
    """Per partition, the offsets `[from, to)` to read. Raises ReplayError for an unknown
    topic or partition, a range outside retention, or offsets outside the log."""
    metadata = consumer.list_topics(request.topic, timeout=10).topics.get(request.topic)
    if metadata is None or metadata.error is not None:
        raise ReplayError(f"topic {request.topic!r} does not exist")
    known = sorted(metadata.partitions)
    chosen = request.partitions if request.partitions is not None else known
    if request.offsets is not None:
        chosen = sorted(request.offsets) if request.partitions is None else chosen
        missing_ranges = [p for p in chosen if p not in request.offsets]
        if missing_ranges:
            raise ReplayError(f"--offsets gives no range for partition(s) {missing_ranges}")
    unknown = [p for p in chosen if p not in metadata.partitions]
    if unknown:
        raise ReplayError(f"topic {request.topic!r} has no partition(s) {unknown} (it has {known})")
    marks = {
        p: consumer.get_watermark_offsets(TopicPartition(request.topic, p), timeout=10)
        for p in chosen
    }
    if request.offsets is not None:
        for p in chosen:
            low, high = marks[p]
            first, end = request.offsets[p]
            if first < low or end > high:
                raise ReplayError(
                    f"partition {p}: offsets {first}-{end} are outside the log ({low}-{high} "
                    "is retained)"
                )
        return {p: request.offsets[p] for p in chosen}
    assert request.time_range is not None
    scan_from, scan_to = request.time_range.scan_window(request.future_skew_ms, request.lateness_ms)
    starts = _offsets_for_times(consumer, request.topic, chosen, scan_from, marks)
    ends = (
        {p: marks[p][1] for p in chosen}
        if request.to_end
        else _offsets_for_times(consumer, request.topic, chosen, scan_to, marks)
    )
    for p in chosen:
        low = marks[p][0]
        if (
            low > 0
            and starts[p] <= low
            and _timestamp_at(consumer, request.topic, p, low) > scan_from
        ):
            raise ReplayError(
                f"the range starts before partition {p}'s retention (its oldest record, offset "
                f"{low}, is newer than {scan_from} ms): records in the range were deleted"
            )
    return {p: (starts[p], max(starts[p], ends[p])) for p in chosen}


def _offsets_for_times(
    consumer: Consumer,
    topic: str,
    partitions: list[int],
    at_ms: int,
    marks: Mapping[int, tuple[int, int]],
) -> dict[int, int]:
    """The earliest offset whose record timestamp is >= `at_ms` (every record before it is
    older); the partition's end when there is none."""
    found = consumer.offsets_for_times(
        [TopicPartition(topic, p, max(at_ms, 0)) for p in partitions], timeout=10
    )
    result = {}
    for tp in found:
        if tp.error is not None:
            raise ReplayError(f"partition {tp.partition}: offsets for times failed ({tp.error})")
        result[tp.partition] = tp.offset if tp.offset >= 0 else marks[tp.partition][1]
    return result


def _timestamp_at(consumer: Consumer, topic: str, partition: int, offset: int) -> int:
    consumer.assign([TopicPartition(topic, partition, offset)])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                return int(message.timestamp()[1])
        raise ReplayError(f"partition {partition}: could not read offset {offset}")
    finally:
        consumer.unassign()


def read_partitions(
    consumer: Consumer,
    topic: str,
    scan: Mapping[int, tuple[int, int]],
    on_progress: Callable[[int], None] = lambda _n: None,
    stall_s: float = STALL_S,
) -> Iterator[tuple[int, list[Message], int, bool]]:
    """Consume every partition's `[from, to)`. Yields (partition, its messages of one
    consume call in offset order, the offset after them, whether the partition is done)."""
    remaining = {p: (first, end) for p, (first, end) in scan.items() if end > first}
    for p, (first, end) in scan.items():
        if end <= first:
            yield p, [], first, True
    if not remaining:
        return
    position = {p: first for p, (first, _end) in remaining.items()}
    consumer.assign([TopicPartition(topic, p, first) for p, (first, _end) in remaining.items()])
    last_progress = time.monotonic()
    try:
        while remaining:
            messages = consumer.consume(CONSUME_BATCH, timeout=0.5)
            if not messages:
                if time.monotonic() - last_progress > stall_s:
                    raise ReplayError(
                        f"no records from partition(s) {sorted(remaining)} of {topic!r} for "
                        f"{stall_s:.0f}s (is the broker up?)"
                    )
                continue
            last_progress = time.monotonic()
            by_partition, eof = _by_partition(messages, remaining, topic)
            for p in list(by_partition) + [p for p in eof if p not in by_partition]:
                end = remaining[p][1]
                batch = by_partition.get(p, [])
                if batch and _offset(batch[-1]) >= end:  # only the last call reaches past
                    batch = [m for m in batch if _offset(m) < end]
                after = _offset(batch[-1]) + 1 if batch else position[p]
                done = (
                    after >= end
                    or (p in eof and eof[p] >= end)
                    or batch is not by_partition.get(p, batch)
                )
                if done:
                    after = end
                on_progress(after - position[p])
                position[p] = after
                if done:
                    del remaining[p]
                    consumer.incremental_unassign([TopicPartition(topic, p)])
                yield p, batch, after, done
    finally:
        consumer.unassign()


def _by_partition(
    messages: list[Message], remaining: Mapping[int, object], topic: str
) -> tuple[dict[int, list[Message]], dict[int, int]]:
    """A consume call's records per partition still being read, and the partitions that
    reported their end (with the end offset). Raises ReplayError for a read error."""
    by_partition: dict[int, list[Message]] = defaultdict(list)
    eof: dict[int, int] = {}
    for message in messages:
        p = cast("int", message.partition())
        if p not in remaining:
            continue
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                eof[p] = _offset(message)
                continue
            raise ReplayError(f"reading {topic!r} partition {p} failed: {error.str()}")
        by_partition[p].append(message)
    return by_partition, eof


# --- sinks -----------------------------------------------------------------------------


class ReplaySink(Protocol):
    def resume(self, scan: dict[int, tuple[int, int]]) -> dict[int, tuple[int, int]]:
        """The scan left to do (a resumed run continues after its completed work)."""
        ...

    def add(self, partition: int, messages: list[Message], after: int, done: bool) -> None: ...

    def finish(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class Decoded:
    """A chunk of one partition, split three ways."""

    tables: dict[tuple[str, str], list[pa.Table]] = field(default_factory=lambda: defaultdict(list))
    selected: list[tuple[Message, Event]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    outside: int = 0


class Selector:
    """Decodes records, applies the range rule and the erasure rule, counts per partition.

    Forget records (`schemas.erasure`) are requests, not events: they are never copied
    or written, and the users they name join `erasures` for the rest of the read, so an
    erasure the cold tier has not recorded yet is still honoured.
    """

    def __init__(
        self,
        request: ReplayRequest,
        summary: ReplaySummary,
        erasures: ErasureFilter | None = None,
    ) -> None:
        self.request = request
        self.summary = summary
        self.erasures = erasures if erasures is not None else ErasureFilter()
        self.edge_ms = (
            request.time_range.end_ms + request.lateness_ms - request.lateness_ms // 10
            if request.time_range is not None and not request.to_end
            else None
        )
        self._days: dict[int, str] = {}

    def split(self, partition: int, messages: list[Message], into: Decoded) -> None:
        """Record by record: the selected messages with their events (a topic copy, the
        backfill)."""
        counts = self.summary.partitions[partition]
        selects = self.request.selects
        edge = self.edge_ms
        messages = self._without_forgets(messages)
        keeps = self.erasures.keeps
        for message in messages:
            offset = _offset(message)
            timestamp_ms = message.timestamp()[1]
            try:
                event = decode_event(message.value())
            except InvalidEvent as exc:
                counts.errors += 1
                into.errors.append(
                    {
                        "partition": partition,
                        "offset": offset,
                        "timestamp_ms": timestamp_ms,
                        "reason": f"{exc.field}: {exc.reason}",
                    }
                )
                continue
            time_ms = event.event_time_ms
            if not selects(time_ms):
                counts.outside += 1
                into.outside += 1
                continue
            if not keeps(event.user_id, time_ms):
                counts.erased += 1
                continue
            counts.selected += 1
            lateness = timestamp_ms - time_ms
            counts.max_lateness_ms = max(counts.max_lateness_ms, lateness)
            if edge is not None and timestamp_ms >= edge:
                counts.near_the_edge += 1
            into.selected.append((message, event))

    def split_columns(self, partition: int, messages: list[Message], into: Decoded) -> None:
        """The same selection in columns, for Parquet: the batch decoded at once
        (`schemas.avro_columns`), the records that fast path leaves decoded one by one;
        the selected events grouped into tables per (UTC day, type)."""
        messages = self._without_forgets(messages)
        if not messages:
            return
        counts = self.summary.partitions[partition]
        values = [m.value() for m in messages]
        offsets = np.array([m.offset() for m in messages], dtype=np.int64)
        stamps = np.array([m.timestamp()[1] for m in messages], dtype=np.int64)
        plain = values if None not in values else [v or b"" for v in values]
        fast = decode_event_columns(cast("list[bytes]", plain))
        tables = [_fast_table(fast, partition, offsets, stamps)]
        slow_rows = []
        for i in np.flatnonzero(~fast.accepted).tolist():
            try:
                event = decode_event(values[i])
            except InvalidEvent as exc:
                counts.errors += 1
                into.errors.append(
                    {
                        "partition": partition,
                        "offset": int(offsets[i]),
                        "timestamp_ms": int(stamps[i]),
                        "reason": f"{exc.field}: {exc.reason}",
                    }
                )
                continue
            slow_rows.append(_row(event, partition, int(offsets[i]), int(stamps[i])))
        if slow_rows:
            tables.append(_rows_table(slow_rows))
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        times = table["event_time_ms"].to_numpy()
        if self.request.time_range is not None:
            inside = (times >= self.request.time_range.start_ms) & (
                times < self.request.time_range.end_ms
            )
            outside = int(len(times) - inside.sum())
            if outside:
                counts.outside += outside
                into.outside += outside
                table, times = table.filter(pa.array(inside)), times[inside]
        if self.erasures and len(table):
            table, times = self._without_erased(table, times, counts)
        if not len(table):
            return
        counts.selected += len(table)
        lateness = table["kafka_timestamp_ms"].to_numpy() - times
        counts.max_lateness_ms = max(counts.max_lateness_ms, int(lateness.max()))
        if self.edge_ms is not None:
            counts.near_the_edge += int(
                (table["kafka_timestamp_ms"].to_numpy() >= self.edge_ms).sum()
            )
        self._group(table, times, into)

    def _without_forgets(self, messages: list[Message]) -> list[Message]:
        """The messages that are events; the forget requests among them join `erasures`."""
        if not any(m.headers() for m in messages):
            return messages
        events = []
        for message in messages:
            if not is_forget(message.headers()):
                events.append(message)
                continue
            # An unreadable one the worker dead-letters; the replay has nothing to honour.
            with contextlib.suppress(InvalidForget):
                self.erasures.add([decode_forget(message.key(), message.value())])
        return events

    def _without_erased(
        self, table: pa.Table, times: Any, counts: PartitionCounts
    ) -> tuple[pa.Table, Any]:
        """The rows the erasure rule keeps (`schemas.erasure`)."""
        users = table["user_id"]
        suspects = pc.is_in(users, value_set=pa.array(self.erasures.users()))
        rows = np.flatnonzero(suspects.to_numpy(zero_copy_only=False))
        if not len(rows):
            return table, times
        keep = np.ones(len(table), dtype=bool)
        names = users.take(pa.array(rows)).to_pylist()
        for row, user_id in zip(rows.tolist(), names, strict=True):
            keep[row] = self.erasures.keeps(user_id, int(times[row]))
        dropped = int(len(keep) - keep.sum())
        counts.erased += dropped
        return table.filter(pa.array(keep)), times[keep]

    def _group(self, table: pa.Table, times: Any, into: Decoded) -> None:
        """Sort by (day, type) once, then hand out zero-copy slices."""
        types = pc.index_in(table["event_type"], value_set=_TYPE_NAMES).to_numpy()
        keys = (times // DAY_MS) * len(_TYPE_NAMES) + types
        order = np.argsort(keys, kind="stable")
        table = table.take(pa.array(order)).drop_columns(["event_type"])
        keys = keys[order]
        bounds = [0, *(np.flatnonzero(np.diff(keys)) + 1).tolist(), len(keys)]
        for low, high in itertools.pairwise(bounds):
            day_index, type_index = divmod(int(keys[low]), len(_TYPE_NAMES))
            day = self._days.get(day_index)
            if day is None:
                day = self._days[day_index] = utc_date(day_index * DAY_MS)
            into.tables[(day, _TYPE_NAMES[type_index].as_py())].append(table.slice(low, high - low))


_TYPE_NAMES = pa.array([t.value for t in EventType])
#: A batch's fast-path table: the event's fields, the Kafka columns, and `event_type`.
_BATCH_SCHEMA = pa.schema([*PARQUET_SCHEMA, pa.field("event_type", pa.string())])


def _fast_table(fast: DecodedColumns, partition: int, offsets: Any, stamps: Any) -> pa.Table:
    accepted = fast.accepted
    count = int(accepted.sum())
    columns = {
        **fast.arrays,
        "kafka_partition": pa.array(np.full(count, partition, dtype=np.int32)),
        "kafka_offset": pa.array(offsets[accepted]),
        "kafka_timestamp_ms": pa.array(stamps[accepted]),
    }
    return pa.Table.from_arrays([columns[f.name] for f in _BATCH_SCHEMA], schema=_BATCH_SCHEMA)


def _row(event: Event, partition: int, offset: int, timestamp_ms: int) -> tuple[Any, ...]:
    """An event in `_BATCH_SCHEMA`'s column order."""
    return (
        event.event_id,
        event.user_id,
        event.event_time_ms,
        event.platform,
        event.language,
        event.product_id,
        event.category_id,
        event.price_paise,
        event.feed_position,
        event.order_id,
        event.quantity,
        partition,
        offset,
        timestamp_ms,
        event.event_type.value,
    )


def _rows_table(rows: list[tuple[Any, ...]]) -> pa.Table:
    columns = list(zip(*rows, strict=True))
    return pa.Table.from_arrays(
        [pa.array(c, type=f.type) for c, f in zip(columns, _BATCH_SCHEMA, strict=True)],
        schema=_BATCH_SCHEMA,
    )


class ParquetSink:
    """Hive-style Parquet under `folder` (`schemas.replay_layout`), resumable."""

    def __init__(
        self,
        folder: Path,
        request: ReplayRequest,
        selector: Selector,
        chunk_records: int = CHUNK_RECORDS,
    ) -> None:
        self.folder = folder
        self.selector = selector
        self.chunk_records = chunk_records
        self._pending: dict[int, Decoded] = {}
        self._pending_from: dict[int, int] = {}
        self._pending_count: dict[int, int] = defaultdict(int)
        self._next: dict[int, int] = {}
        self._waiting: dict[int, list[Message]] = defaultdict(list)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet")
        self._writes: list[Future[None]] = []
        _check_writable(folder)
        path = folder / MANIFEST_NAME
        if path.exists():
            try:
                self.manifest = Manifest.from_json(path.read_text())
            except (ValueError, KeyError, TypeError) as exc:
                raise ReplayError(f"{path} is not a replay manifest ({exc})") from None
            if self.manifest.request != request.describe():
                raise ReplayError(
                    f"{folder} holds another replay ({self.manifest.request}); choose an empty "
                    "folder, or delete this one"
                )
            self._remove_orphans()
        else:
            if any(folder.iterdir()):
                raise ReplayError(
                    f"{folder} is not empty and holds no replay; choose an empty folder"
                )
            self.manifest = Manifest(request=request.describe())
            self._write_manifest()

    def resume(self, scan: dict[int, tuple[int, int]]) -> dict[int, tuple[int, int]]:
        resumed = self.manifest.resume_offsets({p: first for p, (first, _) in scan.items()})
        self._next = dict(resumed)
        for p, totals in self.manifest.totals().items():
            counts = self.selector.summary.partitions.get(p)
            if counts is not None:
                counts.selected += totals["selected"]
                counts.outside += totals["outside"]
                counts.errors += totals["errors"]
        return {p: (min(resumed[p], end), end) for p, (_first, end) in scan.items()}

    def add(self, partition: int, messages: list[Message], after: int, done: bool) -> None:
        decoded = self._pending.get(partition)
        if decoded is None:
            decoded = self._pending[partition] = Decoded()
            # Where this partition's previous chunk ended (or the resumed start): chunks
            # tile the offsets even across gaps (transaction markers, compaction).
            self._pending_from[partition] = self._next.get(
                partition, _offset(messages[0]) if messages else after
            )
        # A consume call brings a few thousand records spread over the partitions; decoding
        # waits for DECODE_BATCH of one partition, since the columnar decoder's cost per
        # call (a hundred NumPy and Arrow calls) is only small against that many.
        waiting = self._waiting[partition]
        waiting.extend(messages)
        self._pending_count[partition] += len(messages)
        chunk_full = self._pending_count[partition] >= self.chunk_records
        if done or chunk_full or len(waiting) >= DECODE_BATCH:
            self.selector.split_columns(partition, waiting, decoded)
            self._waiting[partition] = []
        if done or chunk_full:
            self._write_chunk(partition, after)

    def finish(self) -> None:
        while self._writes:
            self._writes.pop(0).result()
        self.manifest.finished = True
        self._write_manifest()

    def close(self) -> None:
        """Lets the chunks handed over finish (what they wrote is complete and named)."""
        self._writer.shutdown(wait=True)

    def _write_chunk(self, partition: int, after: int) -> None:
        """Hand the chunk to the writer thread (Parquet encoding releases the GIL, so it
        overlaps the next reads); at most `WRITES_AHEAD` chunks wait for it."""
        decoded = self._pending.pop(partition)
        first = self._pending_from.pop(partition)
        self._pending_count.pop(partition, None)
        self._next[partition] = after
        self._writes.append(self._writer.submit(self._store, partition, first, after, decoded))
        while len(self._writes) > WRITES_AHEAD or (self._writes and self._writes[0].done()):
            self._writes.pop(0).result()  # raises the writer's error here

    def _store(self, partition: int, first: int, after: int, decoded: Decoded) -> None:
        """The chunk's files, then the manifest naming them (one thread: in order)."""
        files = []
        last = max(after - 1, first)
        for (date, event_type), tables in sorted(decoded.tables.items()):
            name = f"{partition_folder(date, event_type)}/{part_name(partition, first, last)}"
            table = pa.concat_tables(tables)
            _atomic(self.folder / name, partial(_write_parquet, table))
            files.append(name)
        if decoded.errors:
            name = errors_name(partition, first, last)
            text = "".join(json.dumps(e) + "\n" for e in decoded.errors)
            _atomic(self.folder / name, partial(_write_text, text))
            files.append(name)
        self.manifest.chunks.append(
            Chunk(
                partition=partition,
                from_offset=first,
                to_offset=after,
                files=files,
                selected=sum(len(t) for tables in decoded.tables.values() for t in tables),
                outside=decoded.outside,
                errors=len(decoded.errors),
            )
        )
        self._write_manifest()

    def _write_manifest(self) -> None:
        text = self.manifest.to_json()
        _atomic(self.folder / MANIFEST_NAME, partial(_write_text, text))

    def _remove_orphans(self) -> None:
        """Files of an interrupted chunk (and temporaries): no completed chunk names them."""
        kept = self.manifest.files() | {MANIFEST_NAME}
        for path in sorted(self.folder.rglob("*"), reverse=True):
            relative = path.relative_to(self.folder).as_posix()
            if path.is_file() and relative not in kept:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()


class TopicSink:
    """Copies selected records into `target` (same partition numbers), transactionally
    with the replay's progress."""

    def __init__(
        self,
        bootstrap: KafkaTarget,
        target: str,
        *,
        request: ReplayRequest,
        selector: Selector,
        consumer: Consumer,
        errors_path: Path,
        target_bootstrap: str | None = None,
    ) -> None:
        self.target = target
        self.request = request
        self.selector = selector
        self.consumer = consumer
        self.errors_path = errors_path
        self.source = request.topic
        self.producer = Producer(
            {
                **with_servers(bootstrap, target_bootstrap),
                "transactional.id": progress_group(request, target),
                "linger.ms": 20,
                "batch.size": 1_000_000,
                "compression.type": "lz4",
            }
        )
        try:
            self.producer.init_transactions(30)  # fences an earlier run with the same id
        except KafkaException as exc:
            raise ReplayError(f"cannot start a transaction on {target!r}: {exc}") from None
        self._in_transaction = False

    def resume(self, scan: dict[int, tuple[int, int]]) -> dict[int, tuple[int, int]]:
        committed = self.consumer.committed(
            [TopicPartition(self.source, p) for p in scan], timeout=10
        )
        done = {tp.partition: tp.offset for tp in committed if tp.offset >= 0}
        for tp in committed:
            counts = self.selector.summary.partitions.get(tp.partition)
            if tp.offset >= 0 and tp.metadata and counts is not None:
                totals = json.loads(tp.metadata)
                counts.selected += totals["selected"]
                counts.outside += totals["outside"]
                counts.errors += totals["errors"]
        return {
            p: (min(max(first, done.get(p, first)), end), end) for p, (first, end) in scan.items()
        }

    def add(self, partition: int, messages: list[Message], after: int, done: bool) -> None:
        decoded = Decoded()
        self.selector.split(partition, messages, decoded)
        self.producer.begin_transaction()
        self._in_transaction = True
        for message, _event in decoded.selected:
            _kind, timestamp_ms = message.timestamp()
            while True:
                try:
                    self.producer.produce(
                        self.target,
                        value=message.value(),
                        key=message.key(),
                        partition=partition,
                        timestamp=timestamp_ms,
                        headers=message.headers(),
                    )
                    break
                except BufferError:
                    self.producer.poll(0.05)
        # Reported before the commit: a crash in between repeats lines, never loses them.
        if decoded.errors:
            with self.errors_path.open("a") as out:
                out.writelines(json.dumps(e) + "\n" for e in decoded.errors)
        counts = self.selector.summary.partitions[partition]
        totals = {"selected": counts.selected, "outside": counts.outside, "errors": counts.errors}
        # The progress and the partition's running totals, committed with the records.
        self.producer.send_offsets_to_transaction(
            [TopicPartition(self.source, partition, after, metadata=json.dumps(totals))],
            self.consumer.consumer_group_metadata(),
            30,
        )
        self.producer.commit_transaction(60)
        self._in_transaction = False

    def finish(self) -> None:
        self.producer.flush(30)

    def close(self) -> None:
        if self._in_transaction:
            with contextlib.suppress(KafkaException):
                self.producer.abort_transaction(10)


def progress_group(request: ReplayRequest, target: str) -> str:
    """The consumer group (and transactional id) holding a topic copy's progress: one per
    request and target, never a live group."""
    return f"feedsignals-replay-{request.digest()}-{target}"


def ensure_target_topic(
    bootstrap: KafkaTarget, source: str, target: str, partitions_needed: int
) -> None:
    """Create `target` with the source's partition count when missing; refuse one with too
    few partitions (records keep their partition numbers)."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # noqa: PLC0415

    admin = AdminClient(librdkafka_base(bootstrap))
    topics = admin.list_topics(timeout=10).topics
    if target == source:
        raise ReplayError("the target topic is the source topic")
    if target in topics:
        have = len(topics[target].partitions)
        if have < partitions_needed:
            raise ReplayError(
                f"topic {target!r} has {have} partitions; records keep their partition "
                f"numbers, so it needs at least {partitions_needed}"
            )
        return
    count = len(topics[source].partitions) if source in topics else partitions_needed
    future = admin.create_topics([NewTopic(target, num_partitions=count, replication_factor=-1)])
    try:
        future[target].result(30)
    except KafkaException as exc:
        raise ReplayError(f"cannot create topic {target!r}: {exc}") from None


# --- running ---------------------------------------------------------------------------


def run_replay(
    consumer: Consumer,
    request: ReplayRequest,
    make_sink: Callable[[Selector], ReplaySink],
    output: str,
    progress: bool = True,
    *,
    erasures: ErasureFilter | None = None,
) -> ReplaySummary:
    """Plan, resume, read and write; returns the per-partition counts."""
    began = time.monotonic()
    scan = plan_scan(consumer, request)
    summary = ReplaySummary(
        partitions={
            p: PartitionCounts(
                first,
                end,
                unread_after=consumer.get_watermark_offsets(
                    TopicPartition(request.topic, p), timeout=10
                )[1]
                - end,
            )
            for p, (first, end) in scan.items()
        },
        output=output,
    )
    selector = Selector(request, summary, erasures)
    sink = make_sink(selector)
    try:
        todo = sink.resume(scan)
        total = sum(end - first for first, end in todo.values())
        with tqdm(
            total=total,
            unit=" records",
            unit_scale=True,
            disable=not progress,
            desc=f"replay {request.topic}",
            dynamic_ncols=True,
        ) as bar:
            for partition, messages, after, done in read_partitions(
                consumer, request.topic, todo, bar.update
            ):
                sink.add(partition, messages, after, done)
        sink.finish()
    finally:
        sink.close()
    summary.seconds = time.monotonic() - began
    return summary


def replay_to_parquet(
    bootstrap: KafkaTarget,
    request: ReplayRequest,
    folder: Path,
    progress: bool = True,
    chunk_records: int = CHUNK_RECORDS,
    *,
    erasures: ErasureFilter | None = None,
) -> ReplaySummary:
    """`erasures`: who was erased (`jobs.forget.load_erasures`); their events up to the
    erasure are left out."""
    consumer = replay_consumer(bootstrap)
    try:
        return run_replay(
            consumer,
            request,
            lambda selector: ParquetSink(folder, request, selector, chunk_records),
            str(folder),
            progress,
            erasures=erasures,
        )
    finally:
        consumer.close()


def replay_to_topic(
    bootstrap: KafkaTarget,
    request: ReplayRequest,
    target: str,
    *,
    errors_path: Path,
    target_bootstrap: str | None = None,
    progress: bool = True,
    erasures: ErasureFilter | None = None,
) -> ReplaySummary:
    consumer = replay_consumer(bootstrap, progress_group(request, target))
    try:
        scan = plan_scan(consumer, request)  # checks the request before anything is created
        ensure_target_topic(
            with_servers(bootstrap, target_bootstrap), request.topic, target, max(scan) + 1
        )
        return run_replay(
            consumer,
            request,
            lambda selector: TopicSink(
                bootstrap,
                target,
                request=request,
                selector=selector,
                consumer=consumer,
                errors_path=errors_path,
                target_bootstrap=target_bootstrap,
            ),
            target,
            progress,
            erasures=erasures,
        )
    finally:
        consumer.close()


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{uuid.uuid4().hex[:6]}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ReplayError(f"cannot write to {folder}: {exc.strerror or exc}") from None


def _offset(message: Message) -> int:
    return cast("int", message.offset())


def _write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path)


def _write_text(text: str, path: Path) -> None:
    path.write_text(text)


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a hidden temporary in the same folder, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def remove_output(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def worker_command() -> list[str]:
    return [sys.executable, "-m", "jobs.cli", "worker", "--loglevel", "warning"]


def run_worker_until_committed(
    env: Mapping[str, str],
    *,
    bootstrap: KafkaTarget,
    topic: str,
    group: str,
    log_path: Path,
    timeout_s: float = 600.0,
    say: Callable[[str], None] = print,
    progress: bool = True,
) -> None:
    """Run `signals worker` with `env` until its group has committed every partition of
    `topic` past its last record, then stop it."""
    ends_consumer = replay_consumer(bootstrap, group)
    try:
        partitions = sorted(ends_consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {p: data_end(ends_consumer, topic, p) for p in partitions}
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                worker_command(), env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            deadline = time.monotonic() + timeout_s
            with tqdm(
                total=sum(ends.values()),
                unit=" offsets",
                desc="what-if worker",
                disable=not progress,
            ) as bar:
                while True:
                    if process.poll() is not None:
                        raise ReplayError(
                            f"the what-if worker exited ({process.returncode}); see {log_path}"
                        )
                    committed = ends_consumer.committed(
                        [TopicPartition(topic, p) for p in partitions], timeout=10
                    )
                    at = {tp.partition: max(tp.offset, 0) for tp in committed}
                    bar.n = sum(min(at[p], ends[p]) for p in partitions)
                    bar.refresh()
                    if all(at[p] >= ends[p] for p in partitions):
                        break
                    if time.monotonic() > deadline:
                        raise ReplayError(
                            f"the what-if worker did not catch up in {timeout_s:.0f}s; "
                            f"see {log_path}"
                        )
                    time.sleep(0.5)
        finally:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        say(f"what-if worker stopped; its log: {log_path}")
    finally:
        ends_consumer.close()


def erasures_or_fail(settings: Settings) -> ErasureFilter:
    """The live pipeline's erasures (`jobs.forget.load_erasures`), as a ReplayError."""
    from jobs.forget import ForgetError, load_erasures  # noqa: PLC0415

    try:
        return load_erasures(settings)
    except ForgetError as exc:
        raise ReplayError(str(exc)) from None


def data_end(consumer: Consumer, topic: str, partition: int) -> int:
    """The offset after the partition's last committed record: below the high watermark
    when the log ends in transaction markers (a topic copy's do), which a consumer never
    receives, so never commits past."""
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
    window = 16
    while True:
        start = max(low, high - window)
        last = None
        consumer.assign([TopicPartition(topic, partition, start)])
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is None:
                    continue
                error = message.error()
                if error is not None and error.code() == KafkaError._PARTITION_EOF:
                    break
                if error is None:
                    last = _offset(message)
            else:
                raise ReplayError(f"could not read {topic!r} partition {partition} to its end")
        finally:
            consumer.unassign()
        if last is not None:
            return last + 1
        if start == low:
            return low
        window *= 8


def run_pipeline(
    settings: Settings,
    request: ReplayRequest,
    name: str,
    errors_path: Path | None = None,
    progress: bool = True,
) -> ReplaySummary:
    """The range into the what-if namespace `name`'s events topic, then the real worker
    under that namespace until it has committed every offset. Live state is never touched:
    every topic, group, key and table the run writes is the namespace's."""
    from infra.namespace import namespace_env, provision, whatif_settings  # noqa: PLC0415

    try:
        namespace = whatif_settings(settings, name)
    except ValueError as exc:
        raise ReplayError(str(exc)) from None
    probe = replay_consumer(kafka_config(settings))
    try:
        plan_scan(probe, request)  # a bad request fails before anything is created
    finally:
        probe.close()
    provision(namespace)
    summary = replay_to_topic(
        kafka_config(settings),
        request,
        namespace.events_topic,
        errors_path=errors_path or Path(f"replay-errors-{name}.jsonl"),
        progress=progress,
        # The live pipeline's erasures: a what-if run never brings an erased user back.
        erasures=erasures_or_fail(settings),
    )
    env = {
        **namespace_env(namespace),
        # Absolute: the worker finds the local stack's addresses from any folder.
        "SIGNALS_STATE_DIR": str(state_dir().resolve()),
        "SIGNALS_FAUST_DATADIR": str(settings.faust_datadir.parent / f"faust-whatif-{name}"),
        "SIGNALS_WORKER_METRICS_PORT": "0",  # a live worker may hold the default port
    }
    log_path = settings.faust_datadir.parent / f"whatif-{name}.log"
    run_worker_until_committed(
        env,
        bootstrap=kafka_config(settings),
        topic=namespace.events_topic,
        group=namespace.app_id,
        log_path=log_path,
        progress=progress,
    )
    summary.output = f"what-if run {name!r}: " + " ".join(
        f"{k}={v}" for k, v in namespace_env(namespace).items()
    )
    return summary
