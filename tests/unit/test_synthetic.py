import itertools

from jobs.synthetic import synthetic_events
from schemas.events import EventType


def take(n: int, **kwargs: object) -> list:
    return list(
        itertools.islice(synthetic_events(users=50, products=200, start_ms=1_000, **kwargs), n)
    )  # type: ignore[arg-type]


def test_same_seed_same_events() -> None:
    assert take(300, seed=3) == take(300, seed=3)
    assert take(300, seed=3) != take(300, seed=4)


def test_sessions_start_with_app_open_and_time_moves_forward() -> None:
    events = take(500, seed=1)
    assert events[0].event_type is EventType.APP_OPEN
    times = [e.event_time_ms for e in events]
    assert times == sorted(times)
    assert {e.event_type for e in events} >= {EventType.APP_OPEN, EventType.VIEW, EventType.CLICK}


def test_live_clock_stamps_events() -> None:
    events = take(10, seed=1, clock_ms=lambda: 42)
    assert {e.event_time_ms for e in events} == {42}
