"""Reading the dead-letter topic for people: what was rejected, why, and from where.

`signals dlq list --records` prints the rejected events as JSON lines that
`signals produce --file` accepts, so a dead letter is re-driven by listing it, fixing the
line, and producing the file.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from confluent_kafka import Consumer

from schemas.events import InvalidEvent
from schemas.wire import decode_record
from sinks.connectivity import KafkaTarget, librdkafka_base

#: Contract fields the Event dataclass does not carry yet (always null on the wire today).
_NOT_YET_IN_EVENT = ("order_id", "quantity")


@dataclass(frozen=True)
class DeadLetter:
    offset: int
    headers: dict[str, str]
    value: bytes

    @property
    def record(self) -> dict[str, Any] | None:
        """The event as sent, if its bytes still decode as Avro; None otherwise."""
        try:
            record = decode_record(self.value)
        except InvalidEvent:
            return None
        for name in _NOT_YET_IN_EVENT:
            if record.get(name) is None:
                record.pop(name, None)
        return record

    def summary(self) -> str:
        source = (
            f"{self.headers.get('dlq.source.topic', '?')}"
            f"[{self.headers.get('dlq.source.partition', '?')}]"
            f"@{self.headers.get('dlq.source.offset', '?')}"
        )
        record = self.record
        shown = json.dumps(record) if record is not None else f"raw {self.value[:40].hex()}..."
        return f"#{self.offset} from {source}: {self.headers.get('dlq.reason', '?')}\n    {shown}"


def read_dead_letters(
    bootstrap: KafkaTarget, topic: str, limit: int, idle_s: float
) -> Iterator[DeadLetter]:
    """Everything on the topic from the start (up to `limit`), without committing anything."""
    consumer = Consumer(
        {
            **librdkafka_base(bootstrap),
            "group.id": f"dlq-reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    seen, last_message = 0, time.monotonic()
    try:
        while seen < limit and time.monotonic() - last_message < idle_s:
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            last_message = time.monotonic()
            seen += 1
            raw_headers = cast("list[tuple[str, bytes | None]]", message.headers() or [])
            headers = {key: _text(value) for key, value in raw_headers}
            yield DeadLetter(message.offset() or 0, headers, _bytes(message.value()))
    finally:
        consumer.close()


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value or ""


def _bytes(value: str | bytes | None) -> bytes:
    return value.encode() if isinstance(value, str) else value or b""
