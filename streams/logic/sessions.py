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

from collections.abc import Iterable
from dataclasses import dataclass

from schemas.hot_layout import Interaction


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
