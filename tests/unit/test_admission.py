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


def _reference_row(value: bytes | None, now_ms: int, limits: Limits) -> tuple[object, ...] | None:
    """What the record path admits (the fields the worker keeps), or None."""
    from schemas.codec import decode_event  # noqa: PLC0415
    from streams.logic.admission import admitted_row  # noqa: PLC0415

    try:
        check_size(value, limits)
        event = decode_event(value)
        check_time(event, now_ms, limits)
    except InvalidEvent:
        return None
    return admitted_row(event)


def test_the_fast_path_admits_only_what_the_record_path_admits_with_the_same_fields() -> None:
    import dataclasses  # noqa: PLC0415

    from schemas.codec import encode_event  # noqa: PLC0415
    from streams.logic.admission import admit_fast  # noqa: PLC0415
    from tests.unit.test_avro_columns import generated  # noqa: PLC0415

    events = generated(400)
    now = max(e.event_time_ms for e in events)
    values: list[bytes | None] = [encode_event(e) for e in events]
    # A size limit at the median: about half the valid records are oversized.
    limit = sorted(len(v or b"") for v in values)[len(values) // 2] - 1
    limits = Limits(limit, max_future_skew_ms=1000, min_event_time_ms=now - 10**9)
    values[3] = None  # no value at all
    values[5] = b"\x00\x00\x00\x00\x63\x02xx"  # corrupt
    values[7] = encode_event(dataclasses.replace(events[7], event_time_ms=now + 1001))  # future
    values[9] = encode_event(dataclasses.replace(events[9], event_time_ms=now - 10**9 - 1))
    fast = admit_fast(values, now, limits)
    reference = [_reference_row(v, now, limits) for v in values]
    for index in (3, 5, 7, 9):
        assert not fast.accepted[index] and reference[index] is None
    oversized = [i for i, v in enumerate(values) if v is not None and len(v) > limit]
    assert len(oversized) > 100
    assert not fast.accepted[oversized].any()
    rows = iter(fast.rows)
    taken = 0
    for accepted, expected in zip(fast.accepted.tolist(), reference, strict=True):
        if accepted:
            assert next(rows) == expected  # never accepts what the record path refuses
            taken += 1
    assert taken == len(fast.rows)
    assert taken == sum(r is not None for r in reference)  # every valid one, here
