"""Publishes rank-refresh triggers (`schemas.triggers`) with confluent-kafka.

The worker sends a batch's triggers after its store writes and waits until the broker
has every one (acks=all) before the batch's offsets are committed. librdkafka does the
sending in C: ~1 us per trigger to hand over, against ~40 us through the Faust app's
aiokafka producer, which mattered because a batch of new users triggers once per user.
The wait runs in a thread, so the event loop keeps fetching and decoding meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from schemas.triggers import RankTrigger, encode_trigger
from sinks.events_producer import GUARANTEES


class TriggersNotDelivered(ConnectionError):
    """Some triggers of a batch were not acknowledged: the batch is published again (a
    consumer drops the repeats by their sequence)."""


class TriggerProducer:
    def __init__(
        self, bootstrap: str, topic: str, flush_timeout_s: float = 30.0, **config: Any
    ) -> None:
        """`config`: more librdkafka settings (security: `sinks.connectivity.kafka_security`)."""
        self._topic = topic
        self._flush_timeout_s = flush_timeout_s
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                **config,
                **GUARANTEES,
                # A trigger is latency: send at once (a batch's triggers go out together).
                "linger.ms": 1,
                "compression.type": "lz4",
                "queue.buffering.max.messages": 1_000_000,
            }
        )

    async def publish(self, triggers: Sequence[RankTrigger]) -> None:
        """Send and wait for every acknowledgement; raises TriggersNotDelivered."""
        if not triggers:
            return
        failed: list[str] = []

        def report(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                failed.append(str(error))

        produce = self._producer.produce
        for trigger in triggers:
            while True:
                try:
                    produce(
                        self._topic,
                        value=encode_trigger(trigger),
                        key=trigger.user_id.encode(),
                        on_delivery=report,
                    )
                    break
                except BufferError:
                    await asyncio.to_thread(self._producer.poll, 0.05)
        left = await asyncio.to_thread(self._producer.flush, self._flush_timeout_s)
        if failed or left:
            raise TriggersNotDelivered(
                f"{len(failed)} of {len(triggers)} triggers failed"
                + (f" ({failed[0]})" if failed else "")
                + (f", {left} still queued" if left else "")
            )

    def close(self) -> None:
        self._producer.flush(self._flush_timeout_s)
