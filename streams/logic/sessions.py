"""Session inactivity: when a user's session has ended, per Kafka partition, in event time.

Pure and clock-free: every function takes the times it needs, so the live worker, the
offline jobs and the tests compute the same thing.

Event time drives everything, so replaying the same events closes the same sessions. The
one exception is a partition that has gone quiet: with no new events its event time
would stand still and its sessions would never end (other stream processors make users
send dummy events for this). Here a quiet partition's clock advances with the wall clock
once it has been quiet for a grace period, which is exactly what event time would do if
events kept arriving in real time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from schemas.events import EventType
from schemas.hot_layout import Interaction, Item, UserLastK, merge_items


@dataclass(slots=True)
class PartitionClock:
    """Event-time progress of one partition, advanced by the wall clock when quiet.

    `max_event_ms` is the newest event time seen; `seen_wall_ms` is when (wall clock)
    the partition last delivered any event. While events keep arriving the watermark is
    the newest event time; after `idle_grace_ms` of silence it moves on in step with the
    wall clock.
    """

    idle_grace_ms: int
    max_event_ms: int = 0
    seen_wall_ms: int = 0

    def observe(self, event_time_ms: int, wall_ms: int) -> None:
        """Record that an event with this time arrived at this wall time."""
        self.max_event_ms = max(self.max_event_ms, event_time_ms)
        self.seen_wall_ms = max(self.seen_wall_ms, wall_ms)

    def watermark(self, wall_ms: int) -> int:
        """The event time up to which this partition is considered complete."""
        quiet_ms = wall_ms - self.seen_wall_ms - self.idle_grace_ms
        return self.max_event_ms + max(0, quiet_ms)


def closing_score(watermark_ms: int, gap_ms: int) -> int:
    """Sessions whose last activity is strictly below this score have ended.

    A session ends when its last activity plus the gap is strictly before the watermark.
    """
    return watermark_ms - gap_ms


def session_has_ended(last_activity_ms: int, watermark_ms: int, gap_ms: int) -> bool:
    return last_activity_ms < closing_score(watermark_ms, gap_ms)


def latest_activity(interactions: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Per user, the newest event time among (user id, event time) pairs.

    This is what the session index stores (with `ZADD GT`): a late event never moves a
    session's end back, and a redelivered one changes nothing.
    """
    latest: dict[str, int] = {}
    for user_id, event_time_ms in interactions:
        if event_time_ms > latest.get(user_id, -1):
            latest[user_id] = event_time_ms
    return latest


def user_times(interactions: Iterable[Interaction]) -> Iterable[tuple[str, int]]:
    return ((item.user_id, item.event_time_ms) for item in interactions)


@dataclass(slots=True)
class _ReplayedUser:
    items: dict[EventType, list[Item]]
    last_activity_ms: int
    stored: UserLastK | None = None  # what the previous session's end wrote


class SessionReplay:
    """The cold tier's view of an event log, offline: each user's last-k at the end of each
    session, as the worker's flush would have written it (`signals backfill`).

    Feed it a partition's interactions in read order. A user's event more than the gap
    after their newest activity ends their previous session: `add` returns that session's
    snapshot (with the one before it, whose items are history rows already), the last-k
    carries over as a re-hydration would, and at the end `finish` gives everyone's last
    snapshot. The last-k merge is the hot tier's (`merge_items`). Versions are the newest
    event time in microseconds, so the same log always writes the same rows, and a flush
    the live worker made later (its version is a wall-clock time) is never overwritten.
    """

    def __init__(self, gap_ms: int, keep: Mapping[EventType, int]) -> None:
        self.gap_ms = gap_ms
        self.keep = dict(keep)
        self._users: dict[str, _ReplayedUser] = {}

    def add(
        self, user_id: str, event_time_ms: int, interaction: Interaction | None
    ) -> tuple[UserLastK, UserLastK | None] | None:
        """One event of the user (app-opens count as activity); the ended session's
        (snapshot, the stored one before it) when this event started a new one."""
        user = self._users.get(user_id)
        ended = None
        if user is None:
            user = self._users[user_id] = _ReplayedUser({}, event_time_ms)
        elif session_has_ended(user.last_activity_ms, event_time_ms, self.gap_ms):
            snapshot = self._snapshot(user_id, user)
            if snapshot.items:
                ended = (snapshot, user.stored)
                user.stored = snapshot
        user.last_activity_ms = max(user.last_activity_ms, event_time_ms)
        if interaction is not None:
            kind = interaction.event_type
            user.items[kind] = merge_items(
                user.items.get(kind, ()),
                [(interaction.product_id, interaction.event_time_ms)],
                self.keep.get(kind, 0),
            )
        return ended

    def finish(self) -> list[tuple[UserLastK, UserLastK | None]]:
        """Every user's current last-k (their open session), with the stored one before."""
        done = []
        for user_id, user in self._users.items():
            snapshot = self._snapshot(user_id, user)
            if snapshot.items and snapshot != user.stored:
                done.append((snapshot, user.stored))
        return done

    def _snapshot(self, user_id: str, user: _ReplayedUser) -> UserLastK:
        items = {kind: list(rows) for kind, rows in user.items.items() if rows}
        snapshot = UserLastK(user_id, items)
        snapshot.version = snapshot.newest_time_ms() * 1000
        return snapshot
