"""Reading a replay's Parquet output (`signals replay --to-parquet`; layout in
`schemas.replay_layout`): into pandas for analysts, or back into events for the backfill
and the training job.

    from jobs.replay_files import load_replay
    orders = load_replay("replay/", event_types=["order"])      # a pandas DataFrame
    orders.groupby("category_id").size()

Only completed chunks are read (the manifest lists them), so a folder whose replay is
still running or was interrupted gives exactly the events written so far, never a part.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from schemas.events import Event, EventType
from schemas.replay_layout import MANIFEST_NAME, PARQUET_SCHEMA, Manifest

#: Pandas types for the nullable integer columns (plain NumPy ints cannot hold a null).
_PANDAS_TYPES = {
    pa.int64(): pd.Int64Dtype(),
    pa.int32(): pd.Int32Dtype(),
    pa.string(): pd.StringDtype(),
}


class NotAReplay(Exception):
    """The folder holds no replay manifest."""


def replay_manifest(folder: str | Path) -> Manifest:
    path = Path(folder) / MANIFEST_NAME
    if not path.exists():
        raise NotAReplay(f"{folder} holds no replay ({MANIFEST_NAME} is missing)")
    return Manifest.from_json(path.read_text())


def replay_dataset(folder: str | Path) -> ds.Dataset:
    """The completed files as one pyarrow dataset with the partition columns `date` and
    `event_type` (strings)."""
    root = Path(folder)
    files = sorted(
        str(root / name) for name in replay_manifest(root).files() if name.endswith(".parquet")
    )
    partitioning = ds.partitioning(
        pa.schema([("date", pa.string()), ("event_type", pa.string())]), flavor="hive"
    )
    schema = pa.schema([*PARQUET_SCHEMA, ("date", pa.string()), ("event_type", pa.string())])
    return ds.dataset(
        files,
        schema=schema,
        format="parquet",
        partitioning=partitioning,
        partition_base_dir=str(root),
    )


def load_replay(
    folder: str | Path,
    event_types: Sequence[str | EventType] | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The replay's events as a DataFrame in (partition, offset) order, optionally only
    some types and event times in `[start_ms, end_ms)`. Nullable integers are pandas'
    `Int64`/`Int32`, strings `string`; `date` and `event_type` are columns too."""
    table = _filtered(replay_dataset(folder), event_types, start_ms, end_ms, columns)
    frame = table.to_pandas(types_mapper=_PANDAS_TYPES.get)
    order = [c for c in ("kafka_partition", "kafka_offset") if c in frame.columns]
    return frame.sort_values(order, ignore_index=True) if len(order) == 2 else frame


def replay_rows(folder: str | Path) -> Iterator[tuple[int, int, int, Event]]:
    """(Kafka partition, offset, record timestamp, event) of every event, partition by
    partition in offset order: what the backfill applies, as the worker read them."""
    table = (
        replay_dataset(folder)
        .to_table()
        .sort_by([("kafka_partition", "ascending"), ("kafka_offset", "ascending")])
    )
    for row in table.to_pylist():
        yield row["kafka_partition"], row["kafka_offset"], row["kafka_timestamp_ms"], _event(row)


_EVENT_FIELDS = [f.name for f in dataclasses.fields(Event)]


def _event(row: dict[str, Any]) -> Event:
    return Event.from_dict({name: row[name] for name in _EVENT_FIELDS})


def _filtered(
    dataset: ds.Dataset,
    event_types: Sequence[str | EventType] | None,
    start_ms: int | None,
    end_ms: int | None,
    columns: Sequence[str] | None,
) -> pa.Table:
    condition = None
    if event_types is not None:
        names = [EventType(t).value for t in event_types]
        condition = ds.field("event_type").isin(names)
    for bound in (
        ds.field("event_time_ms") >= start_ms if start_ms is not None else None,
        ds.field("event_time_ms") < end_ms if end_ms is not None else None,
    ):
        if bound is not None:
            condition = bound if condition is None else condition & bound
    return dataset.to_table(columns=list(columns) if columns else None, filter=condition)
