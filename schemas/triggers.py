"""The rank-refresh trigger: what the ingest worker tells the ranker, and its wire form.

Avro under the embedded registry's trigger schema (`schemas/avro/trigger-v2.avsc`; v1
triggers, without a language, still decode), with
the same Confluent framing as events, keyed by user id on the trigger topic. Delivery is
at least once: a batch read again after a crash publishes its triggers again with the
same sequence, so a consumer keeps, per user, the highest sequence it acted on and drops
anything not above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from io import BytesIO
from typing import Any, cast

from fastavro import schemaless_reader, schemaless_writer

from schemas.registry import CURRENT_TRIGGER_SCHEMA_ID, TRIGGER_SCHEMA_IDS, schema_for
from schemas.wire import HEADER, HEADER_SIZE, MAGIC, unframe


class Reason(StrEnum):
    HIGH_INTENT = "high_intent"
    SESSION_START = "session_start"
    TOP_CATEGORY = "top_category"
    VIEWS = "views"


@dataclass(frozen=True, slots=True)
class RankTrigger:
    user_id: str
    sequence: int  # the offset of the newest event that caused it
    reason: Reason
    newest_event_time_ms: int
    partition: int
    top_category: str | None
    published_at_ms: int
    language: str | None = None  # of the user's newest event behind it


class InvalidTrigger(ValueError):
    """A trigger message that cannot be decoded."""


def encode_trigger(trigger: RankTrigger) -> bytes:
    """The framed Avro message, written by hand for the current trigger schema: a worker
    publishes one for about every fifth event, and fastavro's writer took 4.7-5.8 us
    each (this ~2.5). `tests/unit/test_triggers.py` checks it gives fastavro's bytes, and
    `_ENCODED_FIELDS` below that the schema is still the one written for."""
    user = trigger.user_id.encode()
    return b"".join(
        (
            _FRAME,
            _long(len(user)),
            user,
            _long(trigger.sequence),
            _REASONS[trigger.reason],
            _long(trigger.newest_event_time_ms),
            _long(trigger.partition),
            _optional(trigger.top_category),
            _long(trigger.published_at_ms),
            _optional(trigger.language),
        )
    )


def encode_trigger_fastavro(trigger: RankTrigger) -> bytes:
    """The same message written by fastavro from the schema: the reference the tests
    hold `encode_trigger` to."""
    out = BytesIO()
    out.write(HEADER.pack(MAGIC, CURRENT_TRIGGER_SCHEMA_ID))
    record: dict[str, Any] = {
        "user_id": trigger.user_id,
        "sequence": trigger.sequence,
        "reason": trigger.reason.value,
        "newest_event_time_ms": trigger.newest_event_time_ms,
        "partition": trigger.partition,
        "top_category": trigger.top_category,
        "published_at_ms": trigger.published_at_ms,
        "language": trigger.language,
    }
    schemaless_writer(out, schema_for(CURRENT_TRIGGER_SCHEMA_ID), record)
    return out.getvalue()


def _long(value: int) -> bytes:
    """An Avro int or long: zigzag, then 7 bits a byte, low first."""
    number = (value << 1) ^ (value >> 63)
    if number < 0x80:
        return _SMALL[number]
    out = bytearray()
    while number >= 0x80:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def _optional(text: str | None) -> bytes:
    """A ["null", "string"] union: branch 0, or branch 1 and the string."""
    if text is None:
        return b"\x00"
    data = text.encode()
    return b"\x02" + _long(len(data)) + data


_SMALL = [bytes([n]) for n in range(0x80)]
_FRAME = HEADER.pack(MAGIC, CURRENT_TRIGGER_SCHEMA_ID)
_TRIGGER_SCHEMA = cast("dict[str, Any]", schema_for(CURRENT_TRIGGER_SCHEMA_ID))
#: What `encode_trigger` writes, in order: a new schema version fails here at import.
_ENCODED_FIELDS = [
    ("user_id", "string"),
    ("sequence", "long"),
    ("reason", "enum"),
    ("newest_event_time_ms", "long"),
    ("partition", "int"),
    ("top_category", ["null", "string"]),
    ("published_at_ms", "long"),
    ("language", ["null", "string"]),
]
if [
    (f["name"], f["type"]["type"] if isinstance(f["type"], dict) else f["type"])
    for f in _TRIGGER_SCHEMA["fields"]
] != _ENCODED_FIELDS:
    raise RuntimeError("the trigger schema changed: update encode_trigger to it")
_REASONS = {
    Reason(symbol): _long(index)
    for index, symbol in enumerate(
        next(f["type"]["symbols"] for f in _TRIGGER_SCHEMA["fields"] if f["name"] == "reason")
    )
}


def decode_trigger(data: bytes | None) -> RankTrigger:
    """A framed trigger message; raises InvalidTrigger saying why not."""
    if data is None or len(data) < HEADER_SIZE:
        raise InvalidTrigger("empty or too short for Confluent framing")
    try:
        schema_id, body = unframe(data)
    except ValueError as exc:
        raise InvalidTrigger(str(exc)) from None
    if schema_id not in TRIGGER_SCHEMA_IDS:
        raise InvalidTrigger(f"schema id {schema_id} is not a trigger schema")
    try:
        record = schemaless_reader(
            BytesIO(body), schema_for(schema_id), schema_for(CURRENT_TRIGGER_SCHEMA_ID)
        )
    except (EOFError, IndexError, ValueError, KeyError, TypeError) as exc:
        raise InvalidTrigger(f"corrupt Avro body ({exc!r})") from None
    assert isinstance(record, dict)
    return RankTrigger(
        user_id=record["user_id"],
        sequence=record["sequence"],
        reason=Reason(record["reason"]),
        newest_event_time_ms=record["newest_event_time_ms"],
        partition=record["partition"],
        top_category=record["top_category"],
        published_at_ms=record["published_at_ms"],
        language=record["language"],
    )
