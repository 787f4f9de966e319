"""The Avro event contract: schema, embedded registry, Confluent framing, compatibility."""

import copy
import json
from io import BytesIO
from pathlib import Path
from typing import Any

import fastavro
import pytest

from schemas.compat import backward_compatible, forward_compatible
from schemas.events import Event, EventType, InvalidEvent
from schemas.registry import (
    CURRENT_EVENT_SCHEMA_ID,
    UnknownSchema,
    raw_schema_for,
    schema_for,
)
from schemas.wire import MAGIC, decode_event_avro, encode_event_avro, frame, unframe

AVSC = Path(__file__).resolve().parents[2] / "schemas" / "avro" / "event-v1.avsc"
T0 = 1_700_000_000_000


def event_of(event_type: EventType, **overrides: Any) -> Event:
    fields: dict[str, Any] = {
        "event_id": f"e-{event_type.value}",
        "user_id": "u1",
        "event_type": event_type,
        "event_time_ms": T0,
        "product_id": None if event_type is EventType.APP_OPEN else "p1",
        "order_id": "o1" if event_type is EventType.ORDER else None,
    }
    return Event(**{**fields, **overrides})


def record(name: str, *fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": "t", "fields": list(fields)}


# --- the schema file -------------------------------------------------------------------------


def test_fastavro_parses_the_avsc() -> None:
    raw = json.loads(AVSC.read_text(encoding="utf-8"))
    parsed = fastavro.parse_schema(raw)
    assert parsed["name"] == "feedsignals.Event"


def test_schema_covers_every_event_type_and_documents_every_field() -> None:
    raw = raw_schema_for(CURRENT_EVENT_SCHEMA_ID)
    assert raw["namespace"] == "feedsignals"
    fields = {f["name"]: f for f in raw["fields"]}
    assert fields["event_type"]["type"]["symbols"] == [t.value for t in EventType]
    assert fields["event_time_ms"]["type"] == "long"
    assert all(f.get("doc") for f in raw["fields"])
    for optional in ("product_id", "category_id", "price_paise", "feed_position"):
        assert fields[optional]["type"][0] == "null"
        assert fields[optional]["default"] is None
    assert {"order_id", "quantity"} <= set(fields)


def test_registry_knows_id_1_and_rejects_others() -> None:
    assert CURRENT_EVENT_SCHEMA_ID == 1
    assert schema_for(1) is schema_for(1)  # parsed once, cached
    with pytest.raises(UnknownSchema) as info:
        schema_for(99)
    assert info.value.schema_id == 99


# --- framing and round trips -----------------------------------------------------------------


@pytest.mark.parametrize("event_type", list(EventType))
def test_every_event_type_round_trips(event_type: EventType) -> None:
    event = event_of(event_type)
    assert decode_event_avro(encode_event_avro(event)) == event


def test_round_trip_keeps_every_optional_field() -> None:
    event = event_of(
        EventType.ORDER,
        category_id="c9",
        price_paise=19_900,
        feed_position=0,
        platform="ios",
        language="hi",
        quantity=2,
    )
    assert decode_event_avro(encode_event_avro(event)) == event


def test_framing_is_confluent() -> None:
    data = encode_event_avro(event_of(EventType.VIEW))
    assert data.startswith(b"\x00" + (1).to_bytes(4, "big"))
    assert frame(1, b"abc") == b"\x00\x00\x00\x00\x01abc"
    schema_id, body = unframe(data)
    assert schema_id == 1
    assert MAGIC == 0
    # The body is plain schemaless Avro, readable by fastavro directly.
    decoded = fastavro.schemaless_reader(BytesIO(bytes(body)), schema_for(1))
    assert decoded["order_id"] is None
    assert decoded["quantity"] is None


@pytest.mark.parametrize("data", [b"", b"\x00\x00\x00", b"\x01\x00\x00\x00\x01\x02"])
def test_unframe_rejects_short_or_wrong_magic(data: bytes) -> None:
    with pytest.raises(InvalidEvent) as info:
        unframe(data)
    assert info.value.field == "payload"
    with pytest.raises(InvalidEvent) as info:
        decode_event_avro(data)
    assert info.value.field == "payload"


def test_decode_rejects_unknown_schema_id() -> None:
    body = encode_event_avro(event_of(EventType.VIEW))[5:]
    with pytest.raises(InvalidEvent) as info:
        decode_event_avro(frame(99, body))
    assert info.value.field == "schema_id"
    assert "99" in info.value.reason


def test_decode_rejects_none() -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_event_avro(None)
    assert info.value.field == "payload"


def test_decode_rejects_every_truncation() -> None:
    data = encode_event_avro(event_of(EventType.CLICK, category_id="c1", price_paise=5))
    for cut in range(5, len(data)):
        with pytest.raises(InvalidEvent) as info:
            decode_event_avro(data[:cut])
        assert info.value.field == "payload", cut


def test_decode_rejects_trailing_bytes_and_corrupt_body() -> None:
    data = encode_event_avro(event_of(EventType.VIEW))
    with pytest.raises(InvalidEvent) as info:
        decode_event_avro(data + b"\x00")
    assert info.value.field == "payload"
    with pytest.raises(InvalidEvent) as info:
        decode_event_avro(frame(1, b"\x04\xff\xfe" + data[8:]))  # invalid UTF-8 in event_id
    assert info.value.field == "payload"


def test_decode_validates_the_event() -> None:
    # Well-formed Avro that breaks the event contract: a view without a product.
    out = BytesIO()
    fastavro.schemaless_writer(
        out,
        schema_for(1),
        {"event_id": "e1", "user_id": "u1", "event_type": "view", "event_time_ms": T0},
    )
    with pytest.raises(InvalidEvent) as info:
        decode_event_avro(frame(1, out.getvalue()))
    assert info.value.field == "product_id"


# --- compatibility ---------------------------------------------------------------------------

BASE = record(
    "E",
    {"name": "id", "type": "string"},
    {"name": "count", "type": "int"},
)


def test_adding_an_optional_field_is_backward_and_forward_compatible() -> None:
    new = copy.deepcopy(BASE)
    new["fields"].append({"name": "note", "type": ["null", "string"], "default": None})
    assert backward_compatible(new, BASE) == []
    assert forward_compatible(new, BASE) == []


def test_removing_a_required_field_breaks_forward_compatibility() -> None:
    new = record("E", {"name": "id", "type": "string"})
    assert backward_compatible(new, BASE) == []  # new readers ignore the extra old field
    problems = forward_compatible(new, BASE)
    assert len(problems) == 1
    assert "count" in problems[0]


def test_adding_a_required_field_breaks_backward_compatibility() -> None:
    new = copy.deepcopy(BASE)
    new["fields"].append({"name": "shop", "type": "string"})
    problems = backward_compatible(new, BASE)
    assert len(problems) == 1
    assert "shop" in problems[0]


def test_int_to_long_is_a_legal_promotion_but_not_the_reverse() -> None:
    new = record("E", {"name": "id", "type": "string"}, {"name": "count", "type": "long"})
    assert backward_compatible(new, BASE) == []
    assert forward_compatible(new, BASE) != []  # old int readers cannot read longs


@pytest.mark.parametrize(
    ("writer", "reader", "ok"),
    [
        ("string", "bytes", True),
        ("bytes", "string", True),
        ("float", "double", True),
        ("long", "int", False),
        ("string", "int", False),
        ("string", ["null", "string"], True),
        (["null", "string"], ["null", "string", "long"], True),
        (["null", "string", "long"], ["null", "string"], False),
        (["null", "int"], ["null", "long"], True),
        (["null", "string"], "string", False),
    ],
)
def test_field_type_changes(writer: Any, reader: Any, *, ok: bool) -> None:
    problems = backward_compatible(
        record("E", {"name": "f", "type": reader}), record("E", {"name": "f", "type": writer})
    )
    assert (problems == []) is ok, problems


def test_enum_symbols() -> None:
    old = record("E", {"name": "k", "type": {"type": "enum", "name": "K", "symbols": ["a", "b"]}})
    grown = record(
        "E", {"name": "k", "type": {"type": "enum", "name": "K", "symbols": ["a", "b", "c"]}}
    )
    assert backward_compatible(grown, old) == []
    assert forward_compatible(grown, old) != []  # old readers do not know "c"
    with_default = record(
        "E",
        {"name": "k", "type": {"type": "enum", "name": "K", "symbols": ["a", "b"], "default": "a"}},
    )
    assert backward_compatible(with_default, grown) == []


def test_event_v1_is_compatible_with_itself() -> None:
    v1 = raw_schema_for(1)
    assert backward_compatible(v1, v1) == []
    assert forward_compatible(v1, v1) == []


def test_dropping_an_event_type_breaks_backward_compatibility() -> None:
    v1 = raw_schema_for(1)
    fewer = copy.deepcopy(v1)
    enum = next(f for f in fewer["fields"] if f["name"] == "event_type")["type"]
    enum["symbols"].remove("wishlist")
    problems = backward_compatible(fewer, v1)
    assert problems
    assert "wishlist" in problems[0]


def test_nested_records_and_named_references() -> None:
    inner_old = {"type": "record", "name": "Item", "fields": [{"name": "sku", "type": "string"}]}
    inner_new = {
        "type": "record",
        "name": "Item",
        "fields": [{"name": "sku", "type": "string"}, {"name": "qty", "type": "int"}],
    }
    old = record("E", {"name": "a", "type": inner_old}, {"name": "b", "type": "Item"})
    new = record("E", {"name": "a", "type": inner_new}, {"name": "b", "type": "t.Item"})
    problems = backward_compatible(new, old)
    # Both the inline definition and the by-name reference resolve to the grown record.
    assert [problem.split(":")[0] for problem in problems] == ["a.qty", "b.qty"]
    assert forward_compatible(new, old) == []


def test_recursive_record_terminates() -> None:
    node = record("Node", {"name": "next", "type": ["null", "t.Node"], "default": None})
    assert backward_compatible(node, copy.deepcopy(node)) == []
