"""The generated record decoders agree with fastavro, on good bytes and on corrupt ones."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas.wire as wire
from schemas.avro_decoder import compile_record_decoder
from schemas.events import Event, EventType
from schemas.registry import CURRENT_EVENT_SCHEMA_ID, schema_for

# Every type the generator supports, with nullable unions in both branch orders.
ALL_TYPES = parse_schema(
    {
        "type": "record",
        "name": "test.AllTypes",
        "fields": [
            {"name": "flag", "type": "boolean"},
            {"name": "small", "type": "int"},
            {"name": "big", "type": "long"},
            {"name": "ratio", "type": "float"},
            {"name": "precise", "type": "double"},
            {"name": "text", "type": "string"},
            {"name": "blob", "type": "bytes"},
            {"name": "nothing", "type": "null"},
            {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B", "C"]}},
            {"name": "maybe_text", "type": ["null", "string"]},
            {"name": "text_or_null", "type": ["string", "null"]},
            {"name": "maybe_long", "type": ["null", "long"]},
        ],
    },
    named_schemas={},
)
ALL_NAMES = tuple(field["name"] for field in ALL_TYPES["fields"])

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
all_types_records = st.fixed_dictionaries(
    {
        "flag": st.booleans(),
        "small": INT32,
        "big": INT64,
        "ratio": st.floats(width=32, allow_nan=False),
        "precise": st.floats(allow_nan=False),
        "text": st.text(),
        "blob": st.binary(),
        "nothing": st.none(),
        "kind": st.sampled_from(["A", "B", "C"]),
        "maybe_text": st.none() | st.text(),
        "text_or_null": st.none() | st.text(),
        "maybe_long": st.none() | INT64,
    }
)


def encode(schema: Any, record: dict[str, Any]) -> bytes:
    out = BytesIO()
    schemaless_writer(out, schema, record)
    return out.getvalue()


def fastavro_read(schema: Any, data: bytes, names: tuple[str, ...]) -> tuple[tuple[Any, ...], int]:
    body = BytesIO(data)
    record = schemaless_reader(body, schema)
    return tuple(record[name] for name in names), body.tell()


@settings(max_examples=300, deadline=None)
@given(all_types_records, st.binary(max_size=4))
def test_every_supported_type_decodes_like_fastavro(record: dict[str, Any], prefix: bytes) -> None:
    decoder = compile_record_decoder(ALL_TYPES, ALL_NAMES)
    assert decoder is not None
    data = prefix + encode(ALL_TYPES, record)
    values, end = decoder(data, len(prefix))
    assert end == len(data)
    assert values == fastavro_read(ALL_TYPES, data[len(prefix) :], ALL_NAMES)[0]
    assert values == tuple(record[name] for name in ALL_NAMES)


def test_fields_come_back_in_the_requested_order() -> None:
    decoder = compile_record_decoder(ALL_TYPES, ("kind", "flag"))
    assert decoder is not None
    data = encode(
        ALL_TYPES,
        {"flag": True, "small": 1, "big": 2, "ratio": 0.5, "precise": 0.25, "text": "t",
         "blob": b"b", "nothing": None, "kind": "C", "maybe_text": None,
         "text_or_null": "x", "maybe_long": 7},
    )  # fmt: skip
    assert decoder(data, 0) == (("C", True), len(data))


event_records = st.fixed_dictionaries(
    {
        "event_id": st.text(),
        "user_id": st.text(),
        "event_type": st.sampled_from(
            ["app_open", "view", "click", "add_to_cart", "remove_from_cart", "wishlist", "order"]
        ),
        "event_time_ms": INT64,
        "platform": st.text(max_size=8),
        "language": st.text(max_size=8),
        "product_id": st.none() | st.text(),
        "category_id": st.none() | st.text(),
        "price_paise": st.none() | INT64,
        "feed_position": st.none() | INT32,
        "order_id": st.none() | st.text(),
        "quantity": st.none() | INT32,
    }
)
corruptions = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 400), st.just(0)),
    st.tuples(st.just("flip"), st.integers(0, 400), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, 400), st.integers(0, 255)),
)


def corrupt(data: bytes, how: tuple[str, int, int]) -> bytes:
    kind, at, byte = how
    at = min(at, len(data))
    if kind == "truncate":
        return data[:at]
    if kind == "insert":
        return data[:at] + bytes([byte]) + data[at:]
    if at == len(data):
        return data + bytes([byte])
    return data[:at] + bytes([data[at] ^ byte]) + data[at + 1 :]


@settings(max_examples=500, deadline=None)
@given(event_records, corruptions)
def test_corrupt_event_bytes_never_decode_to_something_fastavro_would_not(
    record: dict[str, Any], how: tuple[str, int, int]
) -> None:
    """Whatever the generated decoder accepts, fastavro reads the same way; it raises otherwise."""
    schema = schema_for(CURRENT_EVENT_SCHEMA_ID)
    names = tuple(field["name"] for field in schema["fields"])
    decoder = compile_record_decoder(schema, names)
    assert decoder is not None
    data = corrupt(encode(schema, record), how)
    try:
        ours = decoder(data, 0)
    except (EOFError, IndexError, ValueError, OverflowError):
        return  # rejected: the wire layer dead-letters it with the reason
    assert ours == fastavro_read(schema, data, names)


ENUM = {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}


@pytest.mark.parametrize(
    ("field_type", "data", "error"),
    [
        ("long", b"\xff" * 11 + b"\x01", OverflowError),  # 11-byte varint: not an Avro long
        ("int", b"\x80\x80\x80\x80\x10", OverflowError),  # 2**31 does not fit an int
        (ENUM, b"\x03", IndexError),  # enum index -2
        (ENUM, b"\x0e", IndexError),  # enum index 7 of 3 symbols
        ("string", b"\x06ab", EOFError),  # string of 3 bytes with 2 left
        ("string", b"\x01", EOFError),  # negative string length
        ("string", b"\x04\xff\xfe", ValueError),  # invalid UTF-8
        (["null", "string"], b"\x04", IndexError),  # union branch 2 of two
        ("boolean", b"\x02", ValueError),  # boolean byte 2
        ("double", b"\x00" * 7, EOFError),  # 7 of 8 bytes
        ("int", b"", IndexError),  # nothing at all
    ],
)
def test_malformed_fields_raise_the_errors_the_wire_layer_dead_letters(
    field_type: Any, data: bytes, error: type[Exception]
) -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "x", "type": field_type}]}
    decoder = compile_record_decoder(schema, ("x",))
    assert decoder is not None
    with pytest.raises(error):
        decoder(data, 0)


@pytest.mark.parametrize(
    "field_type",
    [
        {"type": "array", "items": "string"},
        {"type": "map", "values": "long"},
        {"type": "record", "name": "Inner", "fields": [{"name": "y", "type": "int"}]},
        {"type": "fixed", "name": "F", "size": 4},
        {"type": "int", "logicalType": "date"},
        ["null", "string", "long"],
        ["string", "long"],
    ],
)
def test_unsupported_schemas_are_left_to_fastavro(field_type: Any) -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "x", "type": field_type}]}
    assert compile_record_decoder(schema, ("x",)) is None


def test_a_requested_field_missing_from_the_schema_means_no_decoder() -> None:
    assert compile_record_decoder(ALL_TYPES, ("flag", "absent")) is None


def test_wire_falls_back_to_fastavro_when_no_decoder_can_be_generated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    event = Event("e-1", "u-1", EventType.CLICK, 1_700_000_000_000, product_id="p-1")
    data = wire.encode_event_avro(event)
    monkeypatch.setattr(wire, "compile_record_decoder", lambda schema, names: None)
    monkeypatch.setattr(wire, "_EVENT_DECODERS", {})
    assert wire.decode_event_avro(data) == event
    with pytest.raises(wire.InvalidEvent, match="trailing bytes"):
        wire.decode_event_avro(data + b"\x00")
    with pytest.raises(wire.InvalidEvent, match="corrupt or truncated"):
        wire.decode_event_avro(data[:-3])
