"""What `signals replay` selects and the layout of what it writes: a contract analysts,
notebooks and the training job read.

Which records a range selects. A replay range is in **event time** (the event's
`event_time_ms`, set on the device), half-open: `[start, end)`, so an event exactly at
`start` is in and one exactly at `end` is out, and consecutive ranges never overlap or
leave a gap. The topic is ordered by broker time (the record timestamp: when the producer
sent it), not by event time, so the replay scans the broker-time window
`[start - future_skew, end + lateness)` and keeps the events whose event time is in the
range:

- `future_skew` is the worker's `SIGNALS_MAX_FUTURE_SKEW_S`: an event further ahead of its
  broker time was dead-lettered by the worker, so nothing the pipeline applied is missed
  at the start;
- `lateness` (`--lateness`, default 1 h) bounds how long after its event time an event may
  have been sent (an app offline for a while). An event sent later than that is not in
  the replay; the summary reports the largest lateness it saw and warns when in-range
  events arrived in the last tenth of the window (the bound may be too tight). `--to-end`
  scans to the end of the topic instead, exact for any lateness.

Explicit offsets (`--offsets P:FROM-TO`) select exactly the records at offsets
`FROM <= offset < TO` of partition P, whatever their times.

Parquet layout (`--to-parquet DIR`), hive-style, readable by pandas, pyarrow, DuckDB and
Spark:

    DIR/date=YYYY-MM-DD/event_type=TYPE/part-pPPPP-FIRST-LAST.parquet
    DIR/_manifest.json                      the request and every completed chunk
    DIR/_errors/pPPPP-FIRST-LAST.jsonl      records that did not decode, per chunk

`date` is the event time's UTC day. A file holds one chunk of one Kafka partition
(offsets FIRST..LAST, both included, zero-padded so names sort by offset); its columns are
`PARQUET_SCHEMA`: the Avro event's fields typed (the two folder names are the partition
columns), then the record's Kafka partition, offset and timestamp.

Resuming: the manifest lists the completed chunks and is replaced atomically (written to
a temporary file, then renamed) after a chunk's files are all in place. A run that is
interrupted and started again with the same request deletes files no completed chunk
names (the interrupted chunk's), and continues each partition after its last completed
chunk: every record lands in exactly one file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

MANIFEST_NAME = "_manifest.json"
ERRORS_DIR = "_errors"
MANIFEST_VERSION = 1

#: The columns of every Parquet file, in order (the partition columns live in folder names).
PARQUET_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("event_time_ms", pa.int64(), nullable=False),
        pa.field("platform", pa.string(), nullable=False),
        pa.field("language", pa.string(), nullable=False),
        pa.field("product_id", pa.string()),
        pa.field("category_id", pa.string()),
        pa.field("price_paise", pa.int64()),
        pa.field("feed_position", pa.int32()),
        pa.field("order_id", pa.string()),
        pa.field("quantity", pa.int32()),
        pa.field("kafka_partition", pa.int32(), nullable=False),
        pa.field("kafka_offset", pa.int64(), nullable=False),
        pa.field("kafka_timestamp_ms", pa.int64(), nullable=False),
    ]
)
PARTITION_COLUMNS = ("date", "event_type")

_PART_NAME = re.compile(r"part-p(\d{4})-(\d{20})-(\d{20})\.parquet")


@dataclass(frozen=True)
class EventTimeRange:
    """`[start_ms, end_ms)` in event time."""

    start_ms: int
    end_ms: int

    def __post_init__(self) -> None:
        if self.end_ms <= self.start_ms:
            raise ValueError(
                "the range is empty: end must be after start"
                if self.end_ms == self.start_ms
                else "end is before start"
            )

    def contains(self, event_time_ms: int) -> bool:
        return self.start_ms <= event_time_ms < self.end_ms

    def scan_window(self, future_skew_ms: int, lateness_ms: int) -> tuple[int, int]:
        """The broker-time window `[from, to)` whose records can hold in-range events."""
        return self.start_ms - future_skew_ms, self.end_ms + lateness_ms


def utc_date(event_time_ms: int) -> str:
    return datetime.fromtimestamp(event_time_ms / 1000, UTC).strftime("%Y-%m-%d")


def partition_folder(date: str, event_type: str) -> str:
    return f"date={date}/event_type={event_type}"


def part_name(partition: int, first_offset: int, last_offset: int) -> str:
    return f"part-p{partition:04d}-{first_offset:020d}-{last_offset:020d}.parquet"


def errors_name(partition: int, first_offset: int, last_offset: int) -> str:
    return f"{ERRORS_DIR}/p{partition:04d}-{first_offset:020d}-{last_offset:020d}.jsonl"


def parse_part_name(name: str) -> tuple[int, int, int] | None:
    """(partition, first offset, last offset) of a part file's name; None for other names."""
    found = _PART_NAME.fullmatch(name)
    if found is None:
        return None
    partition, first, last = found.groups()
    return int(partition), int(first), int(last)


@dataclass(frozen=True)
class Chunk:
    """A completed piece of one partition: offsets `[from_offset, to_offset)` scanned, the
    files it wrote (relative to the output folder) and what it counted."""

    partition: int
    from_offset: int
    to_offset: int
    files: list[str]
    selected: int
    outside: int
    errors: int


@dataclass
class Manifest:
    """A Parquet replay's request and progress (`_manifest.json`)."""

    request: dict[str, Any]
    chunks: list[Chunk] = field(default_factory=list)
    finished: bool = False
    version: int = MANIFEST_VERSION

    def resume_offsets(self, starts: Mapping[int, int]) -> dict[int, int]:
        """Per partition, where to continue: after its last completed chunk, or its start."""
        resumed = dict(starts)
        for chunk in self.chunks:
            if chunk.partition in resumed:
                resumed[chunk.partition] = max(resumed[chunk.partition], chunk.to_offset)
        return resumed

    def files(self) -> set[str]:
        return {name for chunk in self.chunks for name in chunk.files}

    def totals(self) -> dict[int, dict[str, int]]:
        """Per partition: records selected, outside the range, and errors."""
        totals: dict[int, dict[str, int]] = {}
        for chunk in self.chunks:
            row = totals.setdefault(chunk.partition, {"selected": 0, "outside": 0, "errors": 0})
            row["selected"] += chunk.selected
            row["outside"] += chunk.outside
            row["errors"] += chunk.errors
        return totals

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                "request": self.request,
                "finished": self.finished,
                "chunks": [asdict(chunk) for chunk in self.chunks],
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("version") != MANIFEST_VERSION:
            raise ValueError(f"manifest version {data.get('version')!r} is not {MANIFEST_VERSION}")
        return cls(
            request=data["request"],
            chunks=[Chunk(**chunk) for chunk in data["chunks"]],
            finished=bool(data["finished"]),
        )


def parse_offsets(text: str) -> dict[int, tuple[int, int]]:
    """`"0:100-200,3:0-50"` -> {0: (100, 200), 3: (0, 50)}: per partition `[from, to)`."""
    ranges: dict[int, tuple[int, int]] = {}
    for part in text.split(","):
        found = re.fullmatch(r"\s*(\d+):(\d+)-(\d+)\s*", part)
        if found is None:
            raise ValueError(f"{part.strip()!r} is not PARTITION:FROM-TO (for example 0:100-200)")
        partition, first, end = (int(g) for g in found.groups())
        if end <= first:
            raise ValueError(f"partition {partition}: {first}-{end} is empty (TO is excluded)")
        if partition in ranges:
            raise ValueError(f"partition {partition} is given twice")
        ranges[partition] = (first, end)
    return ranges


def parse_partitions(text: str) -> list[int]:
    """`"0,2,5-7"` -> [0, 2, 5, 6, 7]."""
    chosen: set[int] = set()
    for part in text.split(","):
        found = re.fullmatch(r"\s*(\d+)(?:-(\d+))?\s*", part)
        if found is None:
            raise ValueError(f"{part.strip()!r} is not a partition or a range like 5-7")
        low = int(found.group(1))
        high = int(found.group(2) or low)
        if high < low:
            raise ValueError(f"{low}-{high} is an empty partition range")
        chosen.update(range(low, high + 1))
    return sorted(chosen)
