"""The ranker's serving order when it is behind: high intent first, one round per user at
their latest trigger, arrival order otherwise (`streams.logic.trigger_order`)."""

from __future__ import annotations

from streams.logic.trigger_order import TriggerQueue


def queue_of(*triggers: tuple[str, int, bool], served: int = 0) -> TriggerQueue:
    """A queue of (user, sequence, high intent) triggers, the first `served` of them (of
    as many users) ranked and served already."""
    queue = TriggerQueue()
    for trigger in triggers[:served]:
        queue.add(*trigger)
    assert queue.served(queue.next_round(served)) == served
    for trigger in triggers[served:]:
        queue.add(*trigger)
    return queue


def users(queue: TriggerQueue, groups: list[list[int]]) -> list[str]:
    return [queue[group[0]].user_id for group in groups]


def test_users_with_a_high_intent_trigger_come_first_then_the_rest_in_arrival_order() -> None:
    queue = queue_of(
        ("a", 1, False), ("b", 2, False), ("c", 3, True), ("d", 4, False), ("e", 5, True)
    )
    assert users(queue, queue.next_round(10)) == ["c", "e", "a", "b", "d"]
    assert queue.next_round(10) == []  # every one picked


def test_a_user_is_served_once_at_their_latest_trigger_covering_the_earlier_ones() -> None:
    queue = queue_of(("a", 10, False), ("b", 11, False), ("a", 12, True), ("a", 13, False))
    groups = queue.next_round(10)
    assert groups[0] == [0, 2, 3]  # "a" has a click waiting: first, every trigger of theirs
    assert queue[queue.latest(groups[0])].sequence == 13
    assert groups[1] == [1]


def test_served_triggers_wait_no_more_and_a_round_is_bounded() -> None:
    queue = queue_of(*((f"u{i}", i, i % 2 == 0) for i in range(10)), served=3)
    groups = queue.next_round(3)
    assert len(groups) == 3
    assert not {position for group in groups for position in group} & {0, 1, 2}
    # The urgent users (even positions) that still wait come first.
    assert users(queue, groups) == ["u4", "u6", "u8"]
    assert users(queue, queue.next_round(3)) == ["u3", "u5", "u7"]


def test_nothing_waiting_gives_an_empty_round() -> None:
    assert queue_of(("a", 1, True), served=1).next_round(5) == []
    queue = TriggerQueue()
    queue.add_served()  # a malformed trigger holds its place, with nothing to serve
    assert queue.next_round(5) == [] and queue.served([]) == 1 and len(queue) == 0


def test_over_the_bound_the_oldest_triggers_that_are_not_urgent_are_shed() -> None:
    def fresh() -> TriggerQueue:
        return queue_of(
            ("a", 1, False),  # served: neither counted nor shed
            ("b", 2, True),
            ("c", 3, False),
            ("d", 4, False),
            ("e", 5, True),
            ("f", 6, False),
            served=1,
        )

    assert fresh().shed(5) == []  # five wait: within the bound
    assert fresh().shed(3) == [2, 3]  # the two oldest not urgent, clicks kept
    queue = fresh()
    assert queue.shed(0) == [2, 3, 5]  # every one not urgent, and no more
    assert users(queue, queue.next_round(10)) == ["b", "e"]  # the shed are not served
    assert queue.served([]) == 0  # b still ranking: nothing after it is acknowledged


def test_triggers_that_are_not_urgent_are_shed_once_they_waited_too_long() -> None:
    """Acknowledged in arrival order: one left waiting would hold back every later
    acknowledgement, however few wait unpicked."""
    queue = TriggerQueue()
    queue.add("a", 1, False, arrived=10.0)
    queue.add("b", 2, True, arrived=10.5)
    queue.add("c", 3, False, arrived=11.0)
    queue.add("d", 4, False, arrived=12.0)
    assert queue.shed(100, arrived_before=10.0) == []  # none is older
    assert queue.shed(100, busy={"a"}, arrived_before=11.5) == [2]  # a is being ranked
    assert queue.shed(100, arrived_before=11.5) == [0]  # ... and then it is not
    assert queue.served([]) == 1  # a acknowledged; b (a click) waits, so c and d do too
    assert queue.served(queue.next_round(10)) == 3
    assert len(queue) == 0


def test_high_intent_triggers_are_never_shed() -> None:
    queue = queue_of(*((f"u{i}", i, True) for i in range(10)))
    assert queue.shed(2) == []


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
    queue = queue_of(("a", 1, True), ("b", 2, False), ("a", 3, False))
    assert queue.next_round(10, busy={"a"}) == [[1]]
    queue = queue_of(("a", 1, True), ("b", 2, False), ("a", 3, False))
    assert queue.shed(1, busy={"b"}) == [2]  # b is being ranked; a's view count goes
    assert queue.shed(0, busy={"b"}) == []  # b's trigger stays ...
    assert queue.shed(0) == [1]  # ... until b's batch is done
    assert queue.next_round(10) == [[0]]  # a, at their click


def test_the_queue_forgets_what_was_acknowledged() -> None:
    """A ranker runs for weeks: what the queue keeps is bounded by what it holds."""
    queue = TriggerQueue()
    for i in range(10_000):
        queue.add(f"u{i % 50}", i, i % 3 == 0)
        if i % 100 == 99:
            while groups := queue.next_round(32):
                assert queue.served(groups) >= 0
            assert len(queue) == 0 and queue.unpicked == 0
    assert not queue._users and not queue._urgent and not queue._calm


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
