"""The Faust app and its agents. Built by `streams.bootstrap`, never at import time."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import faust

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


def build_app(
    settings: Settings, hot_store: HotStore, clock_ms: Callable[[], int] = wall_clock_ms
) -> faust.App:
    """A Faust app whose topics all come from the topic spec (it never creates topics)."""
    app = faust.App(
        settings.app_id,
        broker=faust_broker_urls(settings),
        # Topics are declared once in infra.topics and applied before workers start.
        topic_allow_declare=False,
        value_serializer="raw",
        key_serializer="raw",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        web_enabled=False,
        autodiscover=False,
        store="memory://",
        datadir=str(settings.faust_datadir),
        # Larger than Faust's defaults (buffer 4096, no poll cap): about 2x the ingest rate
        # on the local stack (1.6k -> 3.3k interactions/s); the ingest benchmark revisits it.
        stream_buffer_maxsize=settings.stream_buffer_maxsize,
        broker_max_poll_records=settings.max_poll_records,
    )
    events_topic = app.topic(
        settings.events_topic,
        key_type=bytes,
        value_type=bytes,
        partitions=settings.events_partitions,
    )
    counters = IngestCounters()
    app.ingest_counters = counters  # type: ignore[attr-defined]

    def stopping() -> bool:
        """A worker asked to stop must not retry a down store forever."""
        return bool(app.should_stop)

    dead_letters = app.topic(settings.dead_letter_topic, key_type=bytes, value_type=bytes)
    limits = Limits(
        max_payload_bytes=settings.max_payload_bytes,
        max_future_skew_ms=settings.max_future_skew_s * 1000,
        min_event_time_ms=settings.min_event_time_ms,
    )

    @app.agent(events_topic, name=RECORD_AGENT)
    async def record_interactions(stream: faust.StreamT[bytes]) -> None:
        """Admit each batch, dead-letter what fails, apply the rest in one round trip.

        The batch is acked (and its offsets become committable) only after both the
        dead-letter writes are confirmed by the broker and the store write succeeded.
        """
        batches = cast("faust.Stream[bytes]", stream).take_events(
            settings.batch_max, within=settings.batch_within_s
        )
        async for batch in batches:
            try:
                now_ms = clock_ms()
                interactions: list[Interaction] = []
                rejected: list[tuple[faust.EventT[bytes], InvalidEvent]] = []
                for event in batch:
                    counters.events += 1
                    try:
                        interaction = admit(event.message.value, now_ms)
                    except InvalidEvent as exc:
                        rejected.append((event, exc))
                        continue
                    if interaction is not None:
                        interactions.append(interaction)
                if rejected:
                    await dead_letter(rejected, now_ms)
                if interactions:
                    await until_applied(
                        functools.partial(hot_store.record, interactions), give_up=stopping
                    )
                    counters.applied += len(interactions)
            except BaseException:
                withhold(batch)
                raise

    def admit(payload: bytes | None, now_ms: int) -> Interaction | None:
        check_size(payload, limits)
        event = decode_event(payload)
        check_time(event, now_ms, limits)
        return interaction_of(event)

    async def dead_letter(
        rejected: list[tuple[faust.EventT[bytes], InvalidEvent]], now_ms: int
    ) -> None:
        pending = []
        for event, error in rejected:
            message = event.message
            counters.invalid += 1
            counters.invalid_reasons[error.field] = counters.invalid_reasons.get(error.field, 0) + 1
            log.warning(
                "dead-lettering event at %s[%d]@%d: %s",
                message.topic,
                message.partition,
                message.offset,
                error,
            )
            headers = dead_letter_headers(
                error, message.topic, message.partition, message.offset, now_ms
            )
            pending.append(
                await dead_letters.send(key=message.key, value=message.value, headers=headers)
            )
        await asyncio.gather(*pending)  # delivered (acks=all) before the batch is acked

    return app


def withhold(batch: Sequence[faust.EventT[bytes]]) -> None:
    """Make sure Faust never commits the offsets of a batch that was not applied.

    `take_events` acks its batch when the generator is closed, even when the body was
    cancelled (worker stopping while a store is down). Marking the messages as already
    acked turns that late ack into a no-op, so their offsets never reach the consumer's
    acked list, the commit stops before them, and the next owner of the partition
    re-reads them. Writes are idempotent, so re-reading is safe; skipping is not.
    """
    for event in batch:
        event.message.acked = True
