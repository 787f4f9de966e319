"""Pacing and bounding of generated traffic, on a fake clock."""

from __future__ import annotations

from jobs.generate import SendSummary, bounded, paced
from schemas.events import Event, EventType

T0 = 1_760_000_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def view(offset_ms: int, event_id: str = "") -> Event:
    return Event(event_id or f"e{offset_ms}", "u1", EventType.VIEW, T0 + offset_ms, "p1")


def test_paced_releases_each_event_at_its_offset_and_late_ones_at_once() -> None:
    clock = FakeClock()
    events = [view(0), view(500), view(200, "late"), view(1500)]
    released = []
    for event in paced(events, T0, clock=clock, sleep=clock.sleep):
        released.append((event.event_id, round(clock.now - 100.0, 3)))
    assert released == [("e0", 0.0), ("e500", 0.5), ("late", 0.5), ("e1500", 1.5)]
    assert clock.slept == [0.5, 1.0]


def test_paced_never_sleeps_when_the_sender_is_behind() -> None:
    clock = FakeClock()

    def slow_events():
        for offset in (0, 10, 20):
            clock.now += 1.0  # producing each event takes a second
            yield view(offset)

    assert [e.event_id for e in paced(slow_events(), T0, clock=clock, sleep=clock.sleep)] == [
        "e0",
        "e10",
        "e20",
    ]
    assert clock.slept == []


def test_bounded_stops_at_count_or_deadline() -> None:
    events = (view(i) for i in range(10_000))
    assert len(list(bounded(events, count=7, seconds=None))) == 7

    clock = FakeClock()

    def ticking():
        for i in range(10_000):
            clock.now += 0.001
            yield view(i)

    taken = list(bounded(ticking(), count=None, seconds=1.0, clock=clock))
    # Checked every 256 events: stops at the first check past one simulated second.
    assert 1000 <= len(taken) <= 1000 + 256


def test_summary_rate_and_line() -> None:
    summary = SendSummary(sent=30_000, delivered=30_000, failed=0, seconds=1.5)
    assert summary.rate == 20_000
    assert "20,000 events/s" in summary.line("signals.events")
