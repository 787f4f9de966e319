"""The ranker's serving order when it is behind: high intent first, one round per user at
their latest trigger, arrival order otherwise (`streams.logic.trigger_order`)."""

from __future__ import annotations

from streams.logic.trigger_order import Waiting, latest, next_round


def test_users_with_a_high_intent_trigger_come_first_then_the_rest_in_arrival_order() -> None:
    waiting = [
        Waiting("a", 1, False),
        Waiting("b", 2, False),
        Waiting("c", 3, True),
        Waiting("d", 4, False),
        Waiting("e", 5, True),
    ]
    groups = next_round(waiting, 10)
    assert [waiting[g[0]].user_id for g in groups] == ["c", "e", "a", "b", "d"]


def test_a_user_is_served_once_at_their_latest_trigger_covering_the_earlier_ones() -> None:
    waiting = [
        Waiting("a", 10, False),
        Waiting("b", 11, False),
        Waiting("a", 12, True),
        Waiting("a", 13, False),
    ]
    groups = next_round(waiting, 10)
    assert groups[0] == [0, 2, 3]  # "a" has a click waiting: first, every trigger of theirs
    assert waiting[latest(waiting, groups[0])].sequence == 13
    assert groups[1] == [1]


def test_served_triggers_wait_no_more_and_a_round_is_bounded() -> None:
    waiting = [Waiting(f"u{i}", i, i % 2 == 0, served=i < 3) for i in range(10)]
    groups = next_round(waiting, 3)
    assert len(groups) == 3
    served = {position for group in groups for position in group}
    assert not served & {0, 1, 2}
    # The urgent users (even positions) that still wait come first.
    assert [waiting[g[0]].user_id for g in groups] == ["u4", "u6", "u8"]


def test_nothing_waiting_gives_an_empty_round() -> None:
    assert next_round([Waiting("a", 1, True, served=True)], 5) == []
