"""Rolling-feature arithmetic: windows from time tiles, decayed scores, smoothed rates.

One definition for the live worker (which keeps tiles and decayed scores in Redis) and the
offline computation (which recomputes them from an event log for training); nothing here
does I/O, and time is always an argument.

Windows (the semantics both paths use):

- A window has a length W and a tile width s that divides it (`WINDOWS`: 5 min in 1-min
  tiles, 1 h in 5-min tiles, 24 h in 1-h tiles). An event at time t (ms since the epoch,
  event time) belongs to tile t // s.
- The window *at time T* covers the tiles `tile(T - W)` to `tile(T)`, both included, and
  of those the events at or before T: every event with
  `floor((T - W) / s) * s <= t <= T`. So an event exactly at T counts, an event exactly
  W before T counts, and the window reaches back between W and W + s (its start is
  rounded down to a tile, as Chronon's hops do), never less than W.
- Online, a read at T sums the stored tiles `tile(T - W) .. tile(T)`. It differs from the
  definition only by events already stored with a time later than T but in T's own tile
  (devices ahead of the clock, within the allowed future skew); the offline computation
  counts exactly the events at or before T.

Late events: an event more than the allowed lateness behind its source partition's
watermark (the newest event time the partition had delivered before it) is not added to
any tile (`schemas.feature_layout.too_late`); it still updates the interaction store, and
is counted. The offline computation replays the log in partition order to make the same
decision (`replayed_counts`).

Decayed scores (user x category affinity, trending products): a sum of weights, each
halved every half-life since its event, `sum(w * 2 ** -((T - t) / h))`. Kept in log2 space
relative to the epoch, `L = log2(sum(w * 2 ** (t / h)))` (`decayed_add`): adding is a
log-sum-exp, so late events land exactly and the order of adds does not matter, and the
stored number grows only linearly with time (about t / h), so it never overflows and
values of different entities compare directly (a sorted set's score). The score at T is
`2 ** (L - T / h)` (`decayed_value`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from schemas.events import EventType
from schemas.feature_layout import (
    PRODUCT_COUNTED_TYPES,
    TILE_WIDTHS,
    WIDTH_NAMES,
    CountedEvent,
    advanced,
    count_field,
    product_features_key,
    too_late,
    user_features_key,
)

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS


@dataclass(frozen=True, slots=True)
class Window:
    """A sliding window of `length_ms`, kept as tiles of `tile_ms` (which divides it)."""

    name: str
    length_ms: int
    tile_ms: int

    def __post_init__(self) -> None:
        if self.tile_ms <= 0 or self.length_ms <= 0 or self.length_ms % self.tile_ms:
            raise ValueError(f"window {self.name}: the tile width must divide the length")

    def tile_of(self, time_ms: int) -> int:
        return time_ms // self.tile_ms

    def tiles_at(self, at_ms: int) -> range:
        """The tiles the window at `at_ms` covers, oldest first (length / tile + 1)."""
        return range(self.tile_of(at_ms - self.length_ms), self.tile_of(at_ms) + 1)

    def start_at(self, at_ms: int) -> int:
        """The earliest event time the window at `at_ms` counts."""
        return self.tile_of(at_ms - self.length_ms) * self.tile_ms

    def covers(self, event_time_ms: int, at_ms: int) -> bool:
        """Whether an event at `event_time_ms` counts in the window at `at_ms`."""
        return self.start_at(at_ms) <= event_time_ms <= at_ms

    def oldest_tile_needed(self, newest_ms: int) -> int:
        """Tiles older than this can be dropped once events up to `newest_ms` were seen
        (no read at or after `newest_ms` covers them)."""
        return self.tile_of(newest_ms - self.length_ms)


# Tile widths come from the online store's layout, so the two cannot disagree.
FIVE_MINUTES = Window("5m", 5 * MINUTE_MS, TILE_WIDTHS["1m"])
ONE_HOUR = Window("1h", HOUR_MS, TILE_WIDTHS["5m"])
ONE_DAY = Window("24h", 24 * HOUR_MS, TILE_WIDTHS["1h"])
#: The user windows; products use the last two.
WINDOWS: tuple[Window, ...] = (FIVE_MINUTES, ONE_HOUR, ONE_DAY)
PRODUCT_WINDOWS: tuple[Window, ...] = (ONE_HOUR, ONE_DAY)


def window_total(window: Window, tiles: Mapping[int, int], at_ms: int) -> int:
    """The window at `at_ms` from stored tile counts (tile index -> count): the online read."""
    return sum(tiles.get(tile, 0) for tile in window.tiles_at(at_ms))


def window_count(window: Window, event_times_ms: Iterable[int], at_ms: int) -> int:
    """The window at `at_ms` from the events themselves: the offline definition."""
    return sum(1 for time_ms in event_times_ms if window.covers(time_ms, at_ms))


#: log2 of nothing: the decayed sum of no events.
EMPTY_DECAYED = -math.inf


def decayed_add(log_sum: float, weight: float, event_time_ms: int, half_life_ms: float) -> float:
    """Add an event of `weight` at `event_time_ms` to a log2-space decayed sum."""
    if weight <= 0:
        raise ValueError("decayed weights must be positive")
    term = math.log2(weight) + event_time_ms / half_life_ms
    if log_sum == EMPTY_DECAYED:
        return term
    high, low = (log_sum, term) if log_sum >= term else (term, log_sum)
    return high + math.log2(1.0 + math.pow(2.0, low - high))


def decayed_value(log_sum: float, at_ms: int, half_life_ms: float) -> float:
    """The decayed sum at `at_ms`: each weight halved every half-life since its event."""
    if log_sum == EMPTY_DECAYED:
        return 0.0
    return math.pow(2.0, log_sum - at_ms / half_life_ms)


def smoothed_rate(successes: int, trials: int, prior_rate: float, prior_weight: float) -> float:
    """A rate pulled toward `prior_rate` as if `prior_weight` trials had shown it: a
    product with 1 view and 1 click is near the global click-through rate, not 100%."""
    if prior_weight <= 0 or not 0 <= prior_rate <= 1:
        raise ValueError("prior_weight must be > 0 and prior_rate in [0, 1]")
    return (successes + prior_rate * prior_weight) / (trials + prior_weight)


def stored_count(
    counters: Mapping[str, int], event_type: EventType, window: Window, at_ms: int
) -> int:
    """The online read: the window at `at_ms` of one type from an entity's stored hash
    (`schemas.feature_layout`)."""
    width = WIDTH_NAMES[window.tile_ms]
    return window_total(
        window,
        {
            tile: counters.get(count_field(event_type, width, tile * window.tile_ms), 0)
            for tile in window.tiles_at(at_ms)
        },
        at_ms,
    )


def replayed_counts(
    log: Iterable[CountedEvent], prefix: str, allowed_lateness_ms: int
) -> tuple[dict[str, list[tuple[EventType, int]]], int]:
    """The offline side: per entity key (user and product hashes, named as the online
    store names them), the (type, event time) of every event counted in tiles, replaying
    each partition in log order for the lateness decision; and how many were too late. A
    record read twice (the same partition and offset) counts once."""
    counted: dict[str, list[tuple[EventType, int]]] = {}
    newest: dict[int, int] = {}
    seen: set[tuple[int, int]] = set()
    late = 0
    for event in log:
        if (event.partition, event.offset) in seen:
            continue
        seen.add((event.partition, event.offset))
        mark = newest.get(event.partition)
        newest[event.partition] = advanced(mark, event.event_time_ms)
        if too_late(event.event_time_ms, mark, allowed_lateness_ms):
            late += 1
            continue
        keys = [user_features_key(prefix, event.user_id)]
        if event.product_id is not None and event.event_type in PRODUCT_COUNTED_TYPES:
            keys.append(product_features_key(prefix, event.product_id))
        for key in keys:
            counted.setdefault(key, []).append((event.event_type, event.event_time_ms))
    return counted, late
