"""The ranker's point-in-time training set: one row per impression, built by replaying an
event log through the live feature code.

An impression is a view: a product shown to a user at a feed position at time T. Its row
(`streams.logic.ranking.feature_row`) holds the features as of T from every event
strictly before T, never one at or after it: the log is replayed in event-time order and,
at each instant, the rows of that instant's views are taken before any of its events is
applied. The user's features come from the share the worker stores
(`schemas.features.advance_user`, read back with `user_features_of`), the product's from
tile fields named and read as the product hashes are (`product_features_of`): the same
code the live ranker's inputs come from.

Label: 1 when the user clicks the same product later in the same session (the session
rule of `schemas.features`), 2 when they also order it, else 0. Rows are grouped by
session (for NDCG).

Differences from the live stores, on purpose: the replay is in event-time order, so no
event is ever "too late" for its tile (the live worker leaves events more than the allowed
lateness behind their partition's watermark out of the tiles: a tiny share, see the
features' docstring), and no decayed set is trimmed.

Candidate recall: at the start of each returning user's session (before its first
event), the replay also runs the candidate generator (`streams.logic.candidates`) on the
state at that instant, trending lists refreshed every `refresh_ms` of event time as the
ranker refreshes its own, and records which of that session's clicks were among the
candidates.

Serving rows (the drift check's reference, `streams.logic.drift`): the worker's trigger
rule (`streams.logic.triggers.decide`) runs on every event, one event per batch, and at
the instants it fires the replay takes a few of the candidates the ranker would generate
then, as rows at feed position 0: the population the ranker scores live, which the
impressions (products already shown, at their positions) are not.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from schemas.catalog import CatalogItem
from schemas.events import Event, EventType
from schemas.feature_layout import PRODUCT_COUNTED_TYPES, PRUNE_EVERY_MS
from schemas.features import (
    PRODUCT_WINDOWS,
    FeatureConfig,
    UserShare,
    WindowCounts,
    advance_user,
    log_sum,
    product_features_from_counts,
    top_decayed,
    user_features_of,
    window_total,
)
from streams.logic.candidates import CandidateBudget, SharedView, merge_candidates
from streams.logic.ranking import (
    UserContext,
    feature_row,
    popularity,
    product_context,
    user_context,
)
from streams.logic.triggers import (
    HIGH_INTENT_TYPES,
    TriggerRules,
    TriggerState,
    UserBatch,
    decide,
)

#: The ranker reads this many of each last-k type per trigger.
LAST_K = 20
#: The ranker refreshes its trending view every 10 s of wall time; the replay every 10
#: minutes of event time (a replayed day is not ten thousand refreshes).
REFRESH_MS = 600_000
#: Trending products each category keeps in the shared view (the ranker's setting).
TRENDING_PER_CATEGORY = 50

#: Candidates of a sampled trigger turned into serving rows (every n-th of the merged list).
SERVING_ROWS_PER_TRIGGER = 4
#: Serving rows aimed for (plenty for deciles of every feature): each trigger is sampled
#: with the probability that gives about this many over the log, from the number of
#: events and TRIGGERS_PER_EVENT; the candidates of one trigger cost about 1 ms.
SERVING_ROWS_TARGET = 12_000
#: Triggers per event of generated traffic under the default rules (29,923 of 100,000).
TRIGGERS_PER_EVENT = 0.3
#: At most this many serving rows in all, whatever the log: when the list is full, every
#: other row goes and only half as many triggers are sampled from then on.
MAX_SERVING_ROWS = 20_000
#: Serving rows are taken this long after the trigger's event, on average (exponentially
#: distributed): the ranker ranks a trigger moments after the event, and features of time
#: since the newest event see that delay (click to feed: p50 32 ms, p99 151 ms measured
#: with the closed-loop benchmark). `signals drift` scores a sampled user as of their
#: newest event plus this delay.
SERVING_LAG_MS = 50


#: How often (event time) the replay takes a snapshot of hot users, and how many.
SNAPSHOT_EVERY_MS = 120_000
SNAPSHOT_USERS = 20


def serving_lags(seed: int = 0) -> Callable[[], int]:
    """Delays from an event to its ranking, exponentially distributed with mean
    SERVING_LAG_MS (the replay's and `signals drift`'s, so both spread alike)."""
    draw = random.Random(seed).expovariate
    return lambda: round(draw(1 / SERVING_LAG_MS))


_LAST_K_TYPES = (EventType.VIEW, EventType.WISHLIST, EventType.ADD_TO_CART, EventType.ORDER)


@dataclass
class Probe:
    """The candidates generated at a session's start, and the clicks of that session."""

    at_ms: int
    candidates: frozenset[str]
    clicked: set[str] = field(default_factory=set)


@dataclass
class TrainingSet:
    rows: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    times: list[int] = field(default_factory=list)
    sessions: list[int] = field(default_factory=list)  # a number per (user, session)
    popularity: list[float] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    products: list[str] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    #: Rows as the ranker builds them when serving: at the instants the worker's trigger
    #: rule fires, a few of the candidates it would generate, at feed position 0 (the
    #: reference the drift check compares live rows with), sampled at random over the log.
    serving_rows: list[list[float]] = field(default_factory=list)
    #: Rows of hot users as of snapshot instants every SNAPSHOT_EVERY_MS of event time:
    #: the reference of `signals drift`, which scores hot users as they are now.
    snapshot_rows: list[list[float]] = field(default_factory=list)
    triggers: int = 0
    events: int = 0
    duplicates: int = 0


class _Counts:
    """Tile counts of one product (or of every product) per event type and tile width,
    read with the definition's `window_total`, pruned as the store prunes its hashes."""

    __slots__ = ("pruned_at", "tiles")

    def __init__(self) -> None:
        self.tiles: dict[tuple[EventType, int], dict[int, int]] = {}
        self.pruned_at = -PRUNE_EVERY_MS

    def add(self, kind: EventType, time_ms: int) -> None:
        for window in PRODUCT_WINDOWS:
            tiles = self.tiles.get((kind, window.tile_ms))
            if tiles is None:
                tiles = self.tiles[kind, window.tile_ms] = {}
            tile = time_ms // window.tile_ms
            tiles[tile] = tiles.get(tile, 0) + 1
        if time_ms - self.pruned_at >= PRUNE_EVERY_MS:
            self.pruned_at = time_ms
            for window in PRODUCT_WINDOWS:
                oldest = window.oldest_tile_needed(time_ms)
                for kind_ in PRODUCT_COUNTED_TYPES:
                    tiles = self.tiles.get((kind_, window.tile_ms))
                    if tiles and min(tiles) < oldest:
                        self.tiles[kind_, window.tile_ms] = {
                            t: n for t, n in tiles.items() if t >= oldest
                        }

    def at(self, at_ms: int) -> WindowCounts:
        empty: dict[int, int] = {}
        return {
            window.name: {
                kind: window_total(window, self.tiles.get((kind, window.tile_ms), empty), at_ms)
                for kind in PRODUCT_COUNTED_TYPES
            }
            for window in PRODUCT_WINDOWS
        }


_NO_COUNTS = _Counts()
_NO_TRIGGER_STATE = TriggerState()


class PointInTimeReplay:
    """Builds a `TrainingSet` from events in any order (sorted here by event time)."""

    def __init__(
        self,
        catalog: Mapping[str, CatalogItem],
        config: FeatureConfig,
        *,
        budget: CandidateBudget | None = None,
        refresh_ms: int = REFRESH_MS,
        probes: bool = True,
        trigger_rules: TriggerRules | None = None,
    ) -> None:
        self.catalog = catalog
        self.config = config
        self.budget = budget or CandidateBudget()
        self.refresh_ms = refresh_ms
        self.probes_enabled = probes
        self.result = TrainingSet()
        self._offset = 0
        self._shares: dict[str, UserShare] = {}
        self._last_k: dict[str, dict[EventType, dict[str, int]]] = {}
        self._products: dict[str, _Counts] = {}
        self._every = _Counts()
        #: Every product's windows at one instant (rows of one instant share them).
        self._every_cached: tuple[int, WindowCounts] | None = None
        self._trending: dict[str, dict[str, float]] = {}
        self._session_numbers: dict[tuple[str, int], int] = {}
        self._shown: dict[tuple[str, int, str], list[int]] = {}
        self._probe_of: dict[str, tuple[int, Probe]] = {}  # user -> (session start, probe)
        self._view: SharedView | None = None
        self._view_at = -refresh_ms
        self.trigger_rules = trigger_rules or TriggerRules()
        self._trigger_states: dict[str, TriggerState] = {}
        self._serving_share = 1.0  # set per log in `run`
        self._serving_draw = random.Random(2).random
        self._lag = serving_lags()  # the same log gives the same rows
        self._snapshot_at = -SNAPSHOT_EVERY_MS
        self._snapshot_rng = random.Random(1)
        self._language: dict[str, str] = {}
        categories = sorted({item.category_id for item in catalog.values()})
        self._categories = categories
        self._languages = {item.product_id: item.language for item in catalog.values()}
        by_age = sorted(catalog.values(), key=lambda item: (-item.created_ms, item.product_id))
        newest: dict[str, list[str]] = {}
        for item in by_age:
            listed = newest.setdefault(item.category_id, [])
            if len(listed) < self.budget.new:
                listed.append(item.product_id)
        self._newest = [newest.get(c, []) for c in categories]
        self._newest.append([item.product_id for item in by_age[: self.budget.new]])

    def run(
        self, events: Iterable[Event], progress: Callable[[int], None] | None = None
    ) -> TrainingSet:
        ordered = sorted(events, key=lambda event: event.event_time_ms)
        expected_rows = SERVING_ROWS_PER_TRIGGER * TRIGGERS_PER_EVENT * max(1, len(ordered))
        self._serving_share = min(1.0, SERVING_ROWS_TARGET / expected_rows)
        for at_ms, group in itertools.groupby(ordered, key=lambda event: event.event_time_ms):
            instant = list(group)
            rows = {
                index: self._impression(event, at_ms)
                for index, event in enumerate(instant)
                if event.event_type is EventType.VIEW and event.product_id
            }
            for index, event in enumerate(instant):
                self._apply(event, rows.get(index))
            if self.probes_enabled and at_ms - self._snapshot_at >= SNAPSHOT_EVERY_MS:
                self._snapshot(at_ms)
            if progress is not None:
                progress(len(instant))
        return self.result

    # --- rows ------------------------------------------------------------------------

    def _impression(self, event: Event, at_ms: int) -> tuple[list[float], float]:
        assert event.product_id is not None
        context = self._user_context(event.user_id, event.language, at_ms)
        return self._row(
            context, event.product_id, event.category_id, event.feed_position or 0, at_ms
        )

    def _user_context(self, user: str, language: str, at_ms: int) -> UserContext:
        share = self._shares.get(user)
        features = user_features_of(user, share, at_ms=at_ms, config=self.config)
        return user_context(
            features,
            share.affinity if share is not None else {},
            self._last_k_lists(user),
            language,
            self.config,
        )

    def _row(
        self, context: UserContext, product: str, category: str | None, position: int, at_ms: int
    ) -> tuple[list[float], float]:
        config = self.config
        every = self._every_at(at_ms)
        counts = self._products.get(product, _NO_COUNTS).at(at_ms)
        product_features = product_features_from_counts(product, counts, every, at_ms, config)
        item = self.catalog.get(product)
        row = feature_row(
            context,
            product,
            product_context(product_features, every, item, category=category),
            position,
        )
        return row, popularity(product_features, config)

    def _every_at(self, at_ms: int) -> WindowCounts:
        cached = self._every_cached
        if cached is None or cached[0] != at_ms:
            cached = self._every_cached = (at_ms, self._every.at(at_ms))
        return cached[1]

    def _last_k_lists(self, user: str) -> dict[EventType, list[str]]:
        lists = self._last_k.get(user)
        if lists is None:
            return {}
        return {
            kind: sorted(times, key=times.__getitem__, reverse=True)[:LAST_K]
            for kind, times in lists.items()
        }

    # --- applying an event -----------------------------------------------------------

    def _apply(self, event: Event, impression: tuple[list[float], float] | None) -> None:
        result = self.result
        result.events += 1
        self._offset += 1
        user, kind, at_ms = event.user_id, event.event_type, event.event_time_ms
        product, category = event.product_id or "", event.category_id or ""
        share = self._shares.get(user)
        starts = share is None or (
            share.newest_ms is not None and at_ms > share.newest_ms + self.config.session_gap_ms
        )
        if starts and share is not None and self.probes_enabled:
            self._probe(user, share, at_ms, event.language)
        planned = (0, self._offset, kind.value, at_ms, category, 0, event.event_id, product)
        step = advance_user(share, [planned], self.config)
        if step.duplicates:
            result.duplicates += 1
            return
        assert step.share is not None
        self._shares[user] = share = step.share
        self._language[user] = event.language
        session_start = share.session_start_ms or at_ms
        if product:
            self._remember(user, kind, product, at_ms)
            if kind in PRODUCT_COUNTED_TYPES:
                counts = self._products.get(product)
                if counts is None:
                    counts = self._products[product] = _Counts()
                counts.add(kind, at_ms)
                self._every.add(kind, at_ms)
                self._every_cached = None
            log_weight = self.config.log2_weights.get(kind.value)
            if category and log_weight is not None:
                scores = self._trending.setdefault(category, {})
                term = log_weight + at_ms / self.config.trending_half_life_ms
                scores[product] = log_sum(scores.get(product, -float("inf")), term)
        if self.probes_enabled:
            self._serve_on_trigger(event, share, starts)
        if impression is not None:
            self._add_row(user, product, session_start, at_ms, impression)
        elif kind in (EventType.CLICK, EventType.ORDER) and product:
            grade = 2 if kind is EventType.ORDER else 1
            for index in self._shown.get((user, session_start, product), ()):
                result.labels[index] = max(result.labels[index], grade)
            if kind is EventType.CLICK:
                found = self._probe_of.get(user)
                if found is not None and found[0] == session_start:
                    found[1].clicked.add(product)

    def _add_row(
        self,
        user: str,
        product: str,
        session_start: int,
        at_ms: int,
        impression: tuple[list[float], float],
    ) -> None:
        result = self.result
        row, score = impression
        session = self._session_numbers.setdefault(
            (user, session_start), len(self._session_numbers)
        )
        self._shown.setdefault((user, session_start, product), []).append(len(result.rows))
        result.rows.append(row)
        result.labels.append(0)
        result.times.append(at_ms)
        result.sessions.append(session)
        result.popularity.append(score)
        result.users.append(user)
        result.products.append(product)

    def _remember(self, user: str, kind: EventType, product: str, at_ms: int) -> None:
        if kind not in _LAST_K_TYPES:
            return
        lists = self._last_k.setdefault(user, {})
        times = lists.setdefault(kind, {})
        if at_ms > times.get(product, -1):  # ZADD GT
            times[product] = at_ms
        if len(times) > 2 * LAST_K:
            keep = sorted(times, key=times.__getitem__, reverse=True)[:LAST_K]
            lists[kind] = {p: times[p] for p in keep}

    def _probe(self, user: str, share: UserShare, at_ms: int, language: str) -> None:
        """The candidates the ranker would generate as the user's new session starts."""
        view = self._shared_view(at_ms)
        budget = self.budget
        affinities = top_decayed(
            share.affinity.items(),
            at_ms,
            self.config.affinity_half_life_ms,
            budget.affinity_categories,
        )
        inputs = view.inputs_for(affinities, self._last_k_lists(user), budget, language)
        candidates = merge_candidates(inputs, budget, seed=self._offset)
        probe = Probe(at_ms, frozenset(c.product_id for c in candidates))
        self.result.probes.append(probe)
        self._probe_of[user] = (at_ms, probe)

    def _serve_on_trigger(self, event: Event, share: UserShare, session_started: bool) -> None:
        """Run the worker's trigger rule on the event (one event, one batch); when it
        fires, take serving rows of the user at this instant, as the ranker would."""
        user, kind, at_ms = event.user_id, event.event_type, event.event_time_ms
        batch = UserBatch(
            newest_event_ms=at_ms,
            newest_offset=self._offset,
            views=int(kind is EventType.VIEW),
            high_intent=kind in HIGH_INTENT_TYPES,
            session_started=session_started,
            top_category=share.top_category(),
        )
        state = self._trigger_states.get(user, _NO_TRIGGER_STATE)
        trigger, self._trigger_states[user] = decide(state, batch, self.trigger_rules)
        if trigger is None:
            return
        result = self.result
        result.triggers += 1
        if self._serving_draw() >= self._serving_share:
            return
        serving = result.serving_rows
        serving += self._candidate_rows(
            user, share, event.language, at_ms + self._lag(), seed=trigger.sequence
        )
        if len(serving) >= MAX_SERVING_ROWS:
            del serving[1::2]
            self._serving_share /= 2

    def _snapshot(self, at_ms: int) -> None:
        """Rows of a sample of the users hot at `at_ms` (newest event within the session
        gap), as of `at_ms`."""
        self._snapshot_at = at_ms
        since = at_ms - self.config.session_gap_ms
        hot = [u for u, share in self._shares.items() if (share.newest_ms or 0) >= since]
        rows = self.result.snapshot_rows
        if len(rows) >= MAX_SERVING_ROWS or not hot:
            return
        for user in self._snapshot_rng.sample(hot, min(SNAPSHOT_USERS, len(hot))):
            language = self._language.get(user, "")
            rows += self._candidate_rows(user, self._shares[user], language, at_ms, seed=at_ms)

    def _candidate_rows(
        self, user: str, share: UserShare, language: str, at_ms: int, *, seed: int
    ) -> list[list[float]]:
        """A few of the candidates the ranker would generate for the user at `at_ms`, as
        rows at feed position 0."""
        view = self._shared_view(at_ms)
        affinities = top_decayed(
            share.affinity.items(),
            at_ms,
            self.config.affinity_half_life_ms,
            self.budget.affinity_categories,
        )
        inputs = view.inputs_for(affinities, self._last_k_lists(user), self.budget, language)
        candidates = merge_candidates(inputs, self.budget, seed=seed)
        context = self._user_context(user, language, at_ms)
        step = max(1, len(candidates) // SERVING_ROWS_PER_TRIGGER)
        rows = []
        for candidate in candidates[::step][:SERVING_ROWS_PER_TRIGGER]:
            item = self.catalog.get(candidate.product_id)
            category = item.category_id if item is not None else None
            rows.append(self._row(context, candidate.product_id, category, 0, at_ms)[0])
        return rows

    def _shared_view(self, at_ms: int) -> SharedView:
        if self._view is None or at_ms - self._view_at >= self.refresh_ms:
            half_life = self.config.trending_half_life_ms
            trending = [
                top_decayed(
                    self._trending.get(c, {}).items(), at_ms, half_life, TRENDING_PER_CATEGORY
                )
                for c in self._categories
            ]
            self._view = SharedView.of(
                self._categories, trending, self._newest, self.budget.total, self._languages
            )
            self._view_at = at_ms
        return self._view


def training_set(
    events: Iterable[Event],
    catalog: Mapping[str, CatalogItem],
    config: FeatureConfig,
    *,
    probes: bool = True,
    progress: Callable[[int], None] | None = None,
) -> TrainingSet:
    """The rows, labels and recall probes of an event log (see the module docstring)."""
    return PointInTimeReplay(catalog, config, probes=probes).run(events, progress)
