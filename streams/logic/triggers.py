"""When a user's feed is stale enough to re-rank: the rank-refresh trigger decision.

Pure, per user and per batch, on event time (so a replay decides the same), shared by
the worker and any offline analysis of the trigger rate. A trigger fires for:

- a high-intent event (click, add-to-cart, wishlist, order): always, never debounced;
- a session start;
- a change of the user's top category since the last trigger;
- `views_per_trigger` views since the last trigger.

All but high-intent are debounced: at most one per `debounce_ms` of event time after the
previous trigger. A reason held back by the debounce is not lost while it still holds
(the views keep counting, the top category still differs), so it fires on a later batch;
a session start held back is dropped, since a trigger went out moments before it.
Each trigger's sequence is the events-topic offset of the newest event behind it: it
grows per user (a user's events share a partition) across restarts and owners without
any stored counter, and a batch read again yields the same sequence, so the ranker can
drop stale or repeated triggers.

The state lives in the worker's memory. After a restart or a rebalance a user starts
fresh, with the top category as the store had it before the batch (so no change is
invented) and no views counted: the first batch triggers only for what it really shows,
and the re-read batches repeat their triggers with their old sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.events import EventType
from schemas.triggers import Reason

#: The events that trigger at once, never debounced.
HIGH_INTENT_TYPES = frozenset(
    {EventType.CLICK, EventType.ADD_TO_CART, EventType.WISHLIST, EventType.ORDER}
)


@dataclass(frozen=True, slots=True)
class TriggerRules:
    debounce_ms: int = 10_000
    views_per_trigger: int = 5

    def __post_init__(self) -> None:
        if self.debounce_ms < 0 or self.views_per_trigger < 1:
            raise ValueError("debounce_ms must be >= 0 and views_per_trigger >= 1")


@dataclass(frozen=True, slots=True)
class TriggerState:
    """What the decision remembers per user between batches."""

    last_trigger_ms: int | None = None  # event time of the last trigger
    views_since: int = 0
    top_category: str | None = None  # as of the last trigger
    seen_ms: int | None = None  # newest event time of the user's batches
    decided_offset: int = -1  # the highest offset decided on (the caller skips re-reads)


@dataclass(frozen=True, slots=True)
class UserBatch:
    """One batch's signals of one user."""

    newest_event_ms: int
    newest_offset: int
    views: int = 0
    high_intent: bool = False
    session_started: bool = False
    top_category: str | None = None  # after this batch


@dataclass(frozen=True, slots=True)
class Trigger:
    sequence: int
    reason: Reason
    newest_event_ms: int
    newest_offset: int


def decide(
    state: TriggerState, batch: UserBatch, rules: TriggerRules
) -> tuple[Trigger | None, TriggerState]:
    """The trigger this batch causes (or None), and the user's state after it."""
    views = state.views_since + batch.views
    reason = _reason(state, batch, rules, views)
    debounced = (
        state.last_trigger_ms is not None
        and batch.newest_event_ms - state.last_trigger_ms < rules.debounce_ms
    )
    seen = (
        batch.newest_event_ms
        if state.seen_ms is None
        else max(state.seen_ms, batch.newest_event_ms)
    )
    decided = max(state.decided_offset, batch.newest_offset)
    if reason is None or (debounced and reason is not Reason.HIGH_INTENT):
        # Built field by field: `dataclasses.replace` costs twice as much, once per user
        # and batch.
        kept = TriggerState(state.last_trigger_ms, views, state.top_category, seen, decided)
        return None, kept
    trigger = Trigger(batch.newest_offset, reason, batch.newest_event_ms, batch.newest_offset)
    last = max(state.last_trigger_ms or batch.newest_event_ms, batch.newest_event_ms)
    return trigger, TriggerState(
        last_trigger_ms=last,
        views_since=0,
        top_category=batch.top_category or state.top_category,
        seen_ms=seen,
        decided_offset=decided,
    )


def _reason(
    state: TriggerState, batch: UserBatch, rules: TriggerRules, views: int
) -> Reason | None:
    if batch.high_intent:
        return Reason.HIGH_INTENT
    if batch.session_started:
        return Reason.SESSION_START
    if batch.top_category is not None and batch.top_category != state.top_category:
        return Reason.TOP_CATEGORY
    if views >= rules.views_per_trigger:
        return Reason.VIEWS
    return None
