"""The producer library: publish events to the events topic with confluent-kafka.

For services that emit shopper events. What it promises:

- an event is validated (the `Event` constructor) and fully Avro-encoded before anything
  is handed to Kafka, so an invalid event raises `InvalidEvent` naming the field and
  nothing half-encoded is ever sent;
- messages are keyed by user id, so one user's events stay ordered on one partition;
- the Kafka producer is idempotent with ``acks=all``: retries inside the client never
  duplicate or reorder, and an event counts as delivered only once all in-sync replicas
  have it;
- every delivery outcome reaches the caller: per-event callbacks with a `DeliveryReport`,
  running counts, the failed reports, and `close()` (or leaving the ``with`` block) flushes
  and raises `DeliveryFailed` if anything was not delivered.

Sending is asynchronous and batched by librdkafka (``linger.ms``); call `poll()` now and
then in long-running producers (`send` already does a non-blocking poll).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from schemas.codec import encode_event
from schemas.events import Event, validate

#: librdkafka settings we rely on; callers may add to them but not weaken the guarantees.
GUARANTEES: dict[str, Any] = {"enable.idempotence": True, "acks": "all"}
#: Sends between two non-blocking polls for delivery reports.
POLL_EVERY = 64
_EQUIVALENT = {"enable.idempotence": {"true"}, "acks": {"all", "-1"}}
#: Batching defaults: a few ms of linger turns thousands of sends into a few requests.
BATCHING: dict[str, Any] = {
    "linger.ms": 5,
    "batch.num.messages": 10_000,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 500_000,
}


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What happened to one event: where it landed, or why it did not."""

    event_id: str
    user_id: str
    topic: str
    partition: int | None
    offset: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


class DeliveryFailed(Exception):
    """Raised by `close()` when events were not delivered; carries their reports."""

    def __init__(self, failures: list[DeliveryReport], undelivered: int) -> None:
        reasons = sorted({report.error or "" for report in failures})
        detail = f"{len(failures)} failed ({'; '.join(reasons[:3])})" if failures else ""
        if undelivered:
            detail = ", ".join(filter(None, [detail, f"{undelivered} still queued after flush"]))
        super().__init__(f"events not delivered: {detail}")
        self.failures = failures
        self.undelivered = undelivered


DeliveryCallback = Callable[[DeliveryReport], None]


class EventProducer:
    """Validate, encode, key and send events; `close()` flushes and reports failures."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        on_delivery: DeliveryCallback | None = None,
        keep_failures: int = 1000,
        **config: Any,
    ) -> None:
        weakened = {
            key
            for key, value in GUARANTEES.items()
            if str(config.get(key, value)).lower() not in _EQUIVALENT[key]
        }
        if weakened:
            raise ValueError(f"the producer requires {', '.join(sorted(weakened))} as set")
        self.topic = topic
        self.delivered = 0
        self.failed = 0
        #: The most recent failed reports (at most `keep_failures`), oldest first.
        self.failures: list[DeliveryReport] = []
        self._keep_failures = keep_failures
        self._unpolled = 0
        self._on_delivery = on_delivery
        self._producer = Producer(
            {"bootstrap.servers": bootstrap, **BATCHING, **config, **GUARANTEES}
        )

    def send(self, event: Event, on_delivery: DeliveryCallback | None = None) -> None:
        """Queue one event; raises InvalidEvent (nothing sent) if it cannot be encoded.

        `on_delivery` (or the producer-wide callback) is called from `poll`, `flush` or a
        later `send` once the broker has acknowledged or the client gave up.
        """
        validate(event)  # again: the event may have been changed since it was built
        value = encode_event(event)  # raises before anything reaches Kafka
        report = self._reporter(event, on_delivery or self._on_delivery)
        while True:
            try:
                self._producer.produce(
                    self.topic, key=event.user_id.encode(), value=value, on_delivery=report
                )
                break
            except BufferError:
                # Local queue full: let the client deliver some, then try again.
                self._producer.poll(0.05)
        self._unpolled += 1
        if self._unpolled >= POLL_EVERY:
            # Serving callbacks every send costs ~3 us; every POLL_EVERY sends is plenty.
            self._unpolled = 0
            self._producer.poll(0)

    def send_dict(self, data: Mapping[str, Any]) -> Event:
        """Build (and validate) an event from a JSON-like mapping, then send it."""
        event = Event.from_dict(dict(data))
        self.send(event)
        return event

    @property
    def pending(self) -> int:
        """Events handed to the client whose outcome is not known yet."""
        return len(self._producer)

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery callbacks; returns how many were served."""
        served: int = self._producer.poll(timeout_s)
        return served

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for outstanding deliveries; returns how many are still undelivered."""
        remaining: int = self._producer.flush(timeout_s)
        return remaining

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush; raise DeliveryFailed if any event failed or is still queued."""
        remaining = self.flush(timeout_s)
        if remaining or self.failures:
            raise DeliveryFailed(list(self.failures), remaining)

    def _reporter(
        self, event: Event, callback: DeliveryCallback | None
    ) -> Callable[[KafkaError | None, Message], None]:
        def report(err: KafkaError | None, msg: Message) -> None:
            if err is None and callback is None:  # the common case: just count
                self.delivered += 1
                return
            outcome = DeliveryReport(
                event_id=event.event_id,
                user_id=event.user_id,
                topic=self.topic,
                partition=msg.partition() if err is None else None,
                offset=msg.offset() if err is None else None,
                error=None if err is None else err.str(),
            )
            if err is None:
                self.delivered += 1
            else:
                self.failed += 1
                self._remember(outcome)
            if callback is not None:
                callback(outcome)

        return report

    def _remember(self, failure: DeliveryReport) -> None:
        self.failures.append(failure)
        if len(self.failures) > self._keep_failures:
            del self.failures[0]

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            # The body failed: still deliver what was queued, but let its error propagate.
            self.flush()
