"""The ranker's serving order when it is behind: high intent first, one round per user at
their latest trigger, arrival order otherwise (`streams.logic.trigger_order`)."""

from __future__ import annotations

from streams.logic.trigger_order import Waiting, latest, next_round, shed


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


def test_over_the_bound_the_oldest_triggers_that_are_not_urgent_are_shed() -> None:
    waiting = [
        Waiting("a", 1, False, served=True),  # served: neither counted nor shed
        Waiting("b", 2, True),
        Waiting("c", 3, False),
        Waiting("d", 4, False),
        Waiting("e", 5, True),
        Waiting("f", 6, False),
    ]
    assert shed(waiting, 5) == []  # five wait: within the bound
    assert shed(waiting, 3) == [2, 3]  # the two oldest not urgent, clicks kept
    assert shed(waiting, 0) == [2, 3, 5]  # every one not urgent, and no more


def test_high_intent_triggers_are_never_shed() -> None:
    waiting = [Waiting(f"u{i}", i, True) for i in range(10)]
    assert shed(waiting, 2) == []


def test_the_look_ahead_acknowledges_shed_triggers_in_arrival_order_and_never_a_waiting_one() -> (
    None
):
    """The agent's look-ahead (`streams.ranker._LookAhead`) over the pure rules: a shed
    trigger is acknowledged, but only once every earlier trigger was served or shed."""
    from schemas.triggers import RankTrigger, Reason  # noqa: PLC0415
    from streams.ranker import _LookAhead  # noqa: PLC0415

    def trigger(user: str, sequence: int, reason: Reason) -> RankTrigger:
        return RankTrigger(user, sequence, reason, sequence, 0, None, sequence)

    ahead = _LookAhead()
    ahead.add("e0", trigger("a", 0, Reason.HIGH_INTENT))
    ahead.add("e1", trigger("b", 1, Reason.SESSION_START))
    ahead.add("e2", trigger("c", 2, Reason.VIEWS))
    ahead.add("e3", trigger("d", 3, Reason.HIGH_INTENT))
    assert ahead.shed(2) == 2  # b and c: the oldest that are not urgent
    assert ahead.served([]) == []  # a waits, so nothing after it is acknowledged
    chosen, groups, _ = ahead.next_round(1)
    assert [t.user_id for t in chosen] == ["a"]
    assert ahead.served(groups) == ["e0", "e1", "e2"]  # a served, b and c shed; d waits
    assert len(ahead) == 1


def test_a_user_being_ranked_waits_for_the_next_batch_and_is_not_shed() -> None:
    waiting = [Waiting("a", 1, True), Waiting("b", 2, False), Waiting("a", 3, False)]
    assert next_round(waiting, 10, busy={"a"}) == [[1]]
    assert shed(waiting, 1, busy={"b"}) == [2]  # b is being ranked; a's view count goes


def test_batches_that_finish_out_of_order_acknowledge_in_arrival_order() -> None:
    """Two batches in progress at once (`streams.ranker._LookAhead` positions count from
    the first trigger ever added): the later one finishing first acknowledges nothing
    until the earlier one is done, and positions stay right after the front moved."""
    from schemas.triggers import RankTrigger, Reason  # noqa: PLC0415
    from streams.ranker import _LookAhead  # noqa: PLC0415

    def trigger(user: str, sequence: int) -> RankTrigger:
        return RankTrigger(user, sequence, Reason.HIGH_INTENT, sequence, 0, None, sequence)

    ahead = _LookAhead()
    for i, user in enumerate("abc"):
        ahead.add(f"e{i}", trigger(user, i))
    first, first_groups, _ = ahead.next_round(1)
    second, second_groups, _ = ahead.next_round(1, busy={"a"})
    assert [t.user_id for t in first + second] == ["a", "b"]
    assert ahead.served(second_groups) == []  # a is still being ranked
    assert ahead.served(first_groups) == ["e0", "e1"]
    ahead.add("e3", trigger("a", 3))
    third, third_groups, _ = ahead.next_round(5)
    assert [(t.user_id, t.sequence) for t in third] == [("c", 2), ("a", 3)]
    assert ahead.served(third_groups) == ["e2", "e3"]
    assert len(ahead) == 0
