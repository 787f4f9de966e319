"""The Faust app and its agents. Built by `streams.bootstrap`, never at import time."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import faust

from schemas.codec import decode_event
from schemas.events import InvalidEvent
from sinks.hot_store import HotStore
from sinks.retry import until_applied
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


def build_app(settings: Settings, hot_store: HotStore) -> faust.App:
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

    @app.agent(events_topic, name=RECORD_AGENT)
    async def record_interactions(stream: faust.StreamT[bytes]) -> None:
        """Decode each batch, then apply it to the hot tier in one round trip."""
        batches = cast("faust.Stream[bytes]", stream).take_events(
            settings.batch_max, within=settings.batch_within_s
        )
        async for batch in batches:
            try:
                interactions = [i for i in map(decode, batch) if i is not None]
                if interactions:
                    await until_applied(
                        functools.partial(hot_store.record, interactions), give_up=stopping
                    )
                    counters.applied += len(interactions)
            except BaseException:
                withhold(batch)
                raise

    def decode(event: faust.EventT[bytes]) -> Interaction | None:
        counters.events += 1
        message = event.message
        try:
            decoded = decode_event(message.value)
        except InvalidEvent as exc:
            counters.invalid += 1
            counters.invalid_reasons[exc.field] = counters.invalid_reasons.get(exc.field, 0) + 1
            log.warning(
                "skipping invalid event at %s[%d]@%d: %s",
                message.topic,
                message.partition,
                message.offset,
                exc,
            )
            return None
        return interaction_of(decoded)

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
