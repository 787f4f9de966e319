import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import decode_event, encode_event
from schemas.events import Event, EventType, InvalidEvent, _explain, validate


def view(**overrides: object) -> Event:
    fields = {
        "event_id": "e1",
        "user_id": "u1",
        "event_type": EventType.VIEW,
        "event_time_ms": 1_700_000_000_000,
        "product_id": "p1",
    }
    return Event(**{**fields, **overrides})  # type: ignore[arg-type]


def test_round_trip_through_the_wire_encoding() -> None:
    event = view(category_id="c1", price_paise=19900, feed_position=3, language="hi")
    assert decode_event(encode_event(event)) == event


def test_app_open_needs_no_product() -> None:
    event = Event("e2", "u1", EventType.APP_OPEN, 1_700_000_000_000)
    assert decode_event(encode_event(event)).product_id is None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"user_id": ""}, "user_id"),
        ({"event_id": ""}, "event_id"),
        ({"event_time_ms": 0}, "event_time_ms"),
        ({"event_time_ms": "soon"}, "event_time_ms"),
        ({"event_time_ms": True}, "event_time_ms"),
        ({"product_id": None}, "product_id"),
        ({"price_paise": -1}, "price_paise"),
        ({"feed_position": 1.5}, "feed_position"),
        ({"quantity": -1}, "quantity"),
        ({"order_id": ""}, "order_id"),
        ({"event_type": EventType.ORDER}, "order_id"),
    ],
)
def test_invalid_events_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        view(**overrides)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (None, "payload"),
        (b"", "payload"),
        (b"{not json either}", "payload"),  # no magic byte: not our framing
        (b"\x00\x00\x00\x00\x63" + b"\x02", "schema_id"),  # unknown schema id 99
        (b"\x00\x00\x00\x00\x01" + b"\x02", "payload"),  # truncated Avro body
    ],
)
def test_undecodable_payloads_name_the_problem(payload: bytes | None, field: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_event(payload)
    assert info.value.field == field


VALID_OR_NOT = {
    "event_id": ["e1", "e1", "", 5],
    "user_id": ["u1", "u1", "", None],
    "event_type": [*EventType, "view"],
    "event_time_ms": [1_700_000_000_000] * 3 + [0, -1, True, 1.5],
    "product_id": ["p1", "p1", None, "", 3],
    "price_paise": [None, 0, 100, -1, True, 2.5],
    "feed_position": [None, 0, 7, -1],
    "order_id": [None, "o1", "o1", ""],
    "quantity": [None, 0, 3, -2],
}


@settings(max_examples=400)
@given(st.fixed_dictionaries({k: st.sampled_from(v) for k, v in VALID_OR_NOT.items()}))
def test_the_fast_path_agrees_with_the_rules(fields: dict) -> None:
    """validate() accepts exactly the events the descriptive rules accept."""
    event = object.__new__(Event)
    defaults = {"platform": "android", "language": "en", "category_id": None}
    for name, value in {**defaults, **fields}.items():
        setattr(event, name, value)
    try:
        _explain(event)
    except InvalidEvent:
        with pytest.raises(InvalidEvent):
            validate(event)
    else:
        validate(event)


@pytest.mark.parametrize(
    "user_id",
    ["}u1", "u{1}", "{u1}", "u 1", "u\n1", "u\x001", "ü1", "u" * 129],
)
def test_a_user_id_outside_the_key_alphabet_is_refused(user_id: str) -> None:
    """Ids are part of Redis keys and their cluster hash tag: printable ASCII without
    braces or spaces, 1 to 128 characters."""
    with pytest.raises(InvalidEvent) as refused:
        validate(Event("e1", user_id, EventType.APP_OPEN, 1_763_700_000_000))
    assert refused.value.field == "user_id"


@pytest.mark.parametrize(
    "user_id",
    ["u1", "42", "a" * 128, "user@example.com", "5f0e7c1e-8c2b-4d0e-9a6f-3f1d2c3b4a5e", "a|b~c"],
)
def test_ordinary_user_ids_pass(user_id: str) -> None:
    validate(Event("e1", user_id, EventType.APP_OPEN, 1_763_700_000_000))


@pytest.mark.parametrize(
    ("product_id", "ok"),
    [
        ("p" * 256, True),
        ("\U0001f6d2" * 64, True),  # 256 bytes in UTF-8
        ("p" * 257, False),
        ("\U0001f6d2" * 64 + "p", False),
        ("ü" * 128, True),
        ("ü" * 129, False),  # 129 characters, 258 bytes
        ("a b-c/d", True),
        ("a\x01", False),
        ("a\n", False),
        ("a\u200b", False),  # zero-width space: not printable
    ],
)
def test_product_ids_are_printable_and_at_most_256_bytes(product_id: str, ok: bool) -> None:
    """Every snapshot and history row holds its product ids: the bound keeps one user's
    cold rows within what a CQL server takes in one mutation."""

    def event() -> Event:
        return Event("e1", "u1", EventType.VIEW, 1_763_700_000_000, product_id=product_id)

    if ok:
        validate(event())
    else:
        with pytest.raises(InvalidEvent, match="printable and at most 256 bytes") as refused:
            validate(event())
        assert refused.value.field == "product_id"
