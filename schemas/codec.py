"""Wire encoding of events.

The walking skeleton uses JSON (UTF-8, one object per message). The Avro contract with
Confluent framing replaces it in the contracts issue; callers go through these two
functions so the switch touches only this module.
"""

from __future__ import annotations

import json

from schemas.events import Event, InvalidEvent


def encode_event(event: Event) -> bytes:
    return json.dumps(event.to_dict(), separators=(",", ":")).encode()


def decode_event(payload: bytes | None) -> Event:
    """Decode and validate one message value; raises InvalidEvent with the reason."""
    if not payload:
        raise InvalidEvent("payload", "empty message value")
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEvent("payload", f"not a JSON event ({exc})") from None
    return Event.from_dict(data)
