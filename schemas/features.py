"""The rolling features: one definition for the live worker and the offline computation.

The worker plans its writes here (`plan_features`) and the read client turns stored
values into features here (`user_features_of`, `product_features_of`); the offline
computation (`OfflineFeatures`) recomputes them from an event log for training. Nothing
here does I/O, and time is always an argument.

Features at time T (ms since the epoch, event time):

- user: events per type in the windows 5m, 1h and 24h; distinct categories in the 24h
  window; ms since the newest event; events in the current session; events too late for
  their tiles; top categories by decayed affinity;
- product: views, clicks, add-to-carts and orders in the windows 1h and 24h; the 24h
  click-through (clicks / views) and add-to-cart (add-to-carts / views) rates, smoothed
  toward the same rates over every product;
- user x category: the decayed affinity, `sum(weight(type) * 2 ** -((T - t) / h))` over the
  user's events in that category, h the affinity half-life;
- category: the trending products, by the same decayed sum over the category's events
  (every user), with the trending half-life.

Windows. A window has a length W and a tile width s that divides it (5m in 1-min tiles, 1h
in 5-min tiles, 24h in 1-h tiles). An event at time t belongs to tile t // s. The window
at T covers the tiles `tile(T - W)` to `tile(T)`, both included, and of those the events
at or before T: every event with `floor((T - W) / s) * s <= t <= T`. So an event exactly
at T counts, one exactly W before T counts, and the window reaches back between W and
W + s (its start is rounded down to a tile, as Chronon's hops do), never less than W.
Distinct categories use the 24h window's bounds the same way.

Online, a read at T sums the stored tiles `tile(T - W) .. tile(T)`: it equals the
definition whenever no event later than T is stored yet (reads at the current time; a
device ahead of the clock, within the allowed future skew, is the exception).

Duplicates: an event whose id the user sent before, at most 100,000 offsets earlier in
their partition (an app retrying a send: a second record of the same event), counts in
no feature; the partition's watermark still takes it.

Late events: an event more than the allowed lateness behind its partition's watermark
(the newest event time the partition had delivered before it, in read order) is added to
no tile and counted in the user's `late_events`; everything else (recency, session,
categories, decayed scores) still takes it. The offline computation replays each
partition in read order to make the same decision.

Sessions: in read order, a user's event more than the session gap after the newest event
so far starts a new session; any other event joins the current one. At T the current
session's events are 0 once T is more than the gap after the newest event.

Decayed scores are kept in log2 space, `L = log2(sum(w * 2 ** (t / h)))` (`decayed_add`):
adding is a log-sum-exp, so late events land exactly and the order of adds does not
matter, and L grows only linearly with time (about t / h), so it never overflows and the
scores of different entities compare directly (a sorted set's score). The score at T is
`2 ** (L - T / h)` (`decayed_value`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from schemas.events import EventType
from schemas.feature_layout import (
    COUNTER_TTL_MS,
    DECAYED_TTL_HALF_LIVES,
    DEDUPE_OFFSETS,
    PRODUCT_COUNTED_TYPES,
    PRODUCT_TILE_WIDTHS,
    PRUNE_EVERY_MS,
    TILE_WIDTHS,
    USER_TILE_WIDTHS,
    WIDTH_NAMES,
    CountedEvent,
    WriteKind,
    advanced,
    global_features_key,
    product_features_key,
    too_late,
    trending_fence_key,
    trending_key,
)

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


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
        """Older tiles can be dropped once events up to `newest_ms` were seen: no read at
        or after `newest_ms` covers them (the write script prunes by this rule)."""
        return self.tile_of(newest_ms - self.length_ms)


# Tile widths come from the online store's layout, so the two cannot disagree.
FIVE_MINUTES = Window("5m", 5 * MINUTE_MS, TILE_WIDTHS["1m"])
ONE_HOUR = Window("1h", HOUR_MS, TILE_WIDTHS["5m"])
ONE_DAY = Window("24h", DAY_MS, TILE_WIDTHS["1h"])
#: The user windows; products use the last two.
WINDOWS: tuple[Window, ...] = (FIVE_MINUTES, ONE_HOUR, ONE_DAY)
PRODUCT_WINDOWS: tuple[Window, ...] = (ONE_HOUR, ONE_DAY)
#: Window length per tile width: tiles older than the window at a key's newest event are
#: pruned (no read at or after it covers them).
WINDOW_OF_WIDTH: dict[str, int] = {WIDTH_NAMES[w.tile_ms]: w.length_ms for w in WINDOWS}

#: How much each event type adds to a decayed score (affinity, trending); types without a
#: weight add nothing.
DEFAULT_WEIGHTS: dict[EventType, float] = {
    EventType.VIEW: 1.0,
    EventType.CLICK: 3.0,
    EventType.WISHLIST: 4.0,
    EventType.ADD_TO_CART: 5.0,
    EventType.ORDER: 10.0,
}


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """The settings the definitions depend on (`streams.settings` builds it)."""

    allowed_lateness_ms: int = 60_000
    session_gap_ms: int = 30 * MINUTE_MS
    affinity_half_life_ms: int = 7 * DAY_MS
    trending_half_life_ms: int = 6 * HOUR_MS
    weights: Mapping[EventType, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    #: Smoothing: a product's rate is pulled toward the global one as if it had this many
    #: more views showing it.
    rate_prior_views: float = 20.0
    #: The prior rates while the global hash has no views yet.
    default_click_rate: float = 0.05
    default_cart_rate: float = 0.01
    #: Largest decayed sets: a user's categories, a category's trending products. A member
    #: trimmed off and seen again starts from its new events only.
    affinity_keep: int = 200
    trending_keep: int = 500
    counter_ttl_ms: int = COUNTER_TTL_MS
    #: log2 of each weight by the type's wire name (derived: what the hot paths use).
    log2_weights: Mapping[str, float] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        if self.allowed_lateness_ms < 0 or self.session_gap_ms <= 0:
            raise ValueError("allowed lateness must be >= 0 and the session gap > 0")
        if self.affinity_half_life_ms <= 0 or self.trending_half_life_ms <= 0:
            raise ValueError("half-lives must be positive")
        if any(weight <= 0 for weight in self.weights.values()):
            raise ValueError("event weights must be positive (leave a type out for none)")
        logs = {EventType(kind).value: math.log2(weight) for kind, weight in self.weights.items()}
        object.__setattr__(self, "log2_weights", logs)

    @property
    def affinity_ttl_ms(self) -> int:
        return DECAYED_TTL_HALF_LIVES * self.affinity_half_life_ms

    @property
    def trending_ttl_ms(self) -> int:
        return DECAYED_TTL_HALF_LIVES * self.trending_half_life_ms


def window_total(window: Window, tiles: Mapping[int, int], at_ms: int) -> int:
    """The window at `at_ms` from stored tile counts (tile index -> count): the online read."""
    covered = window.tiles_at(at_ms)
    if len(tiles) < len(covered):  # sparse: look at what is stored
        return sum(count for tile, count in tiles.items() if tile in covered)
    return sum(tiles.get(tile, 0) for tile in covered)


def window_count(window: Window, event_times_ms: Iterable[int], at_ms: int) -> int:
    """The window at `at_ms` from the events themselves: the offline definition."""
    return sum(1 for time_ms in event_times_ms if window.covers(time_ms, at_ms))


#: log2 of nothing: the decayed sum of no events.
EMPTY_DECAYED = -math.inf


def decayed_term(weight: float, event_time_ms: int, half_life_ms: float) -> float:
    """One event's share of a log2-space decayed sum."""
    if weight <= 0:
        raise ValueError("decayed weights must be positive")
    return math.log2(weight) + event_time_ms / half_life_ms


def log_sum(a: float, b: float) -> float:
    """log2(2**a + 2**b), exact for far-apart terms and without overflow."""
    if a == EMPTY_DECAYED:
        return b
    high, low = (a, b) if a >= b else (b, a)
    return high + math.log2(1.0 + math.pow(2.0, low - high))


def decayed_add(log_total: float, weight: float, event_time_ms: int, half_life_ms: float) -> float:
    """Add an event of `weight` at `event_time_ms` to a log2-space decayed sum."""
    return log_sum(log_total, decayed_term(weight, event_time_ms, half_life_ms))


def decayed_value(log_total: float, at_ms: int, half_life_ms: float) -> float:
    """The decayed sum at `at_ms`: each weight halved every half-life since its event."""
    if log_total == EMPTY_DECAYED:
        return 0.0
    return math.pow(2.0, log_total - at_ms / half_life_ms)


def smoothed_rate(successes: int, trials: int, prior_rate: float, prior_weight: float) -> float:
    """A rate pulled toward `prior_rate` as if `prior_weight` trials had shown it: a
    product with 1 view and 1 click is near the global click-through rate, not 100%."""
    if prior_weight <= 0 or not 0 <= prior_rate <= 1:
        raise ValueError("prior_weight must be > 0 and prior_rate in [0, 1]")
    return (successes + prior_rate * prior_weight) / (trials + prior_weight)


# --- The features, as the read client and the offline computation return them ---------

#: Window name -> event type -> events.
WindowCounts = dict[str, dict[EventType, int]]


@dataclass(frozen=True, slots=True)
class UserFeatures:
    user_id: str
    at_ms: int
    counts: WindowCounts  # every window of WINDOWS, every event type
    distinct_categories_24h: int
    ms_since_previous: int | None  # None: no event of theirs is known
    session_events: int  # 0 when the session is over at at_ms
    late_events: int
    top_categories: list[tuple[str, float]]  # (category, affinity at at_ms), highest first


@dataclass(frozen=True, slots=True)
class ProductFeatures:
    product_id: str
    at_ms: int
    counts: WindowCounts  # windows of PRODUCT_WINDOWS, types of PRODUCT_COUNTED_TYPES
    click_rate_24h: float
    cart_rate_24h: float


@dataclass(frozen=True, slots=True)
class UserState:
    """What the user's hash holds besides tiles, decoded."""

    newest_ms: int | None = None
    session_events: int = 0
    late_events: int = 0
    category_newest_ms: Mapping[str, int] = field(default_factory=dict)


def session_events_at(state: UserState, at_ms: int, config: FeatureConfig) -> int:
    if state.newest_ms is None or at_ms - state.newest_ms > config.session_gap_ms:
        return 0
    return state.session_events


def distinct_categories_at(newest_by_category: Mapping[str, int], at_ms: int) -> int:
    return sum(1 for newest in newest_by_category.values() if ONE_DAY.covers(newest, at_ms))


def window_counts(
    tiles: Mapping[str, int],
    windows: Sequence[Window],
    types: Iterable[EventType],
    at_ms: int,
) -> WindowCounts:
    """Windows at `at_ms` from a hash's tile fields (`count_field` names): each stored
    tile is added to every window of its width that covers it (a key holds a few dozen
    tiles, a window spans up to 25)."""
    kinds = list(types)
    wanted = {kind.value: kind for kind in kinds}
    counts: WindowCounts = {window.name: dict.fromkeys(kinds, 0) for window in windows}
    spans: dict[str, list[tuple[range, dict[EventType, int]]]] = {}
    for window in windows:
        spans.setdefault(WIDTH_NAMES[window.tile_ms], []).append(
            (window.tiles_at(at_ms), counts[window.name])
        )
    for name, count in tiles.items():
        _n, kind_name, width, tile_text = name.split(":", 3)
        kind = wanted.get(kind_name)
        if kind is None or width not in spans:
            continue
        tile = int(tile_text)
        for covered, window_counts_ in spans[width]:
            if tile in covered:
                window_counts_[kind] += count
    return counts


def top_decayed(
    log_scores: Iterable[tuple[str, float]], at_ms: int, half_life_ms: float, n: int
) -> list[tuple[str, float]]:
    """The `n` highest decayed scores at `at_ms`, highest first."""
    # Ties as a sorted set's ZREVRANGE orders them: the greater member first.
    ranked = sorted(log_scores, key=lambda pair: (pair[1], pair[0]), reverse=True)[:n]
    return [(member, decayed_value(score, at_ms, half_life_ms)) for member, score in ranked]


def user_features_of(
    user_id: str,
    share: UserShare | None,
    *,
    at_ms: int,
    config: FeatureConfig,
    top_n: int = 5,
) -> UserFeatures:
    """The online read: a user's features at `at_ms` from their stored share (None: no
    event of theirs is stored)."""
    share = share if share is not None else UserShare()
    state = UserState(share.newest_ms, share.session_events, share.late_events, share.categories)
    return UserFeatures(
        user_id=user_id,
        at_ms=at_ms,
        counts=window_counts(share.tiles, WINDOWS, EventType, at_ms),
        distinct_categories_24h=distinct_categories_at(share.categories, at_ms),
        ms_since_previous=None if share.newest_ms is None else at_ms - share.newest_ms,
        session_events=session_events_at(state, at_ms, config),
        late_events=share.late_events,
        top_categories=top_decayed(
            share.affinity.items(), at_ms, config.affinity_half_life_ms, top_n
        ),
    )


def _rates(
    counts: WindowCounts, global_counts: WindowCounts, config: FeatureConfig
) -> tuple[float, float]:
    day, every = counts[ONE_DAY.name], global_counts[ONE_DAY.name]
    views = every[EventType.VIEW]
    prior_click = every[EventType.CLICK] / views if views else config.default_click_rate
    prior_cart = every[EventType.ADD_TO_CART] / views if views else config.default_cart_rate
    return (
        smoothed_rate(
            day[EventType.CLICK],
            day[EventType.VIEW],
            min(prior_click, 1.0),
            config.rate_prior_views,
        ),
        smoothed_rate(
            day[EventType.ADD_TO_CART],
            day[EventType.VIEW],
            min(prior_cart, 1.0),
            config.rate_prior_views,
        ),
    )


def hash_window_counts(fields: Mapping[str, str | int], at_ms: int) -> WindowCounts:
    """A product's (or the global hash's) windows at `at_ms` from its stored fields."""
    tiles = {name: int(value) for name, value in fields.items() if name.startswith("n:")}
    return window_counts(tiles, PRODUCT_WINDOWS, PRODUCT_COUNTED_TYPES, at_ms)


def product_features_of(
    product_id: str,
    fields: Mapping[str, str | int],
    global_counts: WindowCounts,
    at_ms: int,
    config: FeatureConfig,
) -> ProductFeatures:
    """The online read: a product's features at `at_ms` from its hash and the global
    hash's windows (`hash_window_counts`, once for many products)."""
    return product_features_from_counts(
        product_id, hash_window_counts(fields, at_ms), global_counts, at_ms, config
    )


def product_features_from_counts(
    product_id: str,
    counts: WindowCounts,
    global_counts: WindowCounts,
    at_ms: int,
    config: FeatureConfig,
) -> ProductFeatures:
    """A product's features from its windows at `at_ms` and every product's."""
    click_rate, cart_rate = _rates(counts, global_counts, config)
    return ProductFeatures(product_id, at_ms, counts, click_rate, cart_rate)


# --- The live worker's write plan ------------------------------------------------------

#: One event as the worker plans it: (partition, offset, event type, event time,
#: category or "", too late (0/1), event id or "", product or ""). A plain tuple: the
#: worker builds one per event.
PlannedEvent = tuple[int, int, str, int, str, int, str, str]


@dataclass(frozen=True, slots=True)
class FeaturePlan:
    """A batch's events per user, in read order, with lateness decided."""

    users: dict[str, list[PlannedEvent]]
    too_late: int  # events of this batch too late for their tiles
    watermarks: dict[int, int]  # each partition's watermark after the batch


def plan_features(
    events: Iterable[CountedEvent],
    watermarks: Mapping[int, int],
    config: FeatureConfig,
) -> FeaturePlan:
    """Group a batch's events by user, in the order they were read.

    `watermarks` is each partition's newest event time before this batch; it advances
    through the batch event by event, so the too-late decision is the one an in-order
    replay of the partition makes (`OfflineFeatures`). A record read twice within the
    batch is planned once. What the writes are follows from the users' stored shares
    (`advance_user`, then `shared_writes`).
    """
    users: dict[str, list[PlannedEvent]] = {}
    newest = dict(watermarks)
    read_upto: dict[int, int] = {}  # partition -> highest offset planned so far
    late = 0
    lateness = config.allowed_lateness_ms
    # Positional unpacking: the worker passes plain tuples of CountedEvent's fields.
    for user, event_type, time_ms, product, category_id, partition, offset, event_id in events:
        # A batch can hold a record twice (a fetch repeated after a rebalance, merged with
        # the one before it): the fences only guard against what earlier writes applied.
        if offset <= read_upto.get(partition, -1):
            continue
        read_upto[partition] = offset
        watermark = newest.get(partition)
        if watermark is None or time_ms > watermark:
            newest[partition] = time_ms
            is_late = 0
        else:
            is_late = 1 if time_ms < watermark - lateness else 0
            late += is_late
        item = (
            partition,
            offset,
            event_type._value_,  # the wire name, a plain str (hashes in C, unlike the enum)
            time_ms,
            category_id or "",
            is_late,
            event_id,
            product or "",
        )
        found = users.get(user)
        if found is None:
            users[user] = [item]
        else:
            found.append(item)
    return FeaturePlan(users, late, newest)


@dataclass(slots=True)
class UserShare:
    """A user's stored features (their one key, `schemas.feature_layout`), as the worker
    updates them. Tiles are named like the count fields of the product hashes."""

    partition: int = -1
    fence: int = -1  # the highest offset of the user's partition applied
    newest_ms: int | None = None
    session_start_ms: int | None = None
    session_events: int = 0
    late_events: int = 0
    prune_step: int | None = None
    tiles: dict[str, int] = field(default_factory=dict)  # count_field name -> events
    categories: dict[str, int] = field(default_factory=dict)  # category -> newest time
    event_ids: dict[str, int] = field(default_factory=dict)  # event id -> first offset
    affinity: dict[str, float] = field(default_factory=dict)  # category -> log2 score

    def top_category(self) -> str | None:
        """The highest affinity, ties to the greater id (a sorted set's ZREVRANGE order)."""
        if not self.affinity:
            return None
        # (score, member) pairs compare as the sorted set orders them; no key function.
        return max(zip(self.affinity.values(), self.affinity, strict=True))[1]


def _score_then_member(pair: tuple[str, float]) -> tuple[float, str]:
    return pair[1], pair[0]


def encode_user_share(share: UserShare) -> bytes:
    """The stored value: `<fence>|<JSON>` (the layout's docstring names the fields)."""
    body = {
        "p": share.partition,
        "t": share.newest_ms,
        "s": share.session_start_ms,
        "sn": share.session_events,
        "late": share.late_events,
        "pt": share.prune_step,
        "n": share.tiles,
        "c": share.categories,
        "e": share.event_ids,
        "a": share.affinity,
    }
    return b"%d|%b" % (share.fence, orjson.dumps(body))


def decode_user_share(value: bytes | str) -> UserShare:
    raw = value.encode() if isinstance(value, str) else value
    fence, _, body = raw.partition(b"|")
    fields = orjson.loads(body)
    return UserShare(
        partition=fields["p"],
        fence=int(fence),
        newest_ms=fields["t"],
        session_start_ms=fields["s"],
        session_events=fields["sn"],
        late_events=fields["late"],
        prune_step=fields["pt"],
        tiles=fields["n"],
        categories=fields["c"],
        event_ids=fields["e"],
        affinity=fields["a"],
    )


@dataclass(slots=True)
class UserStep:
    """What one batch did to a user: the share to store (None: nothing above its fence),
    for the triggers whether a session started and the top category before and after,
    and the duplicates ("partition:offset", also told apart among events at or below the
    user's fence: the shared keys have fences of their own)."""

    share: UserShare | None
    session_started: bool
    top_before: str | None
    top_after: str | None
    duplicates: list[str]


def advance_user(  # noqa: PLR0912, PLR0915  (the hot loop, kept flat)
    stored: UserShare | None, events: Sequence[PlannedEvent], config: FeatureConfig
) -> UserStep:
    """Apply a user's events of a batch (read order) to their stored share.

    Events at or below the share's fence were applied before (a batch read again) and
    change nothing, but are still told apart as duplicates or not (`is_duplicate`'s rule:
    an id first read at another offset at most DEDUPE_OFFSETS before)."""
    share = stored if stored is not None else UserShare(partition=events[0][0])
    top_before = share.top_category()
    fence = share.fence
    newest = share.newest_ms
    session_start, session_events = share.session_start_ms, share.session_events
    tiles, categories, ids, affinity = (
        share.tiles,
        share.categories,
        share.event_ids,
        share.affinity,
    )
    log_weights = config.log2_weights
    gap, half_life = config.session_gap_ms, config.affinity_half_life_ms
    started = moved = False
    highest = fence
    names_of = _TILE_NAMES
    duplicates: list[str] = []
    for event in events:
        partition, offset, kind, time_ms, category, is_late, event_id, _product = event
        duplicate = False
        if event_id:
            first = ids.get(event_id)
            if first is not None and first != offset and offset - first <= DEDUPE_OFFSETS:
                duplicate = True
                duplicates.append(f"{partition}:{offset}")
            elif offset > fence and first != offset:
                ids[event_id] = offset
        if offset <= fence:
            continue
        moved = True
        if offset > highest:  # noqa: PLR1730  (faster than max)
            highest = offset
        if duplicate:
            continue
        if is_late:
            share.late_events += 1
        else:
            cached = names_of.get((kind, time_ms // _NAME_TILE_MS))
            for name in (cached or _tile_names(kind, time_ms))[0]:
                tiles[name] = tiles.get(name, 0) + 1
        if newest is None or time_ms > newest + gap:
            session_start, session_events, started = time_ms, 1, True
        else:
            session_events += 1
        if newest is None or time_ms > newest:
            newest = time_ms
        if category:
            if time_ms > categories.get(category, -1):
                categories[category] = time_ms
            log_weight = log_weights.get(kind)
            if log_weight is not None:
                affinity[category] = log_sum(
                    affinity.get(category, EMPTY_DECAYED), log_weight + time_ms / half_life
                )
    if not moved:
        return UserStep(None, False, top_before, top_before, duplicates)
    share.fence = highest
    share.newest_ms = newest
    share.session_start_ms, share.session_events = session_start, session_events
    if len(affinity) > config.affinity_keep:
        ranked = sorted(affinity.items(), key=_score_then_member, reverse=True)
        share.affinity = affinity = dict(ranked[: config.affinity_keep])
    _prune_user(share)
    return UserStep(share, started, top_before, share.top_category(), duplicates)


def _prune_user(share: UserShare) -> None:
    """At most once per PRUNE_EVERY_MS of event time: drop tiles no window at the newest
    event covers, categories out of the 24h window and event ids beyond DEDUPE_OFFSETS."""
    newest = share.newest_ms if share.newest_ms is not None else 0
    step = max(newest, 0) // PRUNE_EVERY_MS
    if share.prune_step is not None and step <= share.prune_step:
        return
    first_prune = share.prune_step is None
    share.prune_step = step
    if first_prune:
        return  # a new share: nothing in it is old yet
    oldest = {WIDTH_NAMES[w.tile_ms]: w.oldest_tile_needed(newest) for w in WINDOWS}
    share.tiles = {
        name: count
        for name, count in share.tiles.items()
        if int(name.rsplit(":", 1)[1]) >= oldest[name.split(":", 3)[2]]
    }
    category_start = ONE_DAY.start_at(newest)
    share.categories = {c: t for c, t in share.categories.items() if t >= category_start}
    horizon = share.fence - DEDUPE_OFFSETS
    share.event_ids = {i: o for i, o in share.event_ids.items() if o >= horizon}


_USER_WIDTHS = tuple((width, TILE_WIDTHS[width]) for width in USER_TILE_WIDTHS)
_PRODUCT_WIDTHS = tuple((width, TILE_WIDTHS[width]) for width in PRODUCT_TILE_WIDTHS)


@dataclass(slots=True)
class SharedWrite:
    """One shared key's part of a batch (a product's, a category's trending set, the
    global hash), one group per source partition, as the script takes them: [partition,
    lowest offset, highest offset, newest event time, watermark, deltas], the deltas a
    flat list of field name and count (hashes) or of product and log2 decayed add
    (trending). Every partition has its own fence in the key (`o:<partition>`): a group
    applies whole when all its events are above it, not at all when none is, and is cut
    at the fence otherwise (`shared_writes` with `cut_at`)."""

    kind: WriteKind
    entity: str  # the product or category id ("" for the global hash)
    key: str  # the hash holding the fences (and, but for trending, the counts)
    also: tuple[str, ...]  # trending: the sorted set
    groups: list[list[object]]


#: A shared key's part of a batch from one partition while it is summed up: lowest and
#: highest offset, newest event time, watermark, deltas by field or product.
_Group = list[Any]


def shared_writes(  # noqa: PLR0912, PLR0915  (the hot loop, kept flat)
    steps: Mapping[str, UserStep],
    plan: FeaturePlan,
    prefix: str,
    config: FeatureConfig,
    cut_at: Mapping[tuple[WriteKind, str, int], int] | None = None,
) -> list[SharedWrite]:
    """The products', categories' and global writes of a batch, from the users' steps:
    duplicates count in none of them (the global hash still takes their time for its
    watermark). Products and categories first, the global hash last: it keeps the
    partitions' watermarks, and a worker that finds them must not find them ahead of
    keys of this batch that were not written.

    With `cut_at` (kind, entity, partition) -> fence, only those groups, with only
    their events above the fence (a group the script handed back)."""
    products: dict[str, dict[int, _Group]] = {}
    categories: dict[str, dict[int, _Group]] = {}
    every: dict[int, _Group] = {}
    log_weights = config.log2_weights
    half_life = config.trending_half_life_ms
    names_of = _TILE_NAMES
    counted = _COUNTED
    # Flat on purpose: a group's creation, widening and counting are written out here
    # rather than called, since the calls were a large share of this loop's time.
    for user, events in plan.users.items():
        duplicates = steps[user].duplicates
        for event in events:
            partition, offset, kind, time_ms, category, is_late, _id, product = event
            duplicate = bool(duplicates) and f"{partition}:{offset}" in duplicates
            every_group = None
            if cut_at is None or offset > cut_at.get((WriteKind.GLOBAL, "", partition), _NONE):
                every_group = every.get(partition)
                if every_group is None:
                    every_group = every[partition] = [offset, offset, -1, time_ms, {}]
                else:
                    if offset < every_group[0]:
                        every_group[0] = offset
                    elif offset > every_group[1]:
                        every_group[1] = offset
                    if time_ms > every_group[3]:  # noqa: PLR1730  (faster than max)
                        every_group[3] = time_ms  # the watermark takes duplicates too
                if not duplicate and time_ms > every_group[2]:
                    every_group[2] = time_ms
            if duplicate or not product:
                continue
            if kind in counted:
                names: tuple[str, ...] | None = None
                if not is_late:
                    cached = names_of.get((kind, time_ms // _NAME_TILE_MS))
                    names = (cached or _tile_names(kind, time_ms))[1]
                if every_group is not None:
                    if time_ms > every_group[2]:  # noqa: PLR1730
                        every_group[2] = time_ms
                    if names is not None:
                        counts = every_group[4]
                        for name in names:
                            counts[name] = counts.get(name, 0) + 1
                if cut_at is None or offset > cut_at.get(
                    (WriteKind.PRODUCT, product, partition), _NONE
                ):
                    by_partition = products.get(product)
                    if by_partition is None:
                        by_partition = products[product] = {}
                    group = by_partition.get(partition)
                    if group is None:
                        group = by_partition[partition] = [offset, offset, time_ms, -1, {}]
                    else:
                        if offset < group[0]:
                            group[0] = offset
                        elif offset > group[1]:
                            group[1] = offset
                        if time_ms > group[2]:  # noqa: PLR1730
                            group[2] = time_ms
                    if names is not None:
                        counts = group[4]
                        for name in names:
                            counts[name] = counts.get(name, 0) + 1
            log_weight = log_weights.get(kind)
            if not category or log_weight is None:
                continue
            if cut_at is not None and offset <= cut_at.get(
                (WriteKind.TRENDING, category, partition), _NONE
            ):
                continue
            by_partition = categories.get(category)
            if by_partition is None:
                by_partition = categories[category] = {}
            group = by_partition.get(partition)
            if group is None:
                group = by_partition[partition] = [offset, offset, -1, -1, {}]
            elif offset < group[0]:
                group[0] = offset
            elif offset > group[1]:
                group[1] = offset
            adds = group[4]
            adds[product] = log_sum(
                adds.get(product, EMPTY_DECAYED), log_weight + time_ms / half_life
            )
    writes = [
        SharedWrite(
            WriteKind.PRODUCT, product, product_features_key(prefix, product), (), _rows(groups)
        )
        for product, groups in products.items()
    ]
    writes += [
        SharedWrite(
            WriteKind.TRENDING,
            category,
            trending_fence_key(prefix, category),
            (trending_key(prefix, category),),
            _rows(groups),
        )
        for category, groups in categories.items()
    ]
    if every:
        writes.append(
            SharedWrite(WriteKind.GLOBAL, "", global_features_key(prefix), (), _rows(every))
        )
    return writes


def _rows(groups: Mapping[int, _Group]) -> list[list[object]]:
    return [
        [partition, lowest, highest, newest, watermark, [*_flat(deltas.items())]]
        for partition, (lowest, highest, newest, watermark, deltas) in groups.items()
    ]


_flat = itertools.chain.from_iterable


_COUNTED = frozenset(kind.value for kind in PRODUCT_COUNTED_TYPES)

#: Tile names are cached per (event type, minute of event time): every width is a whole
#: number of minutes, so a minute's tiles are the same for all its events, and most events
#: of a batch fall in a few minutes. Formatting three names an event was ~0.4 us of it.
_NAME_TILE_MS = 60_000
assert all(width % _NAME_TILE_MS == 0 for width in TILE_WIDTHS.values())
#: (type, minute) -> (the user's tile names, the products' tile names).
_TILE_NAMES: dict[tuple[str, int], tuple[tuple[str, ...], tuple[str, ...]]] = {}
_TILE_NAMES_KEPT = 4096


def _tile_names(kind: str, time_ms: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The counters an event of `kind` at `time_ms` goes to (`count_field`'s names), per
    user widths and per product widths; remembered in `_TILE_NAMES`."""
    if len(_TILE_NAMES) >= _TILE_NAMES_KEPT:
        _TILE_NAMES.clear()
    names = _TILE_NAMES[kind, time_ms // _NAME_TILE_MS] = (
        tuple(f"n:{kind}:{width}:{time_ms // width_ms}" for width, width_ms in _USER_WIDTHS),
        tuple(f"n:{kind}:{width}:{time_ms // width_ms}" for width, width_ms in _PRODUCT_WIDTHS),
    )
    return names


#: No cut for this group: no offset is above it.
_NONE = math.inf


def script_config(config: FeatureConfig) -> dict[str, object]:
    """The definitions' numbers the write script needs (`sinks.feature_store`)."""
    return {
        "widths": TILE_WIDTHS,
        "windows": WINDOW_OF_WIDTH,
        "user_widths": list(USER_TILE_WIDTHS),
        "product_widths": list(PRODUCT_TILE_WIDTHS),
        "category_window": [ONE_DAY.length_ms, ONE_DAY.tile_ms],
        "weights": {kind.value: weight for kind, weight in config.weights.items()},
        "affinity_half_life": config.affinity_half_life_ms,
        "trending_half_life": config.trending_half_life_ms,
        "session_gap": config.session_gap_ms,
        "counter_ttl": config.counter_ttl_ms,
        "affinity_ttl": config.affinity_ttl_ms,
        "trending_ttl": config.trending_ttl_ms,
        "affinity_keep": config.affinity_keep,
        "trending_keep": config.trending_keep,
    }


# --- The offline computation -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Logged:
    event: CountedEvent
    late: bool


def is_duplicate(first_reads: dict[str, int], event: CountedEvent) -> bool:
    """The duplicate rule, in read order per user: an event whose id was first read at
    another offset at most DEDUPE_OFFSETS before is a duplicate; otherwise this offset is
    where its id was first read (an empty id is never a duplicate)."""
    if not event.event_id:
        return False
    first = first_reads.get(event.event_id)
    if first is not None and first != event.offset and event.offset - first <= DEDUPE_OFFSETS:
        return True
    first_reads[event.event_id] = event.offset
    return False


class OfflineFeatures:
    """Features as of any time, recomputed from an event log with the same definitions.

    The log is given in read order (each partition's events by offset; partitions may
    interleave); a record seen twice (same partition and offset) counts once, and a
    duplicate event (`is_duplicate`) not at all. Lateness is decided as the worker decides
    it: against the watermark of everything the partition delivered before. A query at T
    leaves out every event later than T. Trimming of the decayed sets
    (`FeatureConfig.affinity_keep`, `trending_keep`) is not replayed: the two agree while
    no user has more categories, and no category more products, than that.
    """

    def __init__(self, log: Iterable[CountedEvent], config: FeatureConfig) -> None:
        self.config = config
        self._by_user: dict[str, list[_Logged]] = {}
        self._by_product: dict[str, list[_Logged]] = {}
        self._by_category: dict[str, list[_Logged]] = {}
        self._counted: list[_Logged] = []
        seen: set[tuple[int, int]] = set()
        marks: dict[int, int] = {}
        first_reads: dict[str, dict[str, int]] = {}  # user -> event id -> first offset
        for event in log:
            if (event.partition, event.offset) in seen:
                continue
            seen.add((event.partition, event.offset))
            mark = marks.get(event.partition)
            marks[event.partition] = advanced(mark, event.event_time_ms)
            if is_duplicate(first_reads.setdefault(event.user_id, {}), event):
                continue
            logged = _Logged(event, too_late(event.event_time_ms, mark, config.allowed_lateness_ms))
            self._by_user.setdefault(event.user_id, []).append(logged)
            if event.product_id is None:
                continue
            if event.event_type in PRODUCT_COUNTED_TYPES:
                self._by_product.setdefault(event.product_id, []).append(logged)
                self._counted.append(logged)
            if event.category_id:
                self._by_category.setdefault(event.category_id, []).append(logged)

    def _counts(
        self,
        logged: Iterable[_Logged],
        windows: Sequence[Window],
        types: Iterable[EventType],
        at_ms: int,
    ) -> WindowCounts:
        kinds = list(types)
        times: dict[EventType, list[int]] = {kind: [] for kind in kinds}
        for item in logged:
            if not item.late and item.event.event_type in times:
                times[item.event.event_type].append(item.event.event_time_ms)
        return {
            window.name: {kind: window_count(window, times[kind], at_ms) for kind in kinds}
            for window in windows
        }

    def user(self, user_id: str, at_ms: int, top_n: int = 5) -> UserFeatures:
        config = self.config
        logged = [i for i in self._by_user.get(user_id, []) if i.event.event_time_ms <= at_ms]
        newest: int | None = None
        session = 0
        categories: dict[str, int] = {}
        for item in logged:  # read order: the session rule's order
            time_ms = item.event.event_time_ms
            starts = newest is None or time_ms > newest + config.session_gap_ms
            session = 1 if starts else session + 1
            newest = advanced(newest, time_ms)
            if item.event.category_id:
                category = item.event.category_id
                categories[category] = max(categories.get(category, time_ms), time_ms)
        state = UserState(newest, session, sum(i.late for i in logged), categories)
        return UserFeatures(
            user_id=user_id,
            at_ms=at_ms,
            counts=self._counts(logged, WINDOWS, EventType, at_ms),
            distinct_categories_24h=distinct_categories_at(categories, at_ms),
            ms_since_previous=None if newest is None else at_ms - newest,
            session_events=session_events_at(state, at_ms, config),
            late_events=state.late_events,
            top_categories=top_decayed(
                self.affinity_scores(user_id, at_ms).items(),
                at_ms,
                config.affinity_half_life_ms,
                top_n,
            ),
        )

    def affinity_scores(self, user_id: str, at_ms: int) -> dict[str, float]:
        """Per category, the user's log2 decayed score over events at or before `at_ms`."""
        return self._decayed(
            self._by_user.get(user_id, []),
            lambda event: event.category_id,
            at_ms,
            self.config.affinity_half_life_ms,
        )

    def trending_scores(self, category_id: str, at_ms: int) -> dict[str, float]:
        """Per product of the category, its log2 decayed popularity at `at_ms`."""
        return self._decayed(
            self._by_category.get(category_id, []),
            lambda event: event.product_id,
            at_ms,
            self.config.trending_half_life_ms,
        )

    def _decayed(
        self,
        logged: Iterable[_Logged],
        member_of: Callable[[CountedEvent], str | None],
        at_ms: int,
        half_life_ms: int,
    ) -> dict[str, float]:
        """Per member, the log2 decayed sum of the weighted events at or before `at_ms`."""
        scores: dict[str, float] = {}
        for item in logged:
            event = item.event
            weight = self.config.weights.get(event.event_type)
            member = member_of(event)
            if event.event_time_ms > at_ms or weight is None or not member:
                continue
            scores[member] = decayed_add(
                scores.get(member, EMPTY_DECAYED), weight, event.event_time_ms, half_life_ms
            )
        return scores

    def trending(self, category_id: str, at_ms: int, n: int) -> list[tuple[str, float]]:
        return top_decayed(
            self.trending_scores(category_id, at_ms).items(),
            at_ms,
            self.config.trending_half_life_ms,
            n,
        )

    def product(self, product_id: str, at_ms: int) -> ProductFeatures:
        def upto(logged: Iterable[_Logged]) -> list[_Logged]:
            return [i for i in logged if i.event.event_time_ms <= at_ms]

        counts = self._counts(
            upto(self._by_product.get(product_id, [])),
            PRODUCT_WINDOWS,
            PRODUCT_COUNTED_TYPES,
            at_ms,
        )
        global_counts = self._counts(
            upto(self._counted), PRODUCT_WINDOWS, PRODUCT_COUNTED_TYPES, at_ms
        )
        click_rate, cart_rate = _rates(counts, global_counts, self.config)
        return ProductFeatures(product_id, at_ms, counts, click_rate, cart_rate)
