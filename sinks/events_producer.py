"""Publishing events to the events topic with confluent-kafka.

Keyed by user id so one user's events stay ordered on one partition. Idempotent
producer with acks=all: a retry inside the client never duplicates or reorders.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from schemas.codec import encode_event
from schemas.events import Event

DeliveryCallback = Callable[[KafkaError | None, Message], None]


class EventProducer:
    """Encode, key and send events; `close()` (or leaving the `with` block) flushes."""

    def __init__(self, bootstrap: str, topic: str, **config: Any) -> None:
        self.topic = topic
        self.delivered = 0
        self.failed = 0
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "batch.num.messages": 10000,
                "compression.type": "lz4",
                **config,
            }
        )

    def send(self, event: Event, on_delivery: DeliveryCallback | None = None) -> None:
        value = encode_event(event)
        while True:
            try:
                self._producer.produce(
                    self.topic,
                    key=event.user_id.encode(),
                    value=value,
                    on_delivery=on_delivery or self._count,
                )
                break
            except BufferError:
                # Local queue full: let the client deliver some, then try again.
                self._producer.poll(0.05)
        self._producer.poll(0)

    def _count(self, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for outstanding deliveries; returns how many are still undelivered."""
        remaining: int = self._producer.flush(timeout_s)
        return remaining

    def close(self) -> None:
        remaining = self.flush()
        if remaining:
            raise KafkaException(f"{remaining} events still undelivered after flush")

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
