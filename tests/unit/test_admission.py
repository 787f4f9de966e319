import pytest

from schemas.events import Event, EventType, InvalidEvent
from streams.logic.admission import (
    Limits,
    check_size,
    check_time,
    dead_letter_headers,
    dead_letter_value,
)

LIMITS = Limits(max_payload_bytes=100, max_future_skew_ms=60_000, min_event_time_ms=1_000_000)
NOW = 10_000_000


def at(ms: int) -> Event:
    return Event("e", "u", EventType.VIEW, ms, product_id="p")


def test_times_within_skew_and_above_the_bound_are_admitted() -> None:
    check_time(at(NOW + 60_000), NOW, LIMITS)
    check_time(at(1_000_000), NOW, LIMITS)


@pytest.mark.parametrize("ms", [NOW + 60_001, 999_999])
def test_times_out_of_bounds_are_rejected(ms: int) -> None:
    with pytest.raises(InvalidEvent) as info:
        check_time(at(ms), NOW, LIMITS)
    assert info.value.field == "event_time_ms"


def test_oversized_payloads_are_rejected() -> None:
    check_size(b"x" * 100, LIMITS)
    with pytest.raises(InvalidEvent, match="oversized: 101 bytes"):
        check_size(b"x" * 101, LIMITS)


def test_dead_letter_headers_say_why_and_where_from() -> None:
    headers = dict(dead_letter_headers(InvalidEvent("user_id", "empty"), "ev", 3, 42, NOW))
    assert headers == {
        "dlq.reason": b"user_id: empty",
        "dlq.field": b"user_id",
        "dlq.source.topic": b"ev",
        "dlq.source.partition": b"3",
        "dlq.source.offset": b"42",
        "dlq.time.ms": str(NOW).encode(),
    }


def test_a_dead_letter_value_is_the_original_bytes_or_their_start_with_the_size() -> None:
    assert dead_letter_value(b"abc", 3) == (b"abc", [])
    assert dead_letter_value(None, 3) == (None, [])
    value, headers = dead_letter_value(b"abcdef", 4)
    assert value == b"abcd"
    assert headers == [("dlq.truncated.from.bytes", b"6")]
