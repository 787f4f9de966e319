"""The rank-refresh trigger decision (`streams.logic.triggers`)."""

from __future__ import annotations

from io import BytesIO

import pytest
from fastavro import schemaless_writer
from hypothesis import given
from hypothesis import strategies as st

from schemas.registry import schema_for
from schemas.triggers import (
    RankTrigger,
    Reason,
    decode_trigger,
    encode_trigger,
    encode_trigger_fastavro,
)
from schemas.wire import HEADER, MAGIC
from streams.logic.ranking import in_holdout
from streams.logic.triggers import TriggerRules, TriggerState, UserBatch, decide

RULES = TriggerRules(debounce_ms=10_000, views_per_trigger=3)
T0 = 1_760_000_000_000


def batch(at: int, **signals: object) -> UserBatch:
    return UserBatch(newest_event_ms=T0 + at, newest_offset=at, **signals)  # type: ignore[arg-type]


def test_high_intent_always_fires_and_its_sequence_is_the_newest_offset() -> None:
    first, state = decide(TriggerState(), batch(0, high_intent=True), RULES)
    second, state = decide(state, batch(1, high_intent=True), RULES)  # within the debounce
    assert first is not None and first.reason is Reason.HIGH_INTENT and first.sequence == 0
    assert second is not None and second.sequence == 1
    assert (second.newest_event_ms, second.newest_offset) == (T0 + 1, 1)


def test_views_accumulate_and_fire_once_the_debounce_allows() -> None:
    state = TriggerState()
    fired = []
    for at in range(0, 30_000, 1_000):  # a view a second
        trigger, state = decide(state, batch(at, views=1), RULES)
        if trigger:
            fired.append((at, trigger.reason))
    # First at the 3rd view; then the debounce holds the views back until 10 s passed.
    assert fired == [(2_000, Reason.VIEWS), (12_000, Reason.VIEWS), (22_000, Reason.VIEWS)]


def test_a_top_category_change_fires_and_is_remembered() -> None:
    trigger, state = decide(TriggerState(), batch(0, top_category="c1"), RULES)
    assert trigger is not None and trigger.reason is Reason.TOP_CATEGORY
    again, state = decide(state, batch(20_000, top_category="c1"), RULES)
    assert again is None  # unchanged
    held, state = decide(state, batch(25_000, top_category="c2"), RULES)
    assert held is not None and held.reason is Reason.TOP_CATEGORY


def test_a_debounced_category_change_fires_on_a_later_batch() -> None:
    _, state = decide(TriggerState(), batch(0, high_intent=True, top_category="c1"), RULES)
    held, state = decide(state, batch(1_000, top_category="c2"), RULES)
    assert held is None
    later, state = decide(state, batch(11_000), RULES)
    assert later is None  # the batch says nothing of the category: nothing to compare
    later, state = decide(state, batch(12_000, top_category="c2"), RULES)
    assert later is not None and later.reason is Reason.TOP_CATEGORY


def test_a_session_start_fires_unless_a_trigger_just_went_out() -> None:
    trigger, state = decide(TriggerState(), batch(0, session_started=True), RULES)
    assert trigger is not None and trigger.reason is Reason.SESSION_START
    dropped, state = decide(state, batch(5_000, session_started=True), RULES)
    assert dropped is None
    assert decide(state, batch(6_000), RULES)[0] is None  # not kept for later


def test_bad_rules_are_refused() -> None:
    with pytest.raises(ValueError):
        TriggerRules(views_per_trigger=0)


@given(
    st.lists(
        st.tuples(
            st.integers(1, 5_000),  # offsets (here: times) grow batch by batch
            st.integers(0, 4),
            st.booleans(),
            st.booleans(),
            st.sampled_from([None, "c1", "c2"]),
        ),
        max_size=50,
    )
)
def test_sequences_grow_and_only_high_intent_beats_the_debounce(
    steps: list[tuple[int, int, bool, bool, str | None]],
) -> None:
    state, at, last_sent, sequence = TriggerState(), 0, None, -1
    for gap, views, intent, start, category in steps:
        at += gap
        trigger, state = decide(
            state,
            batch(
                at, views=views, high_intent=intent, session_started=start, top_category=category
            ),
            RULES,
        )
        if trigger is None:
            continue
        assert trigger.sequence > sequence
        sequence = trigger.sequence
        if trigger.reason is not Reason.HIGH_INTENT and last_sent is not None:
            assert T0 + at - last_sent >= RULES.debounce_ms
        last_sent = T0 + at


def test_a_fresh_state_with_the_stored_top_category_invents_no_change() -> None:
    """After a restart the worker starts a user from the top category the store had
    before the batch: an unchanged one fires nothing, however many users come back."""
    trigger, _ = decide(TriggerState(top_category="c1"), batch(0, top_category="c1"), RULES)
    assert trigger is None


def test_the_state_remembers_the_offsets_it_decided_on() -> None:
    """The worker leaves out events at or below `decided_offset` (a batch fetched again
    after a rebalance), so their views are not counted twice."""
    _, state = decide(TriggerState(), batch(100, views=2), RULES)
    assert state.decided_offset == 100
    _, state = decide(state, batch(50, views=1), RULES)  # never moves back
    assert state.decided_offset == 100


def test_a_trigger_round_trips_and_a_v1_trigger_still_decodes_without_a_language() -> None:
    trigger = RankTrigger("u1", 42, Reason.HIGH_INTENT, 1_000, 3, "c1", 2_000, "ta")
    assert decode_trigger(encode_trigger(trigger)) == trigger
    old = BytesIO()
    old.write(HEADER.pack(MAGIC, 2))  # trigger-v1, as workers before the language wrote it
    record = {
        "user_id": "u1",
        "sequence": 42,
        "reason": "views",
        "newest_event_time_ms": 1_000,
        "partition": 3,
        "top_category": None,
        "published_at_ms": 2_000,
    }
    schemaless_writer(old, schema_for(2), record)
    decoded = decode_trigger(old.getvalue())
    assert decoded.language is None and decoded.reason is Reason.VIEWS and decoded.sequence == 42


_LONGS = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_TEXT = st.text(max_size=200)  # past 63 bytes a length takes two varint bytes


@given(
    user=_TEXT,
    sequence=_LONGS,
    reason=st.sampled_from(list(Reason)),
    newest=_LONGS,
    partition=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    top=st.none() | _TEXT,
    published=_LONGS,
    language=st.none() | _TEXT,
)
def test_the_hand_written_encoder_gives_fastavros_bytes(
    user: str,
    sequence: int,
    reason: Reason,
    newest: int,
    partition: int,
    top: str | None,
    published: int,
    language: str | None,
) -> None:
    trigger = RankTrigger(user, sequence, reason, newest, partition, top, published, language)
    assert encode_trigger(trigger) == encode_trigger_fastavro(trigger)
    assert decode_trigger(encode_trigger(trigger)) == trigger


def test_the_holdout_is_stable_and_about_its_share() -> None:
    users = [f"u{i:07d}" for i in range(20_000)]
    half = [u for u in users if in_holdout(u, 0.5)]
    assert 0.47 < len(half) / len(users) < 0.53
    assert half == [u for u in users if in_holdout(u, 0.5)]  # the same answer every time
    assert not any(in_holdout(u, 0.0) for u in users)
    assert all(in_holdout(u, 1.0) for u in users)
    assert set(u for u in users if in_holdout(u, 0.2)) <= set(half)  # shares nest
