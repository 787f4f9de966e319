"""The online feature store's layout and the fenced write plan of its counters (issue 12,
in progress: the ingest script does not apply it yet).

    <prefix>:f:u:{<user_id>}      hash of one user's counters; the same hash tag as the
                                  user's last-k keys, so on a cluster it rides the same
                                  per-slot script call
    <prefix>:f:p:{<product_id>}   hash of one product's counters

Fields:

    n:<event_type>:<width>:<tile>   events of that type in tile <tile> (event time // width)
                                    of a tile width: 1m, 5m or 1h (`streams.logic.features`)
    late                            (users) events beyond the allowed lateness, in no tile
    o:<partition>                   the highest events-topic offset of that partition
                                    applied to this hash: the fence

Counters are not idempotent the way `ZADD GT` is, so every write is fenced: per hash and
source partition, the entries of a batch carry their offsets, and the script applies only
those above the hash's fence, then raises the fence. A batch read again after a crash or a
rebalance (offsets at or below the fence) changes nothing, even when it overlaps the
applied ones only in part; a user's events come from one partition, a product's from all,
hence one fence per partition. The fence lives in the hash it guards, so the check and the
increments are one atomic script call per slot, and no extra round trip.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from schemas.events import EventType

#: Tile widths by field name: the user windows' tiles (5 min in 1-min tiles, 1 h in 5-min
#: tiles, 24 h in 1-h tiles); products keep the last two.
TILE_WIDTHS: dict[str, int] = {"1m": 60_000, "5m": 300_000, "1h": 3_600_000}
WIDTH_NAMES: dict[int, str] = {width: name for name, width in TILE_WIDTHS.items()}
USER_TILE_WIDTHS = ("1m", "5m", "1h")
PRODUCT_TILE_WIDTHS = ("5m", "1h")
PRODUCT_COUNTED_TYPES = frozenset(
    {EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART, EventType.ORDER}
)


#: A feature hash expires this long after its last write: the longest window (24 h) plus
#: its tile (1 h), so every tile a read can cover outlives it, plus an hour of slack for
#: late events and clock skew.
COUNTER_TTL_MS = 26 * 3_600_000


def too_late(event_time_ms: int, watermark_ms: int | None, allowed_lateness_ms: int) -> bool:
    """An event further behind its partition's watermark (the newest event time the
    partition delivered before it) than the allowed lateness: its tiles may have been read
    as final, so it is counted apart instead of added."""
    return watermark_ms is not None and event_time_ms < watermark_ms - allowed_lateness_ms


def advanced(watermark_ms: int | None, event_time_ms: int) -> int:
    """A partition's watermark after one more event."""
    return event_time_ms if watermark_ms is None else max(watermark_ms, event_time_ms)


def user_features_key(prefix: str, user_id: str) -> str:
    return f"{prefix}:f:u:{{{user_id}}}"


def product_features_key(prefix: str, product_id: str) -> str:
    return f"{prefix}:f:p:{{{product_id}}}"


def count_field(event_type: EventType, width: str, event_time_ms: int) -> str:
    return f"n:{event_type.value}:{width}:{event_time_ms // TILE_WIDTHS[width]}"


#: A user's count of events too late for their tiles.
LATE_FIELD = "late"


def fence_field(partition: int) -> str:
    return f"o:{partition}"


@dataclass(frozen=True, slots=True)
class CountedEvent:
    """What the counters need of an event, with where it was read from."""

    user_id: str
    event_type: EventType
    event_time_ms: int
    product_id: str | None
    partition: int
    offset: int


@dataclass(slots=True)
class FencedWrite:
    """One hash's share of a batch from one partition: per offset, the increments."""

    key: str
    partition: int
    entries: dict[int, dict[str, int]] = field(default_factory=dict)  # offset -> increments

    def apply_above(self, fence: int | None, counters: dict[str, int]) -> int | None:
        """What the script does, in Python (the oracle of its tests): add the entries
        above `fence` to `counters`; returns the new fence."""
        applied = [offset for offset in self.entries if fence is None or offset > fence]
        for offset in applied:
            for name, amount in self.entries[offset].items():
                counters[name] = counters.get(name, 0) + amount
        return max([*applied, *([fence] if fence is not None else [])], default=None)


@dataclass(frozen=True, slots=True)
class CounterPlan:
    writes: list[FencedWrite]
    too_late: int  # in this plan (the stored, fenced count is each user's LATE_FIELD)


def plan_counters(
    events: Iterable[CountedEvent],
    prefix: str,
    watermarks: Mapping[int, int],
    allowed_lateness_ms: int,
) -> CounterPlan:
    """The fenced counter writes of a batch, in the order events were read.

    `watermarks` is each partition's newest event time before this batch; it advances
    through the batch event by event, so the too-late decision is the one an offline
    replay of the partition makes. A too-late event adds to its user's LATE_FIELD instead
    of tiles, fenced like the rest, so a re-read counts it once too.
    """
    writes: dict[tuple[str, int], FencedWrite] = {}
    newest = dict(watermarks)
    late = 0

    def entry(key: str, event: CountedEvent) -> dict[str, int]:
        write = writes.get((key, event.partition))
        if write is None:
            write = writes[(key, event.partition)] = FencedWrite(key, event.partition)
        return write.entries.setdefault(event.offset, {})

    for event in events:
        watermark = newest.get(event.partition)
        is_late = too_late(event.event_time_ms, watermark, allowed_lateness_ms)
        newest[event.partition] = advanced(watermark, event.event_time_ms)
        user_entry = entry(user_features_key(prefix, event.user_id), event)
        counted_product = event.product_id is not None and event.event_type in PRODUCT_COUNTED_TYPES
        product_entry = (
            entry(product_features_key(prefix, event.product_id), event)
            if counted_product and event.product_id is not None
            else None
        )
        if is_late:
            late += 1
            user_entry[LATE_FIELD] = user_entry.get(LATE_FIELD, 0) + 1  # fenced like the rest
            continue
        for width in USER_TILE_WIDTHS:
            name = count_field(event.event_type, width, event.event_time_ms)
            user_entry[name] = user_entry.get(name, 0) + 1
        if product_entry is not None:
            for width in PRODUCT_TILE_WIDTHS:
                name = count_field(event.event_type, width, event.event_time_ms)
                product_entry[name] = product_entry.get(name, 0) + 1
    return CounterPlan(list(writes.values()), late)
