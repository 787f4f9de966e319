"""Wire encoding of events: Avro with Confluent framing (see `schemas.wire`).

Every producer and consumer goes through these two functions, so the wire format is
decided here once.
"""

from __future__ import annotations

from schemas.events import Event
from schemas.wire import decode_event_avro, encode_event_avro


def encode_event(event: Event) -> bytes:
    """Magic byte 0, 4-byte big-endian schema id, Avro binary body."""
    return encode_event_avro(event)


def decode_event(payload: bytes | None) -> Event:
    """Decode and validate one message value; raises InvalidEvent naming field and reason."""
    return decode_event_avro(payload)
