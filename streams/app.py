"""The Faust app and its ingest service. Built by `streams.bootstrap`, never at import time.

Ingest runs as a Faust-managed service that owns a batch consumer (aiokafka, the client
Faust itself uses) instead of an agent over a Faust stream: Faust's per-event path
(conductor, stream, take_events, per-event acks) cost ~160 us of CPU per event and capped a
worker at ~4k events/s; batches from `getmany` go straight to decode, dead letters and one
Redis call. Faust still runs the worker: lifecycle, signals, logging, and the producer the
dead letters go through. At least once: a batch's offsets are committed only after its dead
letters were confirmed and its interactions applied to Redis.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, ConsumerStoppedError, IllegalStateError
from faust.app.base import BootStrategy
from mode import Service

from schemas.codec import decode_event
from schemas.events import InvalidEvent
from sinks.hot_store import HotStore
from sinks.retry import until_applied
from streams.logic.admission import Limits, check_size, check_time, dead_letter_headers
from streams.logic.lastk import Interaction, interaction_of
from streams.settings import Settings

log = logging.getLogger(__name__)

RECORD_AGENT = "record-interactions"


@dataclass
class IngestCounters:
    """What the ingest agent has done since start; logged and read by tests."""

    events: int = 0
    applied: int = 0
    invalid: int = 0
    invalid_reasons: dict[str, int] = field(default_factory=dict)


def faust_broker_urls(settings: Settings) -> list[str]:
    return [f"kafka://{server}" for server in settings.kafka_servers]


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class WithoutFaustConsumer(BootStrategy):
    """Faust's documented boot hook: start no Faust consumer (no agent reads Kafka).

    Ingest owns its consumer, in the consumer group `app_id`. Faust's own consumer would
    join that group with its own assignment protocol, and the broker allows one protocol
    per group.
    """

    enable_kafka_consumer = False


class SignalsApp(faust.App):
    BootStrategy = WithoutFaustConsumer


def build_app(
    settings: Settings, hot_store: HotStore, clock_ms: Callable[[], int] = wall_clock_ms
) -> faust.App:
    """A Faust app whose topics all come from the topic spec (it never creates topics)."""
    app = SignalsApp(
        settings.app_id,
        broker=faust_broker_urls(settings),
        # Topics are declared once in infra.topics and applied before workers start.
        topic_allow_declare=False,
        value_serializer="raw",
        key_serializer="raw",
        producer_acks=-1,
        web_enabled=False,
        autodiscover=False,
        store="memory://",
        datadir=str(settings.faust_datadir),
    )
    counters = IngestCounters()
    app.ingest_counters = counters  # type: ignore[attr-defined]
    dead_letters = app.topic(settings.dead_letter_topic, key_type=bytes, value_type=bytes)
    limits = Limits(
        max_payload_bytes=settings.max_payload_bytes,
        max_future_skew_ms=settings.max_future_skew_s * 1000,
        min_event_time_ms=settings.min_event_time_ms,
    )

    def stopping() -> bool:
        """A worker asked to stop must not retry a down store forever."""
        return bool(app.should_stop)

    def prepare(records: Sequence[ConsumerRecord[bytes, bytes]]) -> Prepared:
        """Admit a batch: decode and validate each event (CPU only, no I/O)."""
        now_ms = clock_ms()
        prepared = Prepared(now_ms)
        append = prepared.interactions.append
        for record in records:
            try:
                interaction = admit(record.value, now_ms)
            except InvalidEvent as exc:
                prepared.rejected.append((record, exc))
                continue
            if interaction is not None:
                append(interaction)
        counters.events += len(records)
        return prepared

    async def apply(prepared: Prepared) -> None:
        """Dead-letter what failed, apply the rest in one round trip.

        Returns only when the dead letters are confirmed by the broker and the store write
        succeeded; the caller commits the batch's offsets after that, never before.
        """
        if prepared.rejected:
            await dead_letter(prepared.rejected, prepared.now_ms)
        if prepared.interactions:
            await until_applied(
                functools.partial(hot_store.record, prepared.interactions), give_up=stopping
            )
            counters.applied += len(prepared.interactions)

    def admit(payload: bytes | None, now_ms: int) -> Interaction | None:
        check_size(payload, limits)
        event = decode_event(payload)
        check_time(event, now_ms, limits)
        return interaction_of(event)

    async def dead_letter(
        rejected: list[tuple[ConsumerRecord[bytes, bytes], InvalidEvent]], now_ms: int
    ) -> None:
        pending = []
        for record, error in rejected:
            counters.invalid += 1
            counters.invalid_reasons[error.field] = counters.invalid_reasons.get(error.field, 0) + 1
            log.warning(
                "dead-lettering event at %s[%d]@%d: %s",
                record.topic,
                record.partition,
                record.offset,
                error,
            )
            headers = dead_letter_headers(
                error, record.topic, record.partition, record.offset, now_ms
            )
            pending.append(
                await dead_letters.send(key=record.key, value=record.value, headers=headers)
            )
        await asyncio.gather(*pending)  # delivered (acks=all) before the batch is committed

    ingest = RecordInteractions(settings, prepare, apply)
    app.ingest = ingest  # type: ignore[attr-defined]

    async def start_ingest() -> None:
        """Started once the app (and its producer, needed for dead letters) is up."""
        await app.add_runtime_dependency(ingest)

    app.task(start_ingest)

    return app


@dataclass
class Prepared:
    """A decoded batch, ready to apply."""

    now_ms: int
    interactions: list[Interaction] = field(default_factory=list)
    rejected: list[tuple[ConsumerRecord[bytes, bytes], InvalidEvent]] = field(default_factory=list)


Offsets = dict[TopicPartition, int]


class RecordInteractions(Service):
    """The ingest loop: fetch a batch, decode it, apply it, then commit its offsets.

    Two stages overlap: while one batch is being applied (dead letters, Redis) and
    committed, the next one is fetched and decoded. Batches are applied and committed one
    at a time, in fetch order, so a committed offset always follows applied work.

    Stopping cancels the batches in flight (a store that is down is no longer retried)
    and commits nothing for them: the next owner of those partitions re-reads them.
    Writes are idempotent, so re-reading is safe; skipping is not. A partition lost in a
    rebalance while its batch was in flight fails the commit; the new owner re-reads it.
    """

    def __init__(
        self,
        settings: Settings,
        prepare: Callable[[Sequence[ConsumerRecord[bytes, bytes]]], Prepared],
        apply: Callable[[Prepared], Awaitable[None]],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self._prepare = prepare
        self._apply = apply
        self._consumer: AIOKafkaConsumer | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self.batches = 0
        self.commit_failures = 0

    @property
    def shortlabel(self) -> str:
        return RECORD_AGENT

    def _new_consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        return AIOKafkaConsumer(
            s.events_topic,
            bootstrap_servers=s.kafka_servers,
            group_id=s.app_id,
            client_id=f"{s.app_id}-{RECORD_AGENT}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            fetch_max_bytes=s.fetch_max_bytes,
            max_partition_fetch_bytes=s.max_partition_fetch_bytes,
        )

    async def on_start(self) -> None:
        self._consumer = self._new_consumer()
        await self._consumer.start()
        self._loop_task = asyncio.ensure_future(self._run())

    async def on_stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        if self._consumer is not None:
            await self._consumer.stop()  # auto-commit is off: stopping commits nothing
            self._consumer = None

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        # One decoded batch waits while another is applied: enough to overlap decoding
        # with the Redis and commit round trips, without holding more than a few batches.
        ready: asyncio.Queue[tuple[Prepared, Offsets]] = asyncio.Queue(maxsize=1)
        stages = [
            asyncio.ensure_future(self._fetch_and_prepare(consumer, ready)),
            asyncio.ensure_future(self._apply_and_commit(consumer, ready)),
        ]
        try:
            done, _ = await asyncio.wait(stages, return_when=asyncio.FIRST_EXCEPTION)
            for stage in done:
                stage.result()  # raises the stage's error
        except (asyncio.CancelledError, ConsumerStoppedError):
            raise
        except BaseException as exc:
            # Nothing of the failed batch is committed; crash the worker so that it is
            # restarted (and the batch re-read) rather than keep running without ingest.
            log.exception("ingest stopped on an unexpected error: %r", exc)
            await self.crash(exc)
            raise
        finally:
            for stage in stages:
                stage.cancel()
            await asyncio.gather(*stages, return_exceptions=True)

    async def _fetch_and_prepare(
        self, consumer: AIOKafkaConsumer, ready: asyncio.Queue[tuple[Prepared, Offsets]]
    ) -> None:
        timeout_ms = int(self.settings.batch_within_s * 1000)
        batch_max = self.settings.batch_max
        while not self.should_stop:
            fetched = await consumer.getmany(timeout_ms=timeout_ms, max_records=batch_max)
            if not fetched:
                continue
            records = [record for batch in fetched.values() for record in batch]
            offsets = {tp: batch[-1].offset + 1 for tp, batch in fetched.items() if batch}
            await ready.put((self._prepare(records), offsets))

    async def _apply_and_commit(
        self, consumer: AIOKafkaConsumer, ready: asyncio.Queue[tuple[Prepared, Offsets]]
    ) -> None:
        while not self.should_stop:
            prepared, offsets = await ready.get()
            await self._apply(prepared)
            await self._commit(consumer, offsets)

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: Offsets) -> None:
        self.batches += 1
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # Rebalanced away while applying: the new owner re-reads from the last commit.
            self.commit_failures += 1
            log.warning("offsets not committed (partitions reassigned?): %s", exc)
