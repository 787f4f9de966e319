"""Apply a list of events to the online stores in process: the worker's write path for
the hot tier and the features, without Kafka. Benchmarks and tests set up a realistic
state with it (all events as if read from partition 0, in order)."""

from __future__ import annotations

from collections.abc import Sequence

from schemas.events import Event
from schemas.feature_layout import CountedEvent
from schemas.features import plan_features
from schemas.hot_layout import interaction_of
from sinks.feature_store import RedisFeatureStore
from sinks.hot_store import RedisHotStore

#: Events per batch, as the worker's default `SIGNALS_BATCH_MAX`.
SEED_BATCH = 2_000


async def apply_events(
    events: Sequence[Event], features: RedisFeatureStore, hot: RedisHotStore
) -> None:
    """Write `events` to the features and the hot tier batch by batch, their offsets the
    positions in the list and each batch's lateness decided after the one before."""
    watermarks: dict[int, int] = {}
    for start in range(0, len(events), SEED_BATCH):
        batch = events[start : start + SEED_BATCH]
        counted = [CountedEvent.of(e, 0, start + i) for i, e in enumerate(batch)]
        plan = plan_features(counted, watermarks, features.config)
        watermarks = plan.watermarks
        await features.apply(plan)
        interactions = [i for e in batch if (i := interaction_of(e)) is not None]
        activity = {0: {e.user_id: e.event_time_ms for e in batch}}
        await hot.record(interactions, activity, counted=len(interactions))
