"""The Faust app and its agents. Built by `streams.bootstrap`, never at import time."""

from __future__ import annotations

import functools
import logging
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
    )
    events_topic = app.topic(
        settings.events_topic,
        key_type=bytes,
        value_type=bytes,
        partitions=settings.events_partitions,
    )
    counters = IngestCounters()
    app.ingest_counters = counters  # type: ignore[attr-defined]

    @app.agent(events_topic, name=RECORD_AGENT)
    async def record_interactions(stream: faust.StreamT[bytes]) -> None:
        """Decode each batch, then apply it to the hot tier in one round trip."""
        batches = cast("faust.Stream[bytes]", stream).take_events(
            settings.batch_max, within=settings.batch_within_s
        )
        async for batch in batches:
            interactions: list[Interaction] = []
            for event in batch:
                counters.events += 1
                try:
                    decoded = decode_event(event.message.value)
                except InvalidEvent as exc:
                    counters.invalid += 1
                    counters.invalid_reasons[exc.field] = (
                        counters.invalid_reasons.get(exc.field, 0) + 1
                    )
                    log.warning(
                        "skipping invalid event at %s[%d]@%d: %s",
                        event.message.topic,
                        event.message.partition,
                        event.message.offset,
                        exc,
                    )
                    continue
                interaction = interaction_of(decoded)
                if interaction is not None:
                    interactions.append(interaction)
            if interactions:
                await until_applied(functools.partial(hot_store.record, interactions))
                counters.applied += len(interactions)

    return app
