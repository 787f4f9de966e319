"""SessionReplay: the cold tier's rows rebuilt offline from an event log (`signals backfill`).

It must close the same sessions as the live worker (event time, strictly more than the gap)
and write the same last-k, with versions that depend only on the log.
"""

from __future__ import annotations

from collections.abc import Iterable

from schemas.events import EventType
from schemas.hot_layout import Interaction, UserLastK
from streams.logic.sessions import SessionReplay

GAP_MS = 1_800_000
T0 = 1_760_000_000_000
KEEP = {EventType.VIEW: 3, EventType.CLICK: 2, EventType.ORDER: 1}

#: One replayed event: (user id, event time ms, interaction or None for an app-open).
Step = tuple[str, int, Interaction | None]
Ended = tuple[UserLastK, UserLastK | None]


def view(user_id: str, product_id: str, time_ms: int) -> Step:
    """A view event, the most common product event."""
    return user_id, time_ms, Interaction(user_id, EventType.VIEW, product_id, time_ms)


def click(user_id: str, product_id: str, time_ms: int) -> Step:
    """A click, to check that types are kept apart."""
    return user_id, time_ms, Interaction(user_id, EventType.CLICK, product_id, time_ms)


def app_open(user_id: str, time_ms: int) -> Step:
    """Activity without a product: no last-k item."""
    return user_id, time_ms, None


def new_replay() -> SessionReplay:
    return SessionReplay(GAP_MS, KEEP)


def feed(replay: SessionReplay, steps: Iterable[Step]) -> list[Ended]:
    """Add every step in order; the sessions that ended, in the order they ended."""
    ended = []
    for user_id, time_ms, interaction in steps:
        result = replay.add(user_id, time_ms, interaction)
        if result is not None:
            ended.append(result)
    return ended


def lastk(user_id: str, **items: list[tuple[str, int]]) -> UserLastK:
    """A snapshot from type names (`view=[...]`), for readable expectations."""
    return UserLastK(user_id, {EventType(kind): rows for kind, rows in items.items()})


def test_events_within_the_gap_stay_in_one_session() -> None:
    """Nothing is written while the user keeps coming back within the gap."""
    replay = new_replay()
    steps = [view("u", f"p{i}", T0 + i * (GAP_MS - 1)) for i in range(5)]
    assert all(replay.add(*step) is None for step in steps)


def test_an_event_exactly_the_gap_later_is_the_same_session() -> None:
    """The session ends only when the last activity is strictly more than the gap ago."""
    replay = new_replay()
    assert replay.add(*view("u", "p1", T0)) is None
    assert replay.add(*view("u", "p2", T0 + GAP_MS)) is None
    assert replay.add(*view("u", "p3", T0 + 2 * GAP_MS)) is None


def test_an_event_one_millisecond_past_the_gap_starts_a_new_session() -> None:
    """The boundary is `session_has_ended`'s: last activity < event time - gap."""
    replay = new_replay()
    replay.add(*view("u", "p1", T0))
    ended = replay.add(*view("u", "p2", T0 + GAP_MS + 1))
    assert ended == (lastk("u", view=[("p1", T0)]), None)


def test_each_ended_session_comes_with_the_snapshot_stored_before_it() -> None:
    """The first end has nothing stored yet; the second brings the first as history."""
    replay = new_replay()
    second_start = T0 + GAP_MS + 1
    third_start = second_start + GAP_MS + 1
    assert replay.add(*view("u", "p1", T0)) is None
    first = replay.add(*view("u", "p2", second_start))
    second = replay.add(*view("u", "p3", third_start))

    first_snapshot = lastk("u", view=[("p1", T0)])
    second_snapshot = lastk("u", view=[("p2", second_start), ("p1", T0)])
    assert first == (first_snapshot, None)
    assert second == (second_snapshot, first_snapshot)


def test_an_ended_snapshot_is_not_changed_by_later_events() -> None:
    """Snapshots handed out are written later; they must be copies, not live state."""
    replay = new_replay()
    replay.add(*view("u", "p1", T0))
    ended = replay.add(*view("u", "p2", T0 + GAP_MS + 1))
    assert ended is not None
    replay.add(*view("u", "p3", T0 + GAP_MS + 2))
    replay.add(*view("u", "p4", T0 + GAP_MS + 3))
    assert ended[0] == lastk("u", view=[("p1", T0)])


def test_lastk_carries_over_sessions_trimmed_per_type_newest_time_winning() -> None:
    """A new session starts from the stored last-k, as a re-hydration would, and merges
    like the hot tier: one entry per product at its newest time, the newest `keep` kept."""
    replay = new_replay()
    second = T0 + 3 + GAP_MS + 1  # just past the gap after the first session's last event
    third = second + 3 + GAP_MS + 1
    steps = [
        view("u", "p1", T0),
        view("u", "p2", T0 + 1),
        click("u", "c1", T0 + 2),
        click("u", "c2", T0 + 3),
        view("u", "p3", second),
        view("u", "p1", second + 1),  # seen again: moves to the front
        click("u", "c3", second + 2),  # pushes the oldest click out (keep 2)
        view("u", "p4", second + 3),  # pushes p2 out (keep 3)
        view("u", "p9", third),
    ]
    ended = feed(replay, steps)
    assert [snapshot for snapshot, _stored in ended] == [
        lastk("u", view=[("p2", T0 + 1), ("p1", T0)], click=[("c2", T0 + 3), ("c1", T0 + 2)]),
        lastk(
            "u",
            view=[("p4", second + 3), ("p1", second + 1), ("p3", second)],
            click=[("c3", second + 2), ("c2", T0 + 3)],
        ),
    ]


def test_an_older_time_for_a_known_product_does_not_move_it_back() -> None:
    """A late or redelivered event keeps the product's newest time, as `ZADD GT` does."""
    replay = new_replay()
    feed(replay, [view("u", "p1", T0 + 10), view("u", "p2", T0 + 5), view("u", "p1", T0)])
    [(snapshot, stored)] = replay.finish()
    assert snapshot == lastk("u", view=[("p1", T0 + 10), ("p2", T0 + 5)])
    assert stored is None


def test_types_without_a_keep_are_not_remembered() -> None:
    """A type the caller keeps 0 of (or does not name) adds no rows."""
    replay = new_replay()
    wishlist = Interaction("u", EventType.WISHLIST, "w1", T0)
    assert replay.add("u", T0, wishlist) is None
    assert replay.finish() == []


def test_an_app_open_extends_the_session_without_adding_an_item() -> None:
    """App-opens are activity: they keep the session alive but point at no product."""
    replay = new_replay()
    steps = [
        view("u", "p1", T0),
        app_open("u", T0 + GAP_MS),
        view("u", "p2", T0 + 2 * GAP_MS),  # within the gap of the app-open
    ]
    assert feed(replay, steps) == []
    ended = replay.add(*app_open("u", T0 + 3 * GAP_MS + 1))
    assert ended == (lastk("u", view=[("p2", T0 + 2 * GAP_MS), ("p1", T0)]), None)


def test_a_session_of_only_app_opens_writes_nothing() -> None:
    """An empty last-k is not a row: neither at a session's end nor at the finish."""
    replay = new_replay()
    steps = [app_open("u", T0), app_open("u", T0 + GAP_MS + 1), app_open("u", T0 + 3 * GAP_MS)]
    assert feed(replay, steps) == []
    assert replay.finish() == []


def test_a_late_event_does_not_move_the_last_activity_back() -> None:
    """Like the session index's `ZADD GT`: otherwise a late event could end a live session."""
    replay = new_replay()
    steps = [
        view("u", "p1", T0 + GAP_MS),
        view("u", "p0", T0),  # late: arrives after a newer one
        view("u", "p2", T0 + 2 * GAP_MS),  # exactly the gap after the newest activity
    ]
    assert feed(replay, steps) == []
    [(snapshot, _stored)] = replay.finish()
    assert snapshot == lastk("u", view=[("p2", T0 + 2 * GAP_MS), ("p1", T0 + GAP_MS), ("p0", T0)])


def test_a_late_event_does_not_end_the_session() -> None:
    """An event older than the newest activity is never more than the gap after it."""
    replay = new_replay()
    replay.add(*view("u", "p1", T0 + 5 * GAP_MS))
    assert replay.add(*view("u", "p0", T0)) is None


def test_versions_are_the_newest_event_time_in_microseconds() -> None:
    """A time-derived version keeps a later live flush (wall-clock version) on top."""
    replay = new_replay()
    second = T0 + 7 + GAP_MS + 1
    ended = feed(
        replay,
        [
            view("u", "p1", T0),
            click("u", "c1", T0 + 7),
            view("u", "p0", T0 + 3),
            view("u", "p2", second),
        ],
    )
    [(first_snapshot, _none)] = ended
    assert first_snapshot.version == (T0 + 7) * 1000
    [(last_snapshot, stored)] = replay.finish()
    assert last_snapshot.version == second * 1000
    assert stored is not None and stored.version == (T0 + 7) * 1000


def test_the_version_ignores_app_opens() -> None:
    """The version comes from the snapshot's rows; an app-open adds none."""
    replay = new_replay()
    feed(replay, [view("u", "p1", T0), app_open("u", T0 + 100)])
    [(snapshot, _stored)] = replay.finish()
    assert snapshot.version == T0 * 1000


def mixed_log() -> list[Step]:
    """Several users, sessions, types, app-opens and a late event."""
    return [
        view("a", "p1", T0),
        view("b", "p5", T0 + 1),
        app_open("c", T0 + 2),
        click("a", "c1", T0 + 3),
        view("a", "p2", T0 + GAP_MS + 10),
        view("b", "p4", T0 - 50),
        view("c", "p7", T0 + GAP_MS + 20),
        view("a", "p3", T0 + 3 * GAP_MS),
        app_open("b", T0 + 2 * GAP_MS + 5),
        click("b", "c9", T0 + 4 * GAP_MS),
    ]


def outcome(replay: SessionReplay, steps: list[Step]) -> list[tuple[Ended, int, int | None]]:
    """Everything replayed, with the versions (which snapshot equality ignores)."""
    results = feed(replay, steps) + replay.finish()
    return [
        ((snapshot, stored), snapshot.version, None if stored is None else stored.version)
        for snapshot, stored in results
    ]


def test_replaying_the_same_log_twice_writes_the_same_rows() -> None:
    """Backfill must be repeatable: same log, same snapshots, same versions."""
    first = outcome(new_replay(), mixed_log())
    second = outcome(new_replay(), mixed_log())
    assert first == second
    assert first  # the log does end sessions


def test_finish_returns_every_users_open_session_with_their_stored_one() -> None:
    """At the end of the log, every open session is flushed like a session end."""
    replay = new_replay()
    second = T0 + GAP_MS + 1
    feed(
        replay,
        [view("once", "p1", T0), view("twice", "q1", T0), view("twice", "q2", second)],
    )
    assert replay.finish() == [
        (lastk("once", view=[("p1", T0)]), None),
        (lastk("twice", view=[("q2", second), ("q1", T0)]), lastk("twice", view=[("q1", T0)])),
    ]


def test_finish_skips_a_user_with_nothing_new_since_their_stored_snapshot() -> None:
    """Their last session only had app-opens: writing the same rows again is wasted work."""
    replay = new_replay()
    ended = feed(replay, [view("u", "p1", T0), app_open("u", T0 + GAP_MS + 1)])
    assert ended == [(lastk("u", view=[("p1", T0)]), None)]
    assert replay.finish() == []


def test_finish_skips_a_user_whose_new_events_changed_nothing() -> None:
    """A redelivered older event after a session end leaves the last-k as stored."""
    replay = new_replay()
    later = T0 + GAP_MS + 1
    ended = feed(replay, [view("u", "p1", later - 1), view("u", "p2", T0), view("u", "p1", T0)])
    assert ended == []
    ended = feed(replay, [app_open("u", later + GAP_MS), view("u", "p2", T0)])
    assert ended == [(lastk("u", view=[("p1", later - 1), ("p2", T0)]), None)]
    assert replay.finish() == []


def test_users_are_independent() -> None:
    """One user's activity neither ends nor extends another's session."""
    replay = new_replay()
    late = T0 + 10 * GAP_MS
    assert replay.add(*view("a", "p1", T0)) is None
    assert replay.add(*view("b", "q1", late)) is None  # far later, but b is new
    assert replay.add(*view("a", "p2", T0 + GAP_MS)) is None  # a's session is still open
    ended_a = replay.add(*view("a", "p3", late))
    assert ended_a == (lastk("a", view=[("p2", T0 + GAP_MS), ("p1", T0)]), None)
    assert replay.add(*view("b", "q2", late + 1)) is None
    assert replay.finish() == [
        (
            lastk("a", view=[("p3", late), ("p2", T0 + GAP_MS), ("p1", T0)]),
            lastk("a", view=[("p2", T0 + GAP_MS), ("p1", T0)]),
        ),
        (lastk("b", view=[("q2", late + 1), ("q1", late)]), None),
    ]
