"""`signals backfill`: rebuild the cold-tier interaction history and the online features
from a replay's Parquet output or a topic range, with the live worker's own code.

- Features: the worker's write plan (`schemas.features.plan_features`) applied through
  its store (`sinks.feature_store`), partition by partition in offset order, starting
  from the partitions' stored watermarks. Every write is fenced by the record's Kafka
  partition and offset, so a second run (or a run over what the live worker already
  applied) changes nothing.
- Cold tier: each user's last-k at every session end (`streams.logic.sessions.
  SessionReplay`), written by the worker's cold store (`write_snapshots`): history blocks
  whose ids come from their content and snapshot rows stamped with a version derived
  from their newest event time, so a second run rewrites identical rows, and a snapshot
  the live worker flushed later is never overwritten.

Events are admitted as the worker admits them: a record whose event time is further
ahead of its broker time than `SIGNALS_MAX_FUTURE_SKEW_S` (the worker dead-lettered it)
is left out and counted. The hot tier (Redis sorted sets) is not touched: it holds only
users active now, and the worker owns it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from schemas.erasure import ErasureFilter
from schemas.events import Event, InvalidEvent
from schemas.feature_layout import CountedEvent
from schemas.features import plan_features
from schemas.hot_layout import UserLastK, interaction_of
from sinks.cold_store import ColdStore
from sinks.connectivity import KafkaTarget, kafka_config
from sinks.feature_store import RedisFeatureStore
from streams.logic.admission import check_time
from streams.logic.sessions import SessionReplay
from streams.sessions import ColdIndex, prepare_cold_index
from streams.settings import Settings

#: Events per feature plan (the worker's default batch), users per cold-tier write.
FEATURE_BATCH = 2_000
COLD_BATCH = 500

#: (Kafka partition, offset, record timestamp in ms, event).
SourceRecord = tuple[int, int, int, Event]


@dataclass
class BackfillSummary:
    events: int = 0
    rejected: int = 0  # beyond the future skew: the worker dead-lettered them
    snapshots: int = 0  # session-end snapshots written to the cold tier
    users: int = 0
    erased: int = 0  # events of erased users up to their erasure, left out
    partitions: dict[int, int] = field(default_factory=dict)  # events per partition
    seconds: float = 0.0


class Backfill:
    """Applies records in read order (per partition) to the features and the cold tier."""

    def __init__(
        self,
        settings: Settings,
        features: RedisFeatureStore,
        cold: ColdStore,
        index: ColdIndex | None = None,
    ) -> None:
        self.settings = settings
        self.features = features
        self.cold = cold
        self.index = index  # every cold writer adds its users to the index first
        self.limits = settings.admission_limits()
        self.sessions = SessionReplay(int(settings.inactivity_gap_s * 1000), settings.last_k)
        self.summary = BackfillSummary()
        self._batch: list[CountedEvent] = []
        self._ended: list[tuple[UserLastK, UserLastK | None]] = []
        self._watermarks: dict[int, int] | None = None
        self._users: set[str] = set()

    async def add(self, record: SourceRecord) -> None:
        partition, offset, timestamp_ms, event = record
        try:
            check_time(event, timestamp_ms, self.limits)
        except InvalidEvent:
            self.summary.rejected += 1
            return
        self.summary.events += 1
        self.summary.partitions[partition] = self.summary.partitions.get(partition, 0) + 1
        self._users.add(event.user_id)
        self._batch.append(CountedEvent.of(event, partition, offset))
        ended = self.sessions.add(event.user_id, event.event_time_ms, interaction_of(event))
        if ended is not None:
            self._ended.append(ended)
        if len(self._batch) >= FEATURE_BATCH:
            await self._apply_features()
        if len(self._ended) >= COLD_BATCH:
            await self._write_cold()

    async def finish(self) -> BackfillSummary:
        await self._apply_features()
        self._ended.extend(self.sessions.finish())
        await self._write_cold()
        self.summary.users = len(self._users)
        return self.summary

    async def _apply_features(self) -> None:
        if not self._batch:
            return
        if self._watermarks is None:
            partitions = range(max(self.settings.events_partitions, 1))
            self._watermarks = await self.features.watermarks(partitions)
        plan = plan_features(self._batch, self._watermarks, self.features.config)
        self._watermarks = plan.watermarks
        await self.features.apply(plan)
        self._batch = []

    async def _write_cold(self) -> None:
        """Snapshots in the order their sessions ended; a user's later snapshot never goes
        in the same call as an earlier one (its `stored` is that earlier one)."""
        while self._ended:
            call: list[tuple[UserLastK, UserLastK | None]] = []
            seen: set[str] = set()
            rest = []
            for ended in self._ended:
                user = ended[0].user_id
                if user in seen:
                    rest.append(ended)
                else:
                    seen.add(user)
                    call.append(ended)
            stored = {s.user_id: before for s, before in call if before is not None}
            if self.index is not None:
                await self.index.add(seen)
            await self.cold.write_snapshots([s for s, _ in call], stored)
            self.summary.snapshots += len(call)
            self._ended = rest


async def run_backfill(
    settings: Settings,
    records: Iterable[SourceRecord],
    total: int | None = None,
    progress: bool = True,
    erasures: ErasureFilter | None = None,
) -> BackfillSummary:
    """Apply `records`; events of erased users up to their erasure (`erasures`, else the
    cold tier's table) are left out, from a topic and from replay files alike."""
    from jobs.forget import load_erasures  # noqa: PLC0415
    from streams.bootstrap import (  # noqa: PLC0415
        build_cold_index,
        build_cold_store,
        build_feature_store,
        build_redis,
    )

    began = time.monotonic()
    erasures = erasures if erasures is not None else load_erasures(settings)
    erased = 0
    client = build_redis(settings)
    features = build_feature_store(settings, client)
    cold = build_cold_store(settings)
    try:
        index = build_cold_index(settings, client)
        if index is not None:
            await prepare_cold_index(index, cold)  # before the first write: empty or not
        job = Backfill(settings, features, cold, index)
        with tqdm(total=total, unit=" events", disable=not progress, desc="backfill") as bar:
            for record in records:
                bar.update()
                event = record[3]
                if erasures and not erasures.keeps(event.user_id, event.event_time_ms):
                    erased += 1
                    continue
                await job.add(record)
        summary = await job.finish()
        summary.erased = erased
    finally:
        await features.close()
        await cold.close()
    summary.seconds = time.monotonic() - began
    return summary


def parquet_records(folder: Path) -> tuple[Iterator[SourceRecord], int]:
    """A replay folder's events in read order, and how many."""
    from jobs.replay_files import replay_dataset, replay_rows  # noqa: PLC0415

    count = replay_dataset(folder).count_rows()
    return replay_rows(folder), count


def topic_records(
    bootstrap: KafkaTarget, request: object, on_errors: Callable[[int], None]
) -> Iterator[SourceRecord]:
    """A topic range's events in read order per partition (the replay's reader and range
    rule); records that do not decode are counted through `on_errors`."""
    from jobs.replay import (  # noqa: PLC0415
        Decoded,
        PartitionCounts,
        ReplayRequest,
        ReplaySummary,
        Selector,
        plan_scan,
        read_partitions,
        replay_consumer,
    )

    assert isinstance(request, ReplayRequest)
    consumer = replay_consumer(bootstrap)
    try:
        scan = plan_scan(consumer, request)
        summary = ReplaySummary({p: PartitionCounts(a, b) for p, (a, b) in scan.items()})
        selector = Selector(request, summary)
        for partition, messages, _after, _done in read_partitions(consumer, request.topic, scan):
            decoded = Decoded()
            selector.split(partition, messages, decoded)
            if decoded.errors:
                on_errors(len(decoded.errors))
            for message, event in decoded.selected:
                yield partition, int(message.offset() or 0), message.timestamp()[1], event
    finally:
        consumer.close()


def backfill(
    settings: Settings,
    source: Path | object,
    progress: bool = True,
) -> BackfillSummary:
    """From a replay folder (a Path) or a topic range (a `ReplayRequest`)."""
    if isinstance(source, Path):
        records, total = parquet_records(source)
        return asyncio.run(run_backfill(settings, records, total, progress))
    errors = [0]

    def count(n: int) -> None:
        errors[0] += n

    summary = asyncio.run(
        run_backfill(settings, topic_records(kafka_config(settings), source, count), None, progress)
    )
    summary.rejected += errors[0]
    return summary
