"""A Faust app whose Kafka consumer holds a fetch for a chosen time, not Faust's 1.5 s.

Faust (faust-streaming 0.15) builds its aiokafka consumer with `fetch_max_wait_ms=1500`
written into `AIOKafkaConsumerThread._create_worker_consumer`; no setting reaches it.
For the ranker that wait showed up as delay: at ~1.9k events/s, instrumented, a
high-intent trigger spent p50 ~950 ms, p99 ~1.7 s between being published and Faust
handing it over, while a plain aiokafka consumer on the same broker, with the same
1500 ms wait, gets sparse records in ~4 ms. So the hold comes from how Faust drives
aiokafka; the likely path (read in aiokafka's fetcher, not traced): a broker gets no new
fetch while one is in flight, a partition Faust has paused (its flow control) is left out
of a fetch, and such a fetch is held the full wait when the rest have nothing new, however
much arrives meanwhile on the partition Faust resumed.
The closed loop (`bench/closed_loop_bench.py`, README) measures what a short wait buys.

`QuickFetchApp` is a `faust.App` whose transport builds the same consumer and then sets
the wait before the consumer starts (aiokafka hands `_fetch_max_wait_ms` to its fetcher
in `start()`); everything else stays Faust's.
"""

from __future__ import annotations

from typing import Any, cast

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TransportT


class QuickFetchApp(faust.App):
    """A Faust app whose consumer's broker-side fetch wait is `fetch_max_wait_ms`."""

    def __init__(self, app_id: str, *, fetch_max_wait_ms: int, **options: Any) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        super().__init__(app_id, **options)

    def _new_transport(self) -> TransportT:
        return QuickFetchTransport(self.conf.broker_consumer, self)


class QuickFetchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(
        self, transport: faust_aiokafka.Transport
    ) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        if not hasattr(consumer, "_fetch_max_wait_ms"):  # an aiokafka that moved it
            raise RuntimeError("aiokafka's consumer has no _fetch_max_wait_ms to set")
        consumer._fetch_max_wait_ms = cast(QuickFetchApp, self.app).fetch_max_wait_ms
        return consumer


class QuickFetchConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return QuickFetchConsumerThread(self, loop=self.loop, beacon=self.beacon)


class QuickFetchTransport(faust_aiokafka.Transport):
    Consumer = QuickFetchConsumer
