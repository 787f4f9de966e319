"""Merging fetched batches that waited while another was applied."""

from schemas.events import EventType
from schemas.hot_layout import Interaction
from streams.app import Prepared


def test_absorb_keeps_fetch_order_and_the_newest_activity_per_user() -> None:
    first = Prepared(
        now_ms=10,
        interactions=[Interaction("u1", EventType.VIEW, "p1", 5)],
        activity={0: {"u1": 5}, 1: {"u2": 9}},
        size=3,
    )
    later = Prepared(
        now_ms=12,
        interactions=[Interaction("u1", EventType.CLICK, "p1", 4)],
        activity={0: {"u1": 4, "u3": 7}, 2: {"u4": 1}},
        size=2,
    )
    first.absorb(later)
    assert first.now_ms == 12
    assert first.size == 5
    assert [i.event_type for i in first.interactions] == [EventType.VIEW, EventType.CLICK]
    assert first.activity == {0: {"u1": 5, "u3": 7}, 1: {"u2": 9}, 2: {"u4": 1}}


def test_a_batch_admits_the_same_column_wise_as_record_by_record() -> None:
    """Large fetches take the columnar path, small ones the record path: the same
    interactions, activity, languages and rejections either way."""
    import dataclasses  # noqa: PLC0415
    from types import SimpleNamespace  # noqa: PLC0415

    from aiokafka import ConsumerRecord  # noqa: PLC0415

    from schemas.codec import encode_event  # noqa: PLC0415
    from streams.app import COLUMNAR_MIN_RECORDS, IngestPipeline  # noqa: PLC0415
    from streams.settings import Settings  # noqa: PLC0415
    from tests.unit.test_avro_columns import generated  # noqa: PLC0415

    events = generated(COLUMNAR_MIN_RECORDS + 200)
    now = max(e.event_time_ms for e in events) + 1000
    values: list[bytes | None] = [encode_event(e) for e in events]
    values[10] = b"\x00\x00\x00\x00\x63\x02xx"  # corrupt: dead-lettered either way
    values[20] = None
    values[30] = encode_event(dataclasses.replace(events[30], event_time_ms=now + 10**9))
    records = [
        ConsumerRecord("t", i % 4, i, now, 0, None, value, None, 0, len(value or b""), [])
        for i, value in enumerate(values)
    ]
    pipeline = IngestPipeline(
        Settings(),
        None,  # type: ignore[arg-type]  # prepare touches no store
        SimpleNamespace(turn=None),  # type: ignore[arg-type]
        dead_letters=None,  # type: ignore[arg-type]
        stopping=lambda: False,
        clock_ms=lambda: now,
    )
    whole = pipeline.prepare(records)
    pieces = [
        pipeline.prepare(records[i : i + 100]) for i in range(0, len(records), 100)
    ]  # each below COLUMNAR_MIN_RECORDS: the record path
    merged = pieces[0]
    for piece in pieces[1:]:
        merged.absorb(piece)
    assert whole.interactions == merged.interactions
    assert whole.activity == merged.activity
    assert whole.languages == merged.languages
    assert [(r.offset, e.field) for r, e in whole.rejected] == [
        (r.offset, e.field) for r, e in merged.rejected
    ]
    assert [r.offset for r, _ in whole.rejected] == [10, 20, 30]
