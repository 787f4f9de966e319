"""The erasure rule and the forget record (`schemas.erasure`), and how the worker's batch
preparation takes forget records out and drops the erased users' events."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import ConsumerRecord

from schemas.codec import encode_event
from schemas.erasure import (
    ErasureFilter,
    Forget,
    ForgetAt,
    InvalidForget,
    decode_forget,
    encode_forget,
    is_forget,
)
from schemas.events import Event, EventType
from streams.app import COLUMNAR_MIN_RECORDS, IngestPipeline
from streams.settings import Settings
from tests.unit.test_avro_columns import generated


def test_a_forget_record_round_trips_and_is_told_apart_from_events() -> None:
    key, value, headers = encode_forget(Forget("u1", 1_700_000_000_000, "r1"))
    assert key == b"u1"
    assert is_forget(headers)
    assert is_forget(dict(headers))  # confluent-kafka may hand a mapping over
    assert not is_forget(None)
    assert not is_forget([])
    assert not is_forget([("signals.control", b"something-else")])
    assert decode_forget(key, value) == Forget("u1", 1_700_000_000_000, "r1")


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (b"u1", b"not json", "unreadable"),
        (b"u1", b'{"user_id": "u1"}', "unreadable"),
        (b"u2", b'{"user_id": "u1", "erased_ms": 5}', "keyed by the user"),
        (b"", b'{"user_id": "", "erased_ms": 5}', "names no user"),
        (None, b'{"user_id": "u1", "erased_ms": 5}', "must be keyed"),
    ],
)
def test_an_unreadable_forget_record_says_why(key: bytes | None, value: bytes, reason: str) -> None:
    with pytest.raises(InvalidForget, match=reason):
        decode_forget(key, value)


def test_the_filter_drops_an_erased_users_events_up_to_the_erasure_only() -> None:
    erasures = ErasureFilter()
    assert not erasures
    assert erasures.keeps("u1", 10)
    erasures.add([Forget("u1", 100)])
    assert erasures
    assert not erasures.keeps("u1", 99)
    assert not erasures.keeps("u1", 100)  # at T: erased
    assert erasures.keeps("u1", 101)  # after T: a new history
    assert erasures.keeps("u2", 50)
    erasures.add([Forget("u1", 50)])  # an older request changes nothing
    assert erasures.erased_at("u1") == 100
    erasures.update({"u1": 200})
    assert not erasures.keeps("u1", 150)


#: Stands in for an eraser: `prepare` only checks that there is one.
AN_ERASER: Any = object()


def _pipeline(now: int, eraser: Any = AN_ERASER) -> IngestPipeline:
    return IngestPipeline(
        Settings(),
        None,  # type: ignore[arg-type]  # prepare touches no store
        SimpleNamespace(turn=None),  # type: ignore[arg-type]
        dead_letters=None,  # type: ignore[arg-type]
        stopping=lambda: False,
        clock_ms=lambda: now,
        eraser=eraser,
    )


def _records(events: list[Event], forget_at: int, forget: Forget) -> list[ConsumerRecord]:
    """The events as records of partition 0, with `forget` inserted at `forget_at`."""
    records: list[ConsumerRecord] = []
    for i, event in enumerate(events):
        if i == forget_at:
            key, value, headers = encode_forget(forget)
            records.append(
                ConsumerRecord("t", 0, len(records), 0, 0, key, value, None, 0, 0, headers)
            )
        value = encode_event(event)
        records.append(
            ConsumerRecord("t", 0, len(records), 0, 0, None, value, None, 0, len(value), [])
        )
    return records


@pytest.mark.parametrize("size", [50, COLUMNAR_MIN_RECORDS + 50])  # record and columnar paths
def test_a_batch_hands_over_its_forget_records_and_drops_the_users_older_events(
    size: int,
) -> None:
    events = generated(size)
    victim = events[0].user_id
    erased_ms = sorted(e.event_time_ms for e in events)[size // 2]
    # One event of the victim's after T: kept (a new history).
    events[-1] = dataclasses.replace(
        events[-1], user_id=victim, event_type=EventType.VIEW, event_time_ms=erased_ms + 1
    )
    now = max(e.event_time_ms for e in events) + 1000
    pipeline = _pipeline(now)
    prepared = pipeline.prepare(_records(events, size // 3, Forget(victim, erased_ms, "r")))
    assert prepared.forgets == [ForgetAt(0, size // 3, Forget(victim, erased_ms, "r"))]
    assert prepared.size == size + 1
    assert not prepared.rejected
    victims = [i.event_time_ms for i in prepared.interactions if i.user_id == victim]
    assert erased_ms + 1 in victims
    assert victims == [
        e.event_time_ms
        for e in events
        if e.user_id == victim and e.event_time_ms > erased_ms and e.product_id is not None
    ]
    others = [e for e in events if e.user_id != victim and e.product_id is not None]
    assert len([i for i in prepared.interactions if i.user_id != victim]) == len(
        [e for e in others if e.event_type is not EventType.APP_OPEN]
    )
    dropped = sum(1 for e in events if e.user_id == victim and e.event_time_ms <= erased_ms)
    assert pipeline.counters.erased_events == dropped
    # A later batch still drops the victim's late events.
    late = dataclasses.replace(events[1], user_id=victim, event_time_ms=erased_ms - 10)
    again = pipeline.prepare(_records([late], -1, Forget("unused", 0)))
    assert not again.interactions
    assert not again.activity


def test_a_worker_without_an_eraser_dead_letters_forget_records() -> None:
    events = generated(5)
    pipeline = _pipeline(max(e.event_time_ms for e in events) + 1000, eraser=None)
    prepared = pipeline.prepare(_records(events, 2, Forget(events[0].user_id, 1)))
    assert not prepared.forgets
    assert [(r.offset, e.field) for r, e in prepared.rejected] == [(2, "forget")]
    assert "without an eraser" in prepared.rejected[0][1].reason


def test_a_batch_with_forget_records_is_never_absorbed_into_an_earlier_one() -> None:
    """The earlier batch's events were admitted before the erasure was known: merged, the
    erasure would run first and those events be written after it."""
    import asyncio  # noqa: PLC0415

    from streams.app import Prepared, _absorb_waiting  # noqa: PLC0415

    async def scenario() -> None:
        ready: asyncio.Queue[Any] = asyncio.Queue()
        with_forget = Prepared(2, size=1)
        with_forget.forgets.append(ForgetAt(0, 7, Forget("u1", 1)))
        for batch in (Prepared(1, size=1), with_forget, Prepared(3, size=1)):
            await ready.put((batch, {}))
        first, _ = ready.get_nowait()
        held = _absorb_waiting(ready, first, {}, batch_max=100)
        assert first.size == 1 and not first.forgets
        assert held is not None and held[0] is with_forget
        # The batch with the forget records takes later ones in (they were admitted
        # with its users already filtered).
        assert _absorb_waiting(ready, held[0], {}, batch_max=100) is None
        assert with_forget.size == 2

    asyncio.run(scenario())
