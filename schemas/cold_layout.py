"""The cold-tier layout in pure functions: day buckets, blobs, write timestamps.

The CQL tables (`infra/cql/*.cql`) are a public contract like the Redis layout, so
everything about how a value is laid out lives here, free of I/O, and is unit tested:

- a snapshot row holds one type's last-k as a JSON blob (see `encode_items`); its CQL
  write timestamp is the snapshot's version, given by the hot tier when the flush read it
  (`sinks.hot_sessions`, `sinks.cold_store.write_timestamp`; the header of migration
  0002, applied and so left as it was, still describes the earlier sum of event times);
- history is stored in blocks: one row per flush, user, type and UTC day, holding that
  flush's new items of that day as the same JSON blob (`history_blocks`); day buckets
  keep partitions bounded, and a block's key is derived from its content, so writing the
  same block again changes nothing;
- a window read merges the blocks of each day (`window_items`);
- a flush writes as history only the items the stored snapshot did not already hold
  (`unstored_items`), and packs rows into batches (`packed`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from schemas.hot_layout import Item

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


def group_by_day(items: Sequence[Item]) -> dict[int, list[Item]]:
    """Items per history bucket, keeping their order (one partition per bucket)."""
    days: dict[int, list[Item]] = {}
    for item in items:
        days.setdefault(day_of(item[1]), []).append(item)
    return days


@dataclass(frozen=True)
class HistoryBlock:
    """One history row: a flush's new items of one type on one UTC day."""

    day: int
    newest_ms: int  # first clustering column: a window skips blocks older than its start
    block_id: int  # from the content: the same items always make the same row
    items_blob: bytes  # `encode_items` of the items, newest first


def history_blocks(items: Sequence[Item]) -> list[HistoryBlock]:
    """The history rows for a flush's new items of one type: one block per day.

    One row per block instead of one per interaction: a flush writes a handful of blocks
    per user instead of ~28 rows, and the CQL server's per-row work was what limited it.
    `block_id` is the first 8 bytes of a BLAKE2b digest of the blob, as a signed 64-bit
    int, so a retried flush rewrites the same rows, while a block with other items never
    replaces one (two blocks with the same newest time and different items both stay;
    readers drop repeated items).
    """
    blocks = []
    for day, day_items in group_by_day(sorted(items, key=_newest_first)).items():
        blob = encode_items(day_items)
        digest = hashlib.blake2b(blob, digest_size=8).digest()
        blocks.append(
            HistoryBlock(
                day=day,
                newest_ms=day_items[0][1],
                block_id=int.from_bytes(digest, "big", signed=True),
                items_blob=blob,
            )
        )
    return blocks


def window_items(blobs: Iterable[bytes], start_ms: int, end_ms: int) -> list[Item]:
    """The items of some history blocks within [start_ms, end_ms]: newest first, equal
    times by product id, each (product, time) once (blocks of retried flushes overlap)."""
    found = {item for blob in blobs for item in decode_items(blob) if start_ms <= item[1] <= end_ms}
    return sorted(found, key=_newest_first)


def _newest_first(item: Item) -> tuple[int, str]:
    return -item[1], item[0]


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
