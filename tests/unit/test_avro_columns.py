"""The columnar decoder against the reference (`schemas.codec.decode_event`): on generated
events, on events at every contract rule's edge, and on corrupted bytes, it accepts only
records the reference accepts, decodes them to the same values, and leaves the rest."""

from __future__ import annotations

import dataclasses
import itertools
import random
import struct
from typing import Any

import pytest

from jobs.traffic import TrafficParams, simulate
from schemas.avro_columns import decode_event_columns
from schemas.codec import decode_event, encode_event
from schemas.events import Event, EventType, InvalidEvent
from schemas.wire import HEADER


def generated(count: int, seed: int = 3) -> list[Event]:
    params = TrafficParams(seed=seed, users=300, products=1000, categories=8, rate=100.0)
    return list(itertools.islice(simulate(params, 1_790_000_000_000), count))


def reference(value: bytes | None) -> Event | None:
    try:
        return decode_event(value)
    except InvalidEvent:
        return None


def field_value(event: Event, name: str) -> Any:
    return event.event_type.value if name == "event_type" else getattr(event, name)


def check_against_reference(values: list[bytes]) -> int:
    """Every accepted record equals the reference's event; returns how many were accepted."""
    decoded = decode_event_columns(values)
    accepted = [i for i, ok in enumerate(decoded.accepted.tolist()) if ok]
    columns = {name: array.to_pylist() for name, array in decoded.arrays.items()}
    for row, index in enumerate(accepted):
        event = reference(values[index])
        assert event is not None, f"accepted a record the reference refuses: {values[index]!r}"
        for name, column in columns.items():
            assert column[row] == field_value(event, name), (name, values[index])
    return len(accepted)


def test_generated_events_all_take_the_fast_path_with_the_reference_values() -> None:
    values = [encode_event(e) for e in generated(3000)]
    assert check_against_reference(values) == len(values)


def test_an_empty_batch() -> None:
    decoded = decode_event_columns([])
    assert len(decoded.accepted) == 0
    assert all(len(array) == 0 for array in decoded.arrays.values())


def raw_record(**fields: Any) -> bytes:
    """An Avro body written field by field, bypassing the producer's validation."""
    from io import BytesIO  # noqa: PLC0415

    from fastavro import schemaless_writer  # noqa: PLC0415

    from schemas.registry import CURRENT_EVENT_SCHEMA_ID, schema_for  # noqa: PLC0415

    base: dict[str, Any] = {
        "event_id": "e1",
        "user_id": "u1",
        "event_type": "view",
        "event_time_ms": 1_790_000_000_000,
        "platform": "android",
        "language": "en",
        "product_id": "p1",
        "category_id": "c1",
        "price_paise": 100,
        "feed_position": 0,
        "order_id": None,
        "quantity": None,
    }
    out = BytesIO()
    out.write(HEADER.pack(0, CURRENT_EVENT_SCHEMA_ID))
    schemaless_writer(out, schema_for(CURRENT_EVENT_SCHEMA_ID), {**base, **fields})
    return out.getvalue()


EDGES = [
    {},
    {"event_id": ""},
    {"user_id": ""},
    {"user_id": "u" * 128},
    {"user_id": "u" * 129},
    {"user_id": "has space"},
    {"user_id": "brace{"},
    {"user_id": "pipe|tilde~"},
    {"user_id": "ünï"},
    {"event_time_ms": 0},
    {"event_time_ms": -5},
    {"product_id": None},
    {"product_id": ""},
    {"product_id": "p" * 256},
    {"product_id": "p" * 257},
    {"product_id": "tab\there"},
    {"product_id": "café"},
    {"product_id": "é" * 100},
    {"event_type": "app_open", "product_id": None},
    {"event_type": "app_open", "product_id": "tab\there"},
    {"event_type": "order", "order_id": None},
    {"event_type": "order", "order_id": ""},
    {"event_type": "order", "order_id": "o1", "quantity": 2},
    {"event_type": "view", "order_id": ""},
    {"price_paise": -1},
    {"feed_position": -1},
    {"quantity": -1},
    {"price_paise": None, "feed_position": None, "quantity": 0},
    {"category_id": "ünicode-category"},
    {"event_time_ms": 2**62},
]


@pytest.mark.parametrize("fields", EDGES, ids=[str(sorted(f.items()))[:60] for f in EDGES])
def test_every_rule_edge_agrees_with_the_reference(fields: dict[str, Any]) -> None:
    value = raw_record(**fields)
    decoded = decode_event_columns([value, encode_event(generated(1)[0])])
    accepted = bool(decoded.accepted[0])
    if accepted:
        assert reference(value) is not None, fields
    check_against_reference([value])


def test_corrupted_bytes_are_never_accepted_unless_the_reference_accepts_them() -> None:
    rng = random.Random(7)
    good = [encode_event(e) for e in generated(400, seed=5)]
    broken: list[bytes] = []
    for value in good:
        data = bytearray(value)
        kind = rng.randrange(5)
        if kind == 0:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 1:
            del data[rng.randrange(5, len(data)) :]
        elif kind == 2:
            data += bytes([rng.randrange(256)])
        elif kind == 3:
            data[1:5] = struct.pack(">I", rng.choice([2, 7, 99]))
        else:
            data = bytearray(data[: rng.randrange(0, 5)])
        broken.append(bytes(data))
    mixed = [v for pair in zip(good, broken, strict=True) for v in pair]
    accepted = check_against_reference(mixed)
    assert accepted >= len(good), "every intact record still takes the fast path"


def test_text_that_is_not_utf8_leaves_only_its_record_to_the_reference() -> None:
    good = [encode_event(e) for e in generated(20)]
    bad = bytearray(raw_record(category_id="ab"))
    bad[bad.index(b"ab")] = 0xFF
    values = [*good[:7], bytes(bad), *good[7:]]
    decoded = decode_event_columns(values)
    assert decoded.accepted.tolist() == [True] * 7 + [False] + [True] * 13
    assert reference(bytes(bad)) is None
    assert check_against_reference(values) == 20


def test_an_event_changed_after_encoding_is_decoded_as_sent() -> None:
    event = dataclasses.replace(generated(1)[0], event_type=EventType.CLICK, feed_position=3)
    [value] = [encode_event(event)]
    decoded = decode_event_columns([value])
    assert decoded.arrays["event_type"].to_pylist() == ["click"]
    assert decoded.arrays["feed_position"].to_pylist() == [3]
