"""The cold-tier layout in pure functions: day buckets, the last-k blob, write timestamps.

The CQL tables (`infra/cql/0001_*`, `0002_*`) are a public contract like the Redis layout,
so everything about how a value is laid out lives here, free of I/O, and is unit tested:

- history rows are bucketed by UTC day (days since the epoch) so partitions stay bounded;
- a snapshot row holds one type's last-k as a JSON blob (see `encode_items`);
- a snapshot row is written with the newest event time it holds as its CQL write
  timestamp (microseconds), so a stale snapshot written late never wins;
- a flush writes as history only the items the stored snapshot did not already hold
  (`unstored_items`), and packs rows into batches (`batched`, `packed`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

from streams.logic.lastk import Item

DAY_MS = 86_400_000

T = TypeVar("T")

_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def day_of(event_time_ms: int) -> int:
    """The history bucket of an event time: whole days since 1970-01-01 UTC."""
    return event_time_ms // DAY_MS


def window_days(start_ms: int, end_ms: int, max_days: int | None = None) -> list[int]:
    """The day buckets covering [start_ms, end_ms], newest first (empty if start > end).

    Every bucket costs a read, so a window wider than `max_days` buckets is refused
    (ValueError) rather than silently walked (`start_ms=0` would be ~20k reads).
    """
    if start_ms > end_ms:
        return []
    newest, oldest = day_of(end_ms), day_of(start_ms)
    if max_days is not None and newest - oldest + 1 > max_days:
        raise ValueError(
            f"a window spans at most {max_days} days; [{start_ms}, {end_ms}] spans "
            f"{newest - oldest + 1}"
        )
    return list(range(newest, oldest - 1, -1))


def snapshot_version(items: Sequence[Item]) -> int:
    """CQL write timestamp of a snapshot row: the sum of its items' event times (ms).

    Each flush of a user's last-k is the newest k of the previous one plus new events
    (`ZADD GT` never moves an item back in time), so its i-th newest time is at least the
    previous one's and the sum grows whenever the list changes: last-write-wins becomes
    newest-snapshot-wins, whatever order the writes arrive in (a worker that lost its
    partition writing late). The newest event time alone is not enough: a late event older
    than the newest changes the list but not the newest time, and on equal timestamps
    Cassandra and Scylla keep the greater value, which can be the older list.
    """
    return sum(event_time_ms for _product, event_time_ms in items)


def newest_time_ms(items: Sequence[Item]) -> int:
    """The newest event time in a last-k (whatever the order of the list)."""
    return max(event_time_ms for _product, event_time_ms in items)


def encode_items(items: Sequence[Item]) -> bytes:
    """A last-k list as the snapshot blob: UTF-8 JSON `[["p1",1700000000000],...]`.

    Newest first, as given. JSON because every language reads it and CPython's C codec
    beats any per-item struct packing done in Python.
    """
    # The C encoder writes (product_id, time) tuples as arrays as they are: no per-item list.
    return _compact(items if isinstance(items, list | tuple) else list(items)).encode()


def decode_items(blob: bytes | None) -> list[Item]:
    """The inverse of `encode_items`; a missing blob is an empty list."""
    if not blob:
        return []
    decoded = json.loads(blob)
    if not isinstance(decoded, list):
        raise ValueError("a last-k blob must be a JSON array of [product_id, time_ms] pairs")
    return [(str(product_id), int(event_time_ms)) for product_id, event_time_ms in decoded]


def chunks(rows: Sequence[Item], size: int) -> Iterator[Sequence[Item]]:
    """`rows` in consecutive slices of at most `size` (one CQL batch each)."""
    for offset in range(0, len(rows), size):
        yield rows[offset : offset + size]


def group_by_day(items: Sequence[Item]) -> dict[int, list[Item]]:
    """Items per history bucket, keeping their order (one partition per bucket)."""
    days: dict[int, list[Item]] = {}
    for item in items:
        days.setdefault(day_of(item[1]), []).append(item)
    return days


def unstored_items(items: Sequence[Item], stored: Sequence[Item] | None) -> Sequence[Item]:
    """The items of a last-k that are not history rows yet, given the stored snapshot.

    `stored` is the same type's last-k as loaded from the cold tier when the user was
    re-hydrated. Every item of a stored snapshot is already a history row (a flush writes
    the history before the snapshot), so an equal item (same product *and* time) is
    skipped. Anything else is written: late events older than the stored ones, and a
    product seen again (a new time). A time threshold would lose those late events.
    """
    if not stored:
        return items
    known = {(product_id, event_time_ms) for product_id, event_time_ms in stored}
    return [item for item in items if item not in known]


def batched(rows: Iterable[T], size: int) -> Iterator[list[T]]:
    """`rows` in consecutive lists of `size` (the last may be shorter); rows may split."""
    batch: list[T] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def packed(groups: Iterable[tuple[int, list[T]]], max_cost: int) -> Iterator[list[T]]:
    """Consecutive groups of rows, packed whole into lists costing at most `max_cost`.

    Each group comes with its cost (e.g. bytes) and is never split, so a group that alone
    costs more than `max_cost` goes out on its own.
    """
    batch: list[T] = []
    cost = 0
    for group_cost, rows in groups:
        if batch and cost + group_cost > max_cost:
            yield batch
            batch, cost = [], 0
        batch.extend(rows)
        cost += group_cost
    if batch:
        yield batch
