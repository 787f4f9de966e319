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
import collections
import dataclasses
import functools
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import faust
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    ConsumerStoppedError,
    IllegalStateError,
    KafkaError,
)
from faust.app.base import BootStrategy
from mode import Service
from prometheus_client import CollectorRegistry, Histogram

from schemas.codec import decode_event
from schemas.erasure import ErasureFilter, ForgetAt, InvalidForget, decode_forget, is_forget
from schemas.events import PRODUCT_EVENT_TYPES, Event, EventType, InvalidEvent
from schemas.feature_layout import CountedEvent
from schemas.features import FeaturePlan, PlannedEvent, UserShare, plan_features
from schemas.hot_layout import Interaction
from schemas.triggers import RankTrigger
from sinks.connectivity import aiokafka_options, faust_credentials, kafka_security
from sinks.eraser import Eraser
from sinks.feature_store import FeatureWrite, FeatureWriter, UserOutcome
from sinks.hot_store import HotStore, HotUsers
from sinks.retry import until_applied
from sinks.trigger_producer import TriggerProducer
from streams.logic.admission import (
    AdmittedRow,
    FastAdmission,
    admit_fast,
    admitted_row,
    check_size,
    check_time,
    dead_letter_headers,
    dead_letter_value,
)
from streams.logic.triggers import (
    HIGH_INTENT_TYPES,
    TriggerRules,
    TriggerState,
    UserBatch,
    decide,
)
from streams.metrics import BulkHistogram, WorkerCollector, event_freshness, worker_durations
from streams.metrics import serve as serve_metrics
from streams.sessions import SessionKeeper
from streams.settings import Settings

log = logging.getLogger(__name__)

#: Seconds between warnings about dead-lettered events (the first one is logged at once).
DEAD_LETTER_LOG_EVERY_S = 10.0

RECORD_AGENT = "record-interactions"

T = TypeVar("T")
#: How often the trigger states of users quiet for a session gap are dropped.
TRIGGER_STATE_PRUNE_MS = 60_000
#: A batch whose store work takes longer than this is logged with where the time went.
SLOW_BATCH_S = 0.25
#: Fetches at least this large are admitted column-wise (`admit_fast`), smaller ones
#: record by record (measured crossover: ~500 records).
COLUMNAR_MIN_RECORDS = 512
#: Allocations between young-generation collections once the worker runs (Python: 700).
#: A batch allocates a few objects per event, nearly all freed by reference counting.
GC_YOUNG_THRESHOLD = 10_000


@dataclass
class IngestCounters:
    """What the ingest agent has done since start; logged and read by tests."""

    events: int = 0
    applied: int = 0
    invalid: int = 0
    invalid_reasons: dict[str, int] = field(default_factory=dict)
    too_late: int = 0  # events beyond the allowed lateness (in no feature tile)
    triggers: int = 0  # rank-refresh triggers published
    trigger_reasons: dict[str, int] = field(default_factory=dict)
    erasures: int = 0  # users erased (forget records applied)
    erased_events: int = 0  # events of erased users at or before their erasure, dropped


def faust_broker_urls(settings: Settings) -> list[str]:
    return [f"kafka://{server}" for server in settings.kafka_servers]


def faust_app_options(settings: Settings, datadir: Path) -> dict[str, Any]:
    """What every Faust app of the project is built with (the worker's, the ranker's).

    The data directory is made here with its parents: Faust makes only the last level,
    and the ranker's (`<datadir>/ranker`) failed to start on a fresh machine whenever it
    started before the worker had made `<datadir>`."""
    datadir.mkdir(parents=True, exist_ok=True)
    return {
        "broker": faust_broker_urls(settings),
        # Topics are declared once in infra.topics and applied before workers start.
        "topic_allow_declare": False,
        "value_serializer": "raw",
        "key_serializer": "raw",
        "producer_acks": -1,
        "web_enabled": False,
        "autodiscover": False,
        "store": "memory://",
        "datadir": str(datadir),
        # SASL and TLS as configured (None: plaintext); Faust passes them on to aiokafka.
        "broker_credentials": faust_credentials(settings),
    }


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
    settings: Settings,
    hot_store: HotStore,
    sessions: SessionKeeper,
    features: FeatureWriter | None = None,
    *,
    clock_ms: Callable[[], int] = wall_clock_ms,
    eraser: Eraser | None = None,
) -> faust.App:
    """A Faust app whose topics all come from the topic spec (it never creates topics).

    Without an `eraser`, forget records are dead-lettered (`schemas.erasure`)."""
    app = SignalsApp(settings.app_id, **faust_app_options(settings, settings.faust_datadir))
    pipeline = IngestPipeline(
        settings,
        hot_store,
        sessions,
        dead_letters=DeadLetterSender(app, settings.dead_letter_topic),
        stopping=lambda: bool(app.should_stop),
        clock_ms=clock_ms,
        features=features,
        eraser=eraser,
        triggers=(
            TriggerProducer(
                settings.kafka_bootstrap, settings.trigger_topic, **kafka_security(settings)
            )
            if features is not None and settings.triggers_enabled
            else None
        ),
    )
    ingest = RecordInteractions(settings, pipeline)
    app.ingest = ingest  # type: ignore[attr-defined]
    app.ingest_counters = pipeline.counters  # type: ignore[attr-defined]
    app.sessions = sessions  # type: ignore[attr-defined]
    registry = CollectorRegistry()
    registry.register(WorkerCollector(pipeline.counters, sessions.counters, ingest.lag))
    ingest.batch_seconds, ingest.flush_seconds = worker_durations(registry)
    pipeline.freshness = event_freshness()
    registry.register(pipeline.freshness)
    app.metrics_registry = registry  # type: ignore[attr-defined]

    async def start_ingest() -> None:
        """Started once the app (and its producer, needed for dead letters) is up."""
        serve_metrics(registry, settings.worker_metrics_port, "worker")
        await app.add_runtime_dependency(ingest)

    app.task(start_ingest)
    return app


class _LoadErasures(ConsumerRebalanceListener):  # type: ignore[misc]
    """On every assignment, load the erasures again (a partition's previous owner may have
    erased some of its users since this worker last looked). Until they are loaded, no
    fetched record is prepared (`ErasuresGate`): aiokafka may fetch before this returns."""

    def __init__(self, pipeline: IngestPipeline, gate: ErasuresGate) -> None:
        self._pipeline = pipeline
        self._gate = gate

    async def on_partitions_revoked(self, revoked: object) -> None:
        self._gate.close()

    async def on_partitions_assigned(self, assigned: object) -> None:
        self._gate.close()
        try:
            await self._pipeline.load_erasures()
        except Exception as exc:  # aiokafka would log and ignore it: fail the worker
            self._gate.fail(exc)
        else:
            self._gate.open()


class ErasuresGate:
    """Open once the erasures are loaded for the current assignment; a failed load is
    raised to whoever waits (the fetch loop, which then stops the worker)."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._error: BaseException | None = None

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._open.set()

    async def passed(self) -> None:
        await self._open.wait()
        if self._error is not None:
            raise self._error


class EarlierBatchFailed(RuntimeError):
    """The batch before this one failed: this one must not write past it."""


class _FeatureTurn:
    """One batch's place in the order of the features' effects.

    With the features on, two batches are applied at once (`RecordInteractions._apply`):
    while Redis runs the earlier one's scripts, the later one reads and advances its users.
    But the fenced writes and the trigger decisions need offset order: a product's fence
    moved past an earlier batch's offsets would skip that batch's counts for good. So the
    later batch plans (on the earlier one's watermarks), writes, and decides its triggers
    only after the earlier one did each; and the users both batches share, it advances
    from the shares the earlier one sends rather than from a read that may predate them
    (checked once that write landed: `sinks.feature_store.RedisFeatureStore.write`).
    """

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.planned: asyncio.Future[None] = loop.create_future()
        #: The users' new shares the batch's write sends, then the shares it left.
        self.values: asyncio.Future[Mapping[str, UserShare]] = loop.create_future()
        self.written: asyncio.Future[Mapping[str, UserShare]] = loop.create_future()
        self.published: asyncio.Future[None] = loop.create_future()

    def skip_features(self) -> None:
        """The batch writes no features: the next one has nothing to wait for there."""
        for future in (self.values, self.written):
            if not future.done():
                future.set_result({})

    def settle(self, error: BaseException | None) -> None:
        """Resolve what is left when the batch ends; on a failure with an error, so that
        the next batch fails too instead of writing past one that did not write."""
        if error is None:
            self.skip_features()
            for done in (self.planned, self.published):
                if not done.done():
                    done.set_result(None)
            return
        failure = EarlierBatchFailed(f"the batch before failed: {error!r}")
        for future in (self.planned, self.values, self.written, self.published):
            if not future.done():
                future.set_exception(failure)
                future.exception()  # retrieved here: a batch may have no successor


class IngestPipeline:
    """What happens to a batch: admit, dead-letter, re-hydrate, apply; and the flush.

    A batch and a flush's evictions take turns (`SessionKeeper.turn`), so this worker
    never evicts a user between a batch's hot check and its write (another worker's
    eviction there is caught by the write: `sinks.hot_store.HotUsers`); the rest of a
    flush runs beside the batches. Every store call goes through `until_applied`: a
    service that is down is retried with backoff and the caller does not move on (or
    commit).
    """

    def __init__(
        self,
        settings: Settings,
        hot_store: HotStore,
        sessions: SessionKeeper,
        *,
        dead_letters: DeadLetterSender,
        stopping: Callable[[], bool],
        clock_ms: Callable[[], int],
        features: FeatureWriter | None = None,
        triggers: TriggerProducer | None = None,
        eraser: Eraser | None = None,
    ) -> None:
        self.hot_store = hot_store
        self.eraser = eraser
        #: Who was erased and when (`schemas.erasure`): their older events are dropped.
        self.erasure_filter = ErasureFilter()
        self.sessions = sessions
        self.counters = IngestCounters()
        self.features = features
        self._feature_config = settings.feature_config()
        self._prefix = settings.redis_key_prefix
        # Each owned partition's watermark (newest event time applied), for the lateness
        # decision; loaded from the store the first time a partition shows up.
        self._watermarks: dict[int, int] = {}
        self._watermarks_known: set[int] = set()
        self._triggers = triggers
        self._trigger_rules = TriggerRules(
            debounce_ms=int(settings.trigger_debounce_s * 1000),
            views_per_trigger=settings.trigger_views,
        )
        self.trigger_states: dict[str, TriggerState] = {}
        self._trigger_state_ttl_ms = int(settings.inactivity_gap_s * 1000)
        self._states_pruned_ms = 0
        self._dead_letters = dead_letters
        self._stopping = stopping
        self._clock_ms = clock_ms
        self._turn = sessions.turn
        # Dead letters since the last warning about them (see `_dead_letter`).
        self._unreported: dict[str, int] = {}
        self._reported_at = -DEAD_LETTER_LOG_EVERY_S
        self._dead_letter_max_bytes = settings.dead_letter_max_bytes
        self._limits = settings.admission_limits()
        #: Event time to applied, per user and batch (`streams.metrics.event_freshness`).
        self.freshness: BulkHistogram | None = None
        # The last batch's turn (`_FeatureTurn`), with the features on.
        self._last_turn: _FeatureTurn | None = None

    def prepare(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> Prepared:
        """Admit a batch: decode and validate each event (CPU only, no I/O).

        A fetch of `COLUMNAR_MIN_RECORDS` or more goes through the columnar fast path
        first (`admit_fast`); what it does not accept, and every smaller fetch, goes
        through the record decoder, which admits it or says why not.
        Every admitted event, app-open included, counts as activity of its user in its
        partition: it keeps (or makes) the user hot.
        """
        now_ms = self._clock_ms()
        prepared = Prepared(now_ms)
        size = len(records)
        if any(record.headers for record in records):  # events carry no headers
            records = self._take_forgets(records, prepared)
        keeps = self.erasure_filter.keeps if self.erasure_filter else None
        append = prepared.interactions.append
        count = prepared.counted.append if self.features is not None else None
        activity = prepared.activity
        languages = prepared.languages
        # The columnar path costs ~2 ms a call whatever the size, ~2.4 us an event beyond
        # that; the record path ~5 us an event: small fetches (a paced topic) take it.
        fast = (
            admit_fast([record.value for record in records], now_ms, self._limits)
            if len(records) >= COLUMNAR_MIN_RECORDS
            else None
        )
        admitted: Iterable[tuple[ConsumerRecord[bytes, bytes], AdmittedRow]] = (
            zip(records, fast.rows, strict=True)
            if fast is not None and len(fast.rows) == len(records)
            else self._admitted(records, fast, now_ms, prepared.rejected)
        )
        for record, (
            user_id,
            kind,
            event_time_ms,
            product_id,
            category,
            language,
            event_id,
        ) in admitted:
            if keeps is not None and not keeps(user_id, event_time_ms):
                self.counters.erased_events += 1
                continue
            partition = record.partition
            if count is not None:
                # A plain tuple of CountedEvent's fields (what plan_features unpacks):
                # building the named tuple costs ~1 us more per event.
                count(
                    (  # type: ignore[arg-type]
                        user_id,
                        kind,
                        event_time_ms,
                        product_id,
                        category,
                        partition,
                        record.offset,
                        event_id,
                    )
                )
            latest = activity.get(partition)
            if latest is None:
                latest = activity[partition] = {}
            if event_time_ms > latest.get(user_id, 0):
                latest[user_id] = event_time_ms
                languages[user_id] = language
            if product_id is not None and kind in PRODUCT_EVENT_TYPES:  # as interaction_of
                append(Interaction(user_id, kind, product_id, event_time_ms))
        self.counters.events += size
        prepared.size = size
        return prepared

    def _take_forgets(
        self, records: Sequence[ConsumerRecord[bytes, bytes]], prepared: Prepared
    ) -> list[ConsumerRecord[bytes, bytes]]:
        """The batch without its forget records, which go to `prepared.forgets`; the
        users they name are in the erasure filter from now on, so this batch and every
        later one drop their events up to the erasure (`schemas.erasure`)."""
        events = []
        for record in records:
            if not is_forget(record.headers):
                events.append(record)
                continue
            try:
                forget = decode_forget(record.key, record.value)
                if self.eraser is None:
                    raise InvalidForget("this worker was built without an eraser")
            except InvalidForget as exc:
                prepared.rejected.append((record, InvalidEvent("forget", str(exc))))
                continue
            if forget.erased_ms > prepared.now_ms:
                # T from a clock ahead of ours would drop the user's future events: cap it.
                forget = dataclasses.replace(forget, erased_ms=prepared.now_ms)
            prepared.forgets.append(ForgetAt(record.partition, record.offset, forget))
        self.erasure_filter.add(request.forget for request in prepared.forgets)
        return events

    async def load_erasures(self) -> None:
        """Everyone erased so far, from the cold tier: at start and on every assignment
        (a partition taken over brings the erasures its previous owner did)."""
        if self.eraser is not None:
            self.erasure_filter.update(await self._until_applied(self.eraser.erasures))

    async def _erase(self, prepared: Prepared) -> None:
        """Erase the users of the batch's forget records (no other batch in flight)."""
        assert self.eraser is not None
        waited = time.perf_counter()
        async with self._turn.eviction():  # no flush of this worker's meanwhile
            began = time.perf_counter()
            await self._until_applied(self.eraser.erase, prepared.forgets, self._clock_ms())
            for request in prepared.forgets:
                self.sessions.forget_user(request.forget.user_id)
                self.trigger_states.pop(request.forget.user_id, None)
        self.counters.erasures += len(prepared.forgets)
        # No user ids: logs are kept, and not erased.
        log.info(
            "erased %d users in %.0f ms (%.0f ms after the fetch, %.0f ms for the turn)",
            len(prepared.forgets),
            (time.perf_counter() - began) * 1000,
            self._clock_ms() - prepared.now_ms,
            (began - waited) * 1000,
        )

    def _admitted(
        self,
        records: Sequence[ConsumerRecord[bytes, bytes]],
        fast: FastAdmission | None,
        now_ms: int,
        rejected: list[tuple[ConsumerRecord[bytes, bytes], InvalidEvent]],
    ) -> Iterator[tuple[ConsumerRecord[bytes, bytes], AdmittedRow]]:
        """Every admitted record in batch order: the fast path's, and those the record
        decoder admits among the rest (the others go to `rejected`, with the reason);
        without a fast path, the record decoder's alone."""
        rows = iter(fast.rows if fast is not None else ())
        taken = fast.accepted.tolist() if fast is not None else [False] * len(records)
        for record, accepted in zip(records, taken, strict=True):
            if accepted:
                yield record, next(rows)
                continue
            try:
                event = self._admit(record.value, now_ms)
            except InvalidEvent as exc:
                rejected.append((record, exc))
                continue
            yield record, admitted_row(event)

    def _admit(self, payload: bytes | None, now_ms: int) -> Event:
        check_size(payload, self._limits)
        event = decode_event(payload)
        check_time(event, now_ms, self._limits)
        return event

    def start_turns(self) -> None:
        """A new run of batches (a new consumer loop): none before it is in flight."""
        self._last_turn = None

    async def apply(self, prepared: Prepared) -> None:
        """Dead-letter what failed, re-hydrate returning users, apply in one round trip.

        Returns only when the dead letters are confirmed by the broker and the store write
        succeeded; the caller commits the batch's offsets after that, never before. Calls
        may overlap (two at a time with the features on); their features take effect in
        the order of the calls (`_FeatureTurn`: taken here, before anything is awaited).
        """
        turn = earlier = None
        if self.features is not None:
            earlier, turn = self._last_turn, _FeatureTurn()
            self._last_turn = turn
        try:
            if prepared.forgets:
                await self._erase(prepared)  # before the batch: its events of theirs are gone
            # The dead letters and the store write are independent: both must be confirmed
            # before the caller commits, but neither has to wait for the other.
            if prepared.rejected and prepared.activity:
                await asyncio.gather(
                    self._dead_letter(prepared.rejected, prepared.now_ms),
                    self._record(prepared, turn, earlier),
                )
            elif prepared.rejected:
                await self._dead_letter(prepared.rejected, prepared.now_ms)
            elif prepared.activity:
                await self._record(prepared, turn, earlier)
        except BaseException as exc:
            if turn is not None:
                turn.settle(exc)
            raise
        if turn is not None:
            turn.settle(None)

    async def _record(
        self, prepared: Prepared, turn: _FeatureTurn | None, earlier: _FeatureTurn | None
    ) -> None:
        """Re-hydrate returning users, then write the batch in one round trip; the
        features go beside it (fenced, so they need no session turn and may be retried
        alone; in the order of the batches: `_FeatureTurn`); then the triggers the batch
        caused, once both writes succeeded."""
        if earlier is not None:
            await earlier.planned  # its watermarks first
        plan = await self._feature_plan(prepared)
        if turn is not None:
            turn.planned.set_result(None)
            if plan is None:
                turn.skip_features()
        feature_write = (
            asyncio.ensure_future(self._write_features(plan, turn, earlier))
            if plan is not None and turn is not None
            else None
        )
        try:
            await self._record_interactions(prepared)
            outcomes = await feature_write if feature_write is not None else {}
        finally:
            if feature_write is not None and not feature_write.done():
                feature_write.cancel()
                await asyncio.gather(feature_write, return_exceptions=True)
        if plan is not None:
            self.counters.too_late += plan.too_late
            if self._triggers is not None:
                if earlier is not None:
                    await earlier.published  # the decisions go in offset order
                await self._publish_triggers(plan, outcomes, prepared.languages)

    async def _feature_plan(self, prepared: Prepared) -> FeaturePlan | None:
        if self.features is None or not prepared.counted:
            return None
        unknown = set(prepared.activity) - self._watermarks_known
        if unknown:
            self._watermarks.update(await self._until_applied(self.features.watermarks, unknown))
            self._watermarks_known |= unknown
        plan = plan_features(prepared.counted, self._watermarks, self._feature_config)
        # The next batch plans on these before this one is written (it writes after it).
        self._watermarks.update(plan.watermarks)
        return plan

    async def _write_features(
        self, plan: FeaturePlan, turn: _FeatureTurn, earlier: _FeatureTurn | None
    ) -> dict[str, UserOutcome]:
        """Read and advance the batch's users (beside the earlier batch's write), then
        write once that one was written. A failed write is retried whole, read again."""
        features = self.features
        assert features is not None
        began = time.perf_counter()
        earlier_values = await earlier.values if earlier is not None else None
        read = await self._until_applied(features.read, plan, earlier_values)
        turn.values.set_result(read.shares())
        earlier_written = await earlier.written if earlier is not None else None
        waited = time.perf_counter()
        first = [read]

        async def write() -> FeatureWrite:
            if first:  # the first attempt; a retry reads again, the earlier batch is in
                return await features.write(plan, first.pop(), earlier_written)
            return await features.write(plan, await features.read(plan))

        done = await self._until_applied(write)
        turn.written.set_result(done.written)
        took = time.perf_counter() - began
        if took > SLOW_BATCH_S:
            log.warning(
                "slow feature write of %d users: %.0f ms (read and apply, waiting for the "
                "batch before %.0f ms, write)",
                len(plan.users),
                took * 1000,
                (waited - began) * 1000,
            )
        return done.outcomes

    async def _publish_triggers(
        self,
        plan: FeaturePlan,
        outcomes: dict[str, UserOutcome],
        languages: dict[str, str],
    ) -> None:
        """Decide each user's trigger and wait until the broker has them all (acks=all):
        the caller commits the batch's offsets only after that."""
        assert self._triggers is not None
        states = self.trigger_states
        rules = self._trigger_rules
        pending: list[RankTrigger] = []
        now_ms = self._clock_ms()
        for user, events in plan.users.items():
            outcome = outcomes.get(user)
            state = states.get(user)
            # A state kept in memory remembers the offsets it decided on: events fetched
            # again (after a rebalance) are left out. A fresh state (a restart, a partition
            # taken over) decides on re-read events again, so a trigger lost in a crash
            # goes out, with its old sequence.
            decided_upto = state.decided_offset if state is not None else -1
            if state is None:
                # The store's top category before the batch, so none is invented.
                state = TriggerState(top_category=outcome.top_before if outcome else None)
            batch = _user_batch(events, outcome, decided_upto)
            if batch is None:
                continue
            trigger, states[user] = decide(state, batch, rules)
            if trigger is None:
                continue
            message = RankTrigger(
                user_id=user,
                sequence=trigger.sequence,
                reason=trigger.reason,
                newest_event_time_ms=trigger.newest_event_ms,
                partition=events[0][0],
                top_category=outcome.top_after if outcome else None,
                published_at_ms=now_ms,
                language=languages.get(user),
            )
            pending.append(message)
            reasons = self.counters.trigger_reasons
            reasons[trigger.reason.value] = reasons.get(trigger.reason.value, 0) + 1
        await self._until_applied(self._triggers.publish, pending)
        self.counters.triggers += len(pending)

    def forget_trigger_states(self, older_than_ms: int) -> None:
        """Drop the trigger state of users whose newest event is older than this: they
        start fresh when they return (and a new session triggers anyway)."""
        self.trigger_states = {
            user: state
            for user, state in self.trigger_states.items()
            if state.seen_ms is not None and state.seen_ms >= older_than_ms
        }

    async def _record_interactions(self, prepared: Prepared) -> None:
        users = [(p, user) for p, latest in prepared.activity.items() for user in latest]
        waited = time.perf_counter()
        async with self._turn.batch():
            began = time.perf_counter()
            hydration = await self._until_applied(self.sessions.hydrate, users)
            history = hydration.history.rows
            hydrated = time.perf_counter()
            await self._until_applied(
                self.hot_store.record,
                [*history, *prepared.interactions] if history else prepared.interactions,
                prepared.activity,
                counted=len(prepared.interactions),
                hot=HotUsers(
                    hydration.hot, self.sessions.rehydrate_unkeyed, retry=self._until_applied
                ),
                floors=hydration.history.floors,
            )
            done = time.perf_counter()
            if done - waited > SLOW_BATCH_S:
                log.warning(
                    "slow batch of %d events, %d users: waited %.0f ms for an eviction, "
                    "re-hydration %.0f ms (%d rows), write %.0f ms",
                    prepared.size,
                    len(users),
                    (began - waited) * 1000,
                    (hydrated - began) * 1000,
                    len(history),
                    (done - hydrated) * 1000,
                )
            wall_ms = self._clock_ms()
            for partition, latest in prepared.activity.items():
                self.sessions.observe(partition, max(latest.values()), wall_ms)
        self.counters.applied += len(prepared.interactions)
        if self.freshness is not None:
            self.freshness.observe_many(
                max(0, wall_ms - newest) / 1000
                for latest in prepared.activity.values()
                for newest in latest.values()
            )

    async def flush(self, partitions: set[int]) -> int:
        """Move ended sessions of these (owned) partitions to the cold tier."""
        if not partitions:
            return 0
        self.sessions.forget_except(partitions)
        # A partition handed over is loaded again if it comes back: its new owner moved on.
        self._watermarks_known &= partitions
        self._watermarks = {p: w for p, w in self._watermarks.items() if p in partitions}
        now_ms = self._clock_ms()
        if self.trigger_states and now_ms - self._states_pruned_ms >= TRIGGER_STATE_PRUNE_MS:
            # In event time, as the decisions are: a worker catching up on a backlog must
            # not forget users who were active moments before in the stream.
            stream_ms = max(self._watermarks.values(), default=now_ms)
            self.forget_trigger_states(stream_ms - self._trigger_state_ttl_ms)
            self._states_pruned_ms = now_ms
        await self._until_applied(self.sessions.adopt, partitions, self._clock_ms())
        moved: int = await self._until_applied(
            self.sessions.flush_ended, self._clock_ms(), partitions
        )
        return moved

    async def _until_applied(
        self, call: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any
    ) -> T:
        return await until_applied(functools.partial(call, *args, **kwargs), give_up=self._stopping)

    async def _dead_letter(
        self, rejected: list[tuple[ConsumerRecord[bytes, bytes], InvalidEvent]], now_ms: int
    ) -> None:
        counters = self.counters
        pending = []
        unreported = self._unreported
        for record, error in rejected:
            counters.invalid += 1
            counters.invalid_reasons[error.field] = counters.invalid_reasons.get(error.field, 0) + 1
            unreported[error.field] = unreported.get(error.field, 0) + 1
            headers = dead_letter_headers(
                error, record.topic, record.partition, record.offset, now_ms
            )
            value, truncated = dead_letter_value(record.value, self._dead_letter_max_bytes)
            pending.append(await self._dead_letters.send(record.key, value, headers + truncated))
        # At most one line every DEAD_LETTER_LOG_EVERY_S, with the counts since the last
        # one: a stream of bad input must not turn the worker into a log writer (a line
        # costs ~0.8 ms of CPU here). Each message's reason is in its dead-letter headers.
        now_s = time.monotonic()
        if now_s - self._reported_at >= DEAD_LETTER_LOG_EVERY_S:
            latest, error = rejected[-1]
            log.warning(
                "dead-lettered %d events since the last report (by field: %s); latest at "
                "%s[%d]@%d: %s",
                sum(unreported.values()),
                ", ".join(f"{field}={count}" for field, count in sorted(unreported.items())),
                latest.topic,
                latest.partition,
                latest.offset,
                error,
            )
            unreported.clear()
            self._reported_at = now_s
        await asyncio.gather(*pending)  # delivered (acks=all) before the batch is committed


_HIGH_INTENT = frozenset(kind.value for kind in HIGH_INTENT_TYPES)
_VIEW = EventType.VIEW.value


def _user_batch(
    planned: list[PlannedEvent], outcome: UserOutcome | None, decided_upto: int
) -> UserBatch | None:
    """One user's signals in a batch, from their planned events (in read order),
    without duplicates and without events at or below `decided_upto`; None if no event is
    left."""
    duplicates = outcome.duplicates if outcome else frozenset()
    events = [
        e
        for e in planned
        if e[1] > decided_upto and (not duplicates or f"{e[0]}:{e[1]}" not in duplicates)
    ]
    if not events:
        return None
    kinds = [e[2] for e in events]
    return UserBatch(
        newest_event_ms=max(e[3] for e in events),
        newest_offset=events[-1][1],
        views=kinds.count(_VIEW),
        high_intent=not _HIGH_INTENT.isdisjoint(kinds),
        session_started=outcome.session_started if outcome else False,
        top_category=outcome.top_after if outcome else None,
    )


class DeadLetterSender:
    """Sends to the dead-letter topic through the Faust app's producer (acks=all).

    Straight to the producer, not through a Faust topic, whose path queues every message
    in Faust's producer buffer first: one hop less while a batch waits for its dead
    letters to be confirmed (~6 ms per batch on the local broker, overlapping the store
    write).
    """

    def __init__(self, app: faust.App, topic: str) -> None:
        self._app = app
        self._topic = topic

    async def send(
        self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> Awaitable[Any]:
        """Queue one message; returns the awaitable delivery confirmation."""
        return await self._app.producer.send(self._topic, key, value, None, None, headers)


@dataclass
class Prepared:
    """A decoded batch, ready to apply."""

    now_ms: int
    interactions: list[Interaction] = field(default_factory=list)
    #: Every admitted event, for the features (empty when they are off).
    counted: list[CountedEvent] = field(default_factory=list)
    #: partition -> user -> newest event time in this batch (every admitted event).
    activity: dict[int, dict[str, int]] = field(default_factory=dict)
    #: user -> the language of their newest event in this batch (for the triggers).
    languages: dict[str, str] = field(default_factory=dict)
    size: int = 0  # records fetched, admitted or not
    #: The batch's forget records (`schemas.erasure`).
    forgets: list[ForgetAt] = field(default_factory=list)

    def absorb(self, later: Prepared) -> None:
        """Take in the batch fetched after this one (same order as fetched)."""
        self.now_ms = max(self.now_ms, later.now_ms)
        self.forgets += later.forgets
        self.interactions += later.interactions
        self.counted += later.counted
        self.languages.update(later.languages)
        self.rejected += later.rejected
        for partition, latest in later.activity.items():
            mine = self.activity.setdefault(partition, {})
            for user_id, event_time_ms in latest.items():
                if event_time_ms > mine.get(user_id, 0):
                    mine[user_id] = event_time_ms
        self.size += later.size

    rejected: list[tuple[ConsumerRecord[bytes, bytes], InvalidEvent]] = field(default_factory=list)


Offsets = dict[TopicPartition, int]


def _absorb_waiting(
    ready: asyncio.Queue[tuple[Prepared, Offsets]],
    prepared: Prepared,
    offsets: Offsets,
    batch_max: int,
) -> tuple[Prepared, Offsets] | None:
    """Take the batches waiting behind `prepared` into it, up to `batch_max` records.

    Small fetches (a paced producer, a quiet topic) pile up while a batch is being
    applied; taking them together pays the per-batch round trips (re-hydration check,
    script call) once instead of once per fetch. A batch with forget records is not taken
    but returned, to go on its own: absorbed, its erasure would run before this batch,
    whose events of the same users were admitted before the erasure was known, is written.
    """
    while not ready.empty() and prepared.size < batch_max:
        more, more_offsets = ready.get_nowait()
        if more.forgets:
            return more, more_offsets
        prepared.absorb(more)
        offsets.update(more_offsets)  # later fetches have higher offsets
    return None


class _AppliedOffsets:
    """Offsets of applied batches not committed yet: only ever what has been applied."""

    def __init__(self) -> None:
        self._offsets: Offsets = {}
        self._some = asyncio.Event()

    def add(self, offsets: Offsets) -> None:
        self._offsets.update(offsets)  # batches are applied in fetch order: offsets grow
        self._some.set()

    async def take(self) -> Offsets:
        """Wait until there are some, then hand them all over."""
        await self._some.wait()
        self._some.clear()
        offsets, self._offsets = self._offsets, {}
        return offsets


class RecordInteractions(Service):
    """The ingest loop: fetch a batch, decode it, apply it, then commit its offsets.

    Stages overlap: while one batch is being applied (dead letters, Redis), the next one
    is fetched and decoded, and a third loop commits the offsets of the batches applied
    so far (every `commit_interval_s`). Batches are applied one at a time, in fetch order,
    and only offsets of applied batches reach the commit, so a committed offset always
    follows applied work. A fourth loop flushes ended sessions of the owned partitions
    every `flush_interval_s`, taking turns with the batches; its failures stop the worker
    like the others'.

    Stopping cancels the batches in flight (a store that is down is no longer retried)
    and commits nothing for them: the next owner of those partitions re-reads them.
    Writes are idempotent, so re-reading is safe; skipping is not. A partition lost in a
    rebalance while its batch was in flight fails the commit; the new owner re-reads it.
    """

    def __init__(
        self,
        settings: Settings,
        pipeline: IngestPipeline,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.pipeline = pipeline
        self._consumer: AIOKafkaConsumer | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self.erasures = ErasuresGate()
        self.batches = 0
        self.commit_failures = 0
        #: Partition -> the next offset to fetch (for the lag metric).
        self.fetched: dict[int, int] = {}
        #: Observed when set (`streams.metrics.worker_durations`).
        self.batch_seconds: Histogram | None = None
        self.flush_seconds: Histogram | None = None

    def lag(self) -> dict[int, int]:
        """Per owned partition, records on the broker not fetched yet (the high
        watermark as of the last fetch, minus the next offset to fetch)."""
        consumer = self._consumer
        if consumer is None:
            return {}
        lags = {}
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is not None and tp.partition in self.fetched:
                lags[tp.partition] = max(highwater - self.fetched[tp.partition], 0)
        return lags

    @property
    def shortlabel(self) -> str:
        return RECORD_AGENT

    def assigned_partitions(self) -> set[int]:
        """Partitions of the events topic this worker owns right now."""
        if self._consumer is None:
            return set()
        topic = self.settings.events_topic
        return {tp.partition for tp in self._consumer.assignment() if tp.topic == topic}

    def _new_consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_servers,
            group_id=s.app_id,
            client_id=f"{s.app_id}-{RECORD_AGENT}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Never aborted records: a replay copies into a topic in transactions.
            isolation_level="read_committed",
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            fetch_min_bytes=s.fetch_min_bytes,
            fetch_max_bytes=s.fetch_max_bytes,
            max_partition_fetch_bytes=s.max_partition_fetch_bytes,
            **aiokafka_options(s),
        )
        consumer.subscribe([s.events_topic], listener=_LoadErasures(self.pipeline, self.erasures))
        return consumer

    async def on_start(self) -> None:
        await until_applied(self.pipeline.sessions.prepare_index, give_up=lambda: self.should_stop)
        self._consumer = await self._joined_consumer()
        # Everything built so far (Faust, the clients, the modules) lives as long as the
        # worker: out of the cyclic collector's sight, its full passes no longer walk it
        # (they cost ~2 us an event in a batch's decode), and fewer young passes.
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        self._loop_task = asyncio.ensure_future(self._run())

    async def _joined_consumer(self) -> AIOKafkaConsumer:
        """A started consumer that has joined the group, retrying a failed join.

        Joining can fail on a broker that is restarting or mid-rebalance; a new consumer
        after a pause joins cleanly, so that is retried with backoff instead of crashing.
        """
        delay_s = 0.5
        while True:
            consumer = self._new_consumer()
            try:
                await consumer.start()
                return consumer
            except KafkaError as exc:
                await consumer.stop()
                if self.should_stop:
                    raise
                log.warning(
                    "joining group %s failed (%r); retrying in %.1fs",
                    self.settings.app_id,
                    exc,
                    delay_s,
                )
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 10.0)

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
        ready: asyncio.Queue[tuple[Prepared, Offsets]] = asyncio.Queue(maxsize=8)
        applied = _AppliedOffsets()
        stages = [
            asyncio.ensure_future(self._fetch_and_prepare(consumer, ready)),
            asyncio.ensure_future(self._apply(ready, applied)),
            asyncio.ensure_future(self._commit_applied(consumer, applied)),
            asyncio.ensure_future(self._flush_sessions()),
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
            await self.erasures.passed()  # this assignment's erasures are known
            records = [record for batch in fetched.values() for record in batch]
            offsets = {tp: batch[-1].offset + 1 for tp, batch in fetched.items() if batch}
            for tp, upto in offsets.items():
                self.fetched[tp.partition] = upto
            await ready.put((self.pipeline.prepare(records), offsets))

    async def _apply(
        self, ready: asyncio.Queue[tuple[Prepared, Offsets]], applied: _AppliedOffsets
    ) -> None:
        """Apply batches in fetch order, up to `apply_depth` (a setting) at once.

        With the features off a batch's effects are idempotent, order-free Redis writes
        (`ZADD GT`, version bumps, active sets; dead letters), so the next batch may be
        planned and sent while Redis runs the previous one's script, instead of the
        worker waiting for each reply in turn. With the features on, at most two: the
        fenced feature writes and the trigger decisions need offset order, so the later
        batch only reads and advances its users while the earlier one writes
        (`_FeatureTurn`).
        Offsets are handed to the commit in fetch order, each only after its batch and
        every earlier one were applied.
        """
        batch_max = self.settings.batch_max
        depth = self.settings.apply_depth
        if self.pipeline.features is not None:
            depth = min(depth, 2)  # the later reads and advances, the earlier writes
        self.pipeline.start_turns()
        in_flight: collections.deque[asyncio.Task[None]] = collections.deque()
        getter: asyncio.Task[tuple[Prepared, Offsets]] | None = None
        held: tuple[Prepared, Offsets] | None = None
        try:
            while not self.should_stop:
                if held is not None:
                    (prepared, offsets), held = held, None
                else:
                    if getter is None:
                        getter = asyncio.ensure_future(ready.get())
                    # Waiting for the next batch, notice a batch in flight that failed.
                    await asyncio.wait({getter, *in_flight}, return_when=asyncio.FIRST_COMPLETED)
                    while in_flight and in_flight[0].done():
                        await in_flight.popleft()  # raises the batch's error
                    if not getter.done():
                        continue
                    prepared, offsets = getter.result()
                    getter = None
                held = _absorb_waiting(ready, prepared, offsets, batch_max)
                if prepared.forgets:
                    # An erasure waits for every earlier batch: those may still be writing
                    # the events of the users it erases.
                    while in_flight:
                        await in_flight.popleft()
                earlier = in_flight[-1] if in_flight else None
                in_flight.append(
                    asyncio.ensure_future(self._apply_one(prepared, offsets, earlier, applied))
                )
                while len(in_flight) >= depth:
                    await in_flight.popleft()
        finally:
            pending = [*in_flight, *([getter] if getter is not None else [])]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _apply_one(
        self,
        prepared: Prepared,
        offsets: Offsets,
        earlier: asyncio.Task[None] | None,
        applied: _AppliedOffsets,
    ) -> None:
        began = time.perf_counter()
        await self.pipeline.apply(prepared)
        if self.batch_seconds is not None:
            self.batch_seconds.observe(time.perf_counter() - began)
        if earlier is not None:
            await earlier  # its offsets go first (and its failure stops this one's)
        applied.add(offsets)

    async def _commit_applied(self, consumer: AIOKafkaConsumer, applied: _AppliedOffsets) -> None:
        """Commit the offsets of applied batches: as soon as there are some, then at most
        once every `commit_interval_s` (later batches go with the next commit).

        Not once per batch: at a paced 5k events/s a worker applied ~100 small batches a
        second, each commit a broker round trip the next batch waited for. The loop runs
        beside the batches, so applied work is committed even while a later batch is
        stuck on a store that is down. A crash or a rebalance re-reads at most an
        interval of applied events; writes are idempotent.
        """
        while not self.should_stop:
            await self._commit(consumer, await applied.take())
            await asyncio.sleep(self.settings.commit_interval_s)

    async def _flush_sessions(self) -> None:
        while not self.should_stop:
            await asyncio.sleep(self.settings.flush_interval_s)
            began = time.perf_counter()
            await self.pipeline.flush(self.assigned_partitions())
            if self.flush_seconds is not None:
                self.flush_seconds.observe(time.perf_counter() - began)

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: Offsets) -> None:
        self.batches += 1
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # Rebalanced away while applying: the new owner re-reads from the last commit.
            self.commit_failures += 1
            log.warning("offsets not committed (partitions reassigned?): %s", exc)
