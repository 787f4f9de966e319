"""Avro encoding of events with Confluent wire framing.

A framed message is ``MAGIC`` (one zero byte), the schema id as a 4-byte big-endian unsigned
integer, then the Avro binary body (schemaless, no container header). Schema ids come from the
embedded registry in `schemas.registry`, so no network registry is consulted.

This is on the consumer hot path: schemas are parsed once (registry cache), the header is read
with one precompiled `struct` call, and the body is decoded straight from the framed buffer,
without a copy, by a decoder generated from the writer's schema (`schemas.avro_decoder`;
fastavro where the generator does not apply).
"""

from __future__ import annotations

import struct
from dataclasses import fields
from io import BytesIO
from operator import itemgetter
from typing import Any, NoReturn

from fastavro import schemaless_reader, schemaless_writer
from fastavro.types import Schema

from schemas.avro_decoder import RecordDecoder, compile_record_decoder
from schemas.events import Event, EventType, InvalidEvent
from schemas.registry import CURRENT_EVENT_SCHEMA_ID, UnknownSchema, schema_for

MAGIC = 0
HEADER = struct.Struct(">BI")
HEADER_SIZE = HEADER.size  # 5

_EVENT_TYPES: dict[str, EventType] = {member.value: member for member in EventType}
# Record fields in Event's constructor order: what the event decoders return.
_EVENT_FIELD_NAMES = tuple(field.name for field in fields(Event))
# fastavro's failure modes on truncated or corrupt input (UnicodeDecodeError is a ValueError).
_DECODE_ERRORS = (EOFError, IndexError, ValueError, OverflowError, KeyError, TypeError)
# Parsed schemas by id, filled from the registry on first use of each id.
_SCHEMAS: dict[int, Schema] = {}
# Event decoders by schema id (see `_event_decoder`), filled on first use of each id.
_EVENT_DECODERS: dict[int, RecordDecoder] = {}


def frame(schema_id: int, avro_bytes: bytes) -> bytes:
    """Prefix an Avro body with the Confluent header (magic byte + big-endian schema id)."""
    return HEADER.pack(MAGIC, schema_id) + avro_bytes


def unframe(data: bytes) -> tuple[int, memoryview]:
    """Split a framed message into (schema id, Avro body view); raises InvalidEvent("payload")."""
    schema_id = _read_header(data)
    return schema_id, memoryview(data)[HEADER_SIZE:]


def encode_event_avro(event: Event) -> bytes:
    """The framed Avro encoding of `event` under the current event schema."""
    schema = _schema(CURRENT_EVENT_SCHEMA_ID)
    record: dict[str, Any] = {
        "event_id": event.event_id,
        "user_id": event.user_id,
        "event_type": event.event_type.value,
        "event_time_ms": event.event_time_ms,
        "platform": event.platform,
        "language": event.language,
        "product_id": event.product_id,
        "category_id": event.category_id,
        "price_paise": event.price_paise,
        "feed_position": event.feed_position,
        "order_id": event.order_id,
        "quantity": event.quantity,
    }
    out = BytesIO()
    out.write(HEADER.pack(MAGIC, CURRENT_EVENT_SCHEMA_ID))
    try:
        schemaless_writer(out, schema, record)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidEvent("event", f"cannot encode as Avro ({exc})") from None
    return out.getvalue()


def decode_event_avro(data: bytes | None) -> Event:
    """Decode and validate one framed Avro message; raises InvalidEvent with the reason.

    The field is "payload" for framing and Avro body errors, "schema_id" for an id the
    registry does not know, and the offending event field when the event fails validation.
    """
    if data is None:
        raise InvalidEvent("payload", "empty message value")
    # Header check and decoder lookup inlined (hot path); the helpers raise with the reasons.
    if len(data) < HEADER_SIZE or data[0] != MAGIC:
        _reject_header(data)
    schema_id = HEADER.unpack_from(data)[1]
    decoder = _EVENT_DECODERS.get(schema_id) or _event_decoder(schema_id)
    try:
        (event_id, user_id, type_name, *rest), end = decoder(data, HEADER_SIZE)
    except _DECODE_ERRORS as exc:
        raise InvalidEvent(
            "payload", f"corrupt or truncated Avro body for schema id {schema_id} ({exc!r})"
        ) from None
    if end != len(data):
        raise InvalidEvent("payload", f"{len(data) - end} trailing bytes after the Avro body")
    event_type = _EVENT_TYPES.get(type_name)
    if event_type is None:
        raise InvalidEvent("event_type", f"unknown type {type_name!r}")
    # The constructor runs `validate`, so the result is a checked Event.
    return Event(event_id, user_id, event_type, *rest)


def _event_decoder(schema_id: int) -> RecordDecoder:
    """The decoder for events written with `schema_id`: generated when the schema allows it.

    Falls back to fastavro (same interface) for schemas the generator does not handle.
    """
    schema = _schema(schema_id)
    decoder = compile_record_decoder(schema, _EVENT_FIELD_NAMES)
    if decoder is None:
        decoder = _fastavro_decoder(schema)
    _EVENT_DECODERS[schema_id] = decoder
    return decoder


def _fastavro_decoder(schema: Schema) -> RecordDecoder:
    pick = itemgetter(*_EVENT_FIELD_NAMES)

    def decode(data: bytes, start: int) -> tuple[tuple[Any, ...], int]:
        body = BytesIO(data)
        body.seek(start)
        record = schemaless_reader(body, schema)
        if not isinstance(record, dict):  # pragma: no cover - registered schemas are records
            raise ValueError("Avro body is not a record")
        return pick(record), body.tell()

    return decode


def _read_header(data: bytes) -> int:
    if len(data) < HEADER_SIZE or data[0] != MAGIC:
        _reject_header(data)
    return int(HEADER.unpack_from(data)[1])


def _reject_header(data: bytes) -> NoReturn:
    if len(data) < HEADER_SIZE:
        raise InvalidEvent(
            "payload", f"too short for Confluent framing ({len(data)} < {HEADER_SIZE} bytes)"
        )
    raise InvalidEvent("payload", f"wrong magic byte {data[0]} (expected {MAGIC})")


def _schema(schema_id: int) -> Schema:
    schema = _SCHEMAS.get(schema_id)
    if schema is None:
        try:
            schema = schema_for(schema_id)
        except UnknownSchema:
            raise InvalidEvent("schema_id", f"unknown schema id {schema_id}") from None
        _SCHEMAS[schema_id] = schema
    return schema


def decode_record(data: bytes) -> dict[str, Any]:
    """The Avro record of a framed message, without validating it as an Event.

    For tools that show or repair dead letters: a record that breaks the contract still
    decodes here, so it can be printed, corrected and sent again.
    """
    schema_id, body = unframe(data)
    try:
        record = schemaless_reader(BytesIO(body), _schema(schema_id))
    except _DECODE_ERRORS as exc:
        raise InvalidEvent("payload", f"corrupt or truncated Avro body ({exc!r})") from None
    if not isinstance(record, dict):  # pragma: no cover - every registered schema is a record
        raise InvalidEvent("payload", "Avro body is not a record")
    return record
