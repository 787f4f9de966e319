"""Session lifecycle in the worker: re-hydrate returning users, flush ended sessions.

The decisions are pure (`streams.logic.sessions`, `schemas.hot_layout`); this module
sequences the I/O so that nothing is ever lost:

- re-hydration happens *before* a returning user's new events are applied, in the same
  Redis write, so their last-k always reflects full history;
- a flush writes the user's last-k to the cold tier and evicts only after the cold write
  was acknowledged, and only if nothing was written for the user in between
  (`sinks.hot_sessions` checks the user's version and last activity);
- every step is idempotent, so a crash anywhere means the step runs again later.

Within a worker a batch (hot check, re-hydration, write) and a flush's eviction never
overlap (`SessionKeeper.turn`), so a user is not evicted between a batch's hot check and
its write. Batches may overlap (the features off): a later one's hot check may
then miss users the earlier one is making hot, and it re-hydrates them again, which
writes the same history (`ZADD GT`, the same version floors); nothing can evict them
in between. Across workers (a rebalance, with the old owner still flushing) the write
itself catches that case: it refuses users found hot whose keys are gone, and they are
re-hydrated (`rehydrate_unkeyed`; `sinks.hot_store.HotUsers`). The rest of a flush (the
Redis reads and the cold writes, most of its time) runs beside the batches, so a flush
does not hold up ingest: a batch that writes to a user meanwhile changes their last
activity or their version (every write changes the version), and the eviction, which
checks both under the lock, then leaves that user hot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from schemas.hot_layout import COLD_INDEX_BUCKETS, Interaction, UserLastK, approximate_bytes
from sinks.hot_sessions import EndedSession, HotSnapshot, RedisSessions, group_by_partition
from sinks.hot_store import Rehydrated
from streams.logic.sessions import PartitionClock, closing_score

log = logging.getLogger(__name__)

#: Batches of ended users a flush reads per partition at once (then pipelines through).
READ_AHEAD = 8
#: Chunks of a flush in their cold write at once. Each write drains its requests (history
#: first, then snapshots) before it returns; a second one keeps the cold tier busy
#: meanwhile. The store's own in-flight bound (`SIGNALS_CQL_MAX_IN_FLIGHT`) still holds.
WRITE_DEPTH = 2


class ColdTier(Protocol):
    """What the session keeper needs from the cold tier (`sinks.cold_store`)."""

    async def write_snapshots(
        self, snapshots: Sequence[UserLastK], stored: Mapping[str, UserLastK] | None = None
    ) -> None: ...

    async def load_last_k(self, user_ids: Sequence[str]) -> dict[str, UserLastK]: ...

    async def holds_any_snapshot(self) -> bool: ...


class ColdIndex(Protocol):
    """Which users the cold tier may hold (`sinks.cold_index`): re-hydration skips the
    others, and every cold write adds its users first."""

    async def may_hold(self, user_ids: Collection[str]) -> list[str]: ...

    async def add(self, user_ids: Collection[str]) -> None: ...

    async def mark_complete(self) -> None: ...

    async def complete_buckets(self) -> int: ...


async def prepare_cold_index(index: ColdIndex, cold: ColdTier) -> bool:
    """Trust the cold-tier index if the cold tier holds nothing yet (a new deployment or
    namespace); returns whether it is trusted. Otherwise it must have been built (`signals
    cold-index rebuild`), and until then users not hot are read from the cold tier."""
    complete = await index.complete_buckets()
    if complete == COLD_INDEX_BUCKETS:
        return True
    if not await cold.holds_any_snapshot():
        await index.mark_complete()
        log.info("cold tier empty: the cold-tier index starts complete")
        return True
    log.warning(
        "cold-tier index incomplete (%d of %d buckets trusted): users not in the hot tier "
        "are read from the cold tier; `signals cold-index rebuild` builds it",
        complete,
        COLD_INDEX_BUCKETS,
    )
    return False


@dataclass
class SessionCounters:
    """Totals since the worker started; logged and read by tests and the benchmark."""

    hydrated_users: int = 0
    hydrated_items: int = 0
    #: Users not hot whom the cold-tier index showed were never stored: no read.
    hydration_skipped: int = 0
    flushed_users: int = 0
    flush_skipped: int = 0  # users active again between snapshot and eviction
    hot_without_keys: int = 0  # found hot, keys gone at the write: re-hydrated
    flush_passes: int = 0
    #: Users in the hot tier per owned partition, counted at the end of each flush pass.
    hot_by_partition: dict[int, int] = field(default_factory=dict)


class Turn:
    """What a batch (hot check to write) and an eviction take turns with: batches share
    it (with the features off up to `apply_depth` are in flight), an eviction has it
    alone, and an eviction waiting goes before batches that come after it (so it is not
    starved)."""

    def __init__(self) -> None:
        self._changed = asyncio.Condition()
        self._batches = 0
        self._evicting = False
        self._evictions_waiting = 0

    @contextlib.asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._evicting and not self._evictions_waiting)
            self._batches += 1
        try:
            yield
        finally:
            async with self._changed:
                self._batches -= 1
                self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def eviction(self) -> AsyncIterator[None]:
        async with self._changed:
            self._evictions_waiting += 1
            try:
                await self._changed.wait_for(lambda: not self._evicting and not self._batches)
            finally:
                self._evictions_waiting -= 1
            self._evicting = True
        try:
            yield
        finally:
            async with self._changed:
                self._evicting = False
                self._changed.notify_all()


@dataclass(frozen=True, slots=True)
class Hydration:
    """A batch's re-hydration: history to write with it (and the floors of the returning
    users' versions), and the users found hot."""

    history: Rehydrated
    hot: set[str]


@dataclass
class SessionKeeper:
    """Per-worker session state: one event-time clock per partition it has seen."""

    hot: RedisSessions
    cold: ColdTier
    gap_ms: int
    idle_grace_ms: int
    flush_batch: int = 500
    clocks: dict[int, PartitionClock] = field(default_factory=dict)
    counters: SessionCounters = field(default_factory=SessionCounters)
    #: What the cold tier holds for a hot user: the snapshot loaded at re-hydration, or
    #: the one this worker last wrote for a user it then could not evict (they came
    #: back), so their next flush skips history that is already stored. Bounded in bytes
    #: (`approximate_bytes`; least recently stored goes first); a missing entry (after a
    #: restart, a rebalance or for want of room) means the whole last-k is written again:
    #: snapshots and reads stay exact, the history holds those items twice.
    stored: OrderedDict[str, UserLastK] = field(default_factory=OrderedDict)
    max_stored_bytes: int = 256 * 1024 * 1024
    stored_bytes: int = 0
    #: Shared by batches from their hot check to their write, held alone by each eviction.
    turn: Turn = field(default_factory=Turn)
    #: The cold-tier index (None: every user not hot is read from the cold tier).
    index: ColdIndex | None = None

    async def prepare_index(self) -> None:
        """At start: see `prepare_cold_index`."""
        if self.index is not None:
            await prepare_cold_index(self.index, self.cold)

    def observe(self, partition: int, newest_event_ms: int, wall_ms: int) -> None:
        """A batch delivered events of `partition` up to this event time."""
        clock = self.clocks.get(partition)
        if clock is None:
            clock = self.clocks[partition] = PartitionClock(self.idle_grace_ms)
        clock.observe(newest_event_ms, wall_ms)

    def forget_except(self, partitions: Iterable[int]) -> None:
        """Drop the clocks of partitions this worker no longer owns (re-adopted if back)."""
        keep = set(partitions)
        for partition in [p for p in self.clocks if p not in keep]:
            del self.clocks[partition]

    async def adopt(self, partitions: Iterable[int], wall_ms: int) -> None:
        """Start clocks for newly assigned partitions from what the active sets remember.

        After a restart or a rebalance a quiet partition still closes its sessions: its
        clock starts at the newest activity recorded for it and advances from there.
        """
        for partition in partitions:
            if partition in self.clocks:
                continue
            newest = await self.hot.newest_activity(partition)
            if newest is not None:
                self.observe(partition, newest, wall_ms)

    async def hydrate(self, activity: Iterable[tuple[int, str]]) -> Hydration:
        """Cold history of the users in a batch who are not in the hot tier.

        Returned as interactions to be written with the batch, so history and new events
        land in one Redis write and trimming keeps the newest k of both; with the users
        found hot, whose keys that write checks (`sinks.hot_store.HotUsers`).
        """
        by_partition = group_by_partition(activity)
        if not by_partition:
            return Hydration(Rehydrated(), set())
        hot = await self.hot.hot_users(by_partition)
        returning = [u for users in by_partition.values() for u in users if u not in hot]
        if returning and self.index is not None:
            stored = await self.index.may_hold(returning)
            self.counters.hydration_skipped += len(returning) - len(stored)
            returning = stored
        return Hydration(await self.rehydrate(returning) if returning else Rehydrated(), hot)

    async def rehydrate_unkeyed(self, user_ids: Collection[str]) -> Rehydrated:
        """`rehydrate` for users found hot whose keys the write found gone (an interrupted
        or another worker's eviction), counted apart so operators can see it happen."""
        loaded = await self.rehydrate(user_ids)
        self.counters.hot_without_keys += len(user_ids)
        return loaded

    async def rehydrate(self, user_ids: Collection[str]) -> Rehydrated:
        """These users' cold last-k as interactions to write, whatever the hot check said,
        with the write timestamps of their stored snapshots (their versions' floors)."""
        returning = list(user_ids)
        loaded = await self.cold.load_last_k(returning)
        self._remember(snapshot for snapshot in loaded.values() if snapshot.items)
        rows = [
            Interaction(user_id, event_type, product_id, event_time_ms)
            for user_id, snapshot in loaded.items()
            for event_type, items in snapshot.items.items()
            for product_id, event_time_ms in items
        ]
        self.counters.hydrated_users += len(returning)
        self.counters.hydrated_items += len(rows)
        floors = {user_id: s.version for user_id, s in loaded.items() if s.version}
        return Rehydrated(rows, floors)

    async def flush_ended(self, wall_ms: int, partitions: Iterable[int] | None = None) -> int:
        """Move every ended session of these partitions to the cold tier; returns users moved.

        Reads up to `READ_AHEAD` batches of ended users per partition at a time and repeats
        until no ended session is left, so one call catches up after a long pause.
        """
        self.counters.flush_passes += 1
        chosen = (
            self.clocks
            if partitions is None
            else {p: self.clocks[p] for p in partitions if p in self.clocks}
        )
        due = {
            partition: closing_score(clock.watermark(wall_ms), self.gap_ms)
            for partition, clock in sorted(chosen.items())
        }
        limit = self.flush_batch * READ_AHEAD
        moved = 0
        while due:
            reads = await asyncio.gather(
                *(self.hot.ended(partition, before, limit) for partition, before in due.items())
            )
            found = [session for ended in reads for session in ended]
            if not found:
                break
            evicted = await self._move(
                [found[i : i + self.flush_batch] for i in range(0, len(found), self.flush_batch)]
            )
            moved += len(evicted)
            # A partition goes again if it had more ended users than one read returned and
            # every one read was evicted. Users not evicted were active again: they left
            # the range with a newer score, unless only late events touched them, which
            # leaves the score as is; stop there, the next pass retries them.
            read_from = Counter(session.partition for session in found)
            evicted_from = Counter(session.partition for session in evicted)
            due = {
                partition: due[partition]
                for partition, ended in zip(due, reads, strict=True)
                if len(ended) == limit and evicted_from[partition] == read_from[partition]
            }
        if moved:
            log.info("flushed %d ended sessions to the cold tier", moved)
        self.counters.hot_by_partition = await self.hot.active_counts(chosen)
        return moved

    async def _move(self, chunks: Sequence[Sequence[EndedSession]]) -> list[EndedSession]:
        """Snapshot, cold-write and evict each chunk, neighbouring chunks overlapped: while
        up to `WRITE_DEPTH` chunks are being written to the cold tier, the next one is read
        from Redis. A chunk is evicted only after its own cold write was acknowledged.
        No new chunk starts after an error; the first error is raised once the started
        steps have finished."""
        moving: list[asyncio.Future[list[EndedSession]]] = []
        reading = asyncio.ensure_future(self.hot.snapshots(chunks[0]))
        try:
            for index in range(len(chunks)):
                snapshots = await reading
                if index + 1 < len(chunks):
                    reading = asyncio.ensure_future(self.hot.snapshots(chunks[index + 1]))
                moving.append(asyncio.ensure_future(self._write_then_evict(snapshots)))
                busy = [step for step in moving if not step.done()]
                while len(busy) >= WRITE_DEPTH:
                    await asyncio.wait(busy, return_when=asyncio.FIRST_COMPLETED)
                    busy = [step for step in moving if not step.done()]
                if any(step.done() and step.exception() for step in moving):
                    break
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
            outcomes = await asyncio.gather(*moving, return_exceptions=True)
        evicted: list[EndedSession] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            evicted.extend(outcome)
        return evicted

    async def _write_then_evict(self, snapshots: Sequence[HotSnapshot]) -> list[EndedSession]:
        known = {
            s.session.user_id: self.stored[s.session.user_id]
            for s in snapshots
            if s.session.user_id in self.stored
        }
        written = [s.last_k for s in snapshots if s.last_k.items]
        if self.index is not None:
            await self.index.add([last_k.user_id for last_k in written])  # before: see ColdIndex
        await self.cold.write_snapshots(written, known)
        evicted = await self._evict(snapshots)
        gone = {session.user_id for session in evicted}
        # Users who came back stay hot: what was just written is now their stored state.
        self._remember(last_k for last_k in written if last_k.user_id not in gone)
        return evicted

    async def _evict(self, snapshots: Sequence[HotSnapshot]) -> list[EndedSession]:
        async with self.turn.eviction():
            evicted = await self.hot.evict(snapshots)
        for session in evicted:
            self._forget(session.user_id)
        self.counters.flushed_users += len(evicted)
        self.counters.flush_skipped += len(snapshots) - len(evicted)
        return evicted

    def _remember(self, snapshots: Iterable[UserLastK]) -> None:
        for snapshot in snapshots:
            self._forget(snapshot.user_id)
            size = approximate_bytes(snapshot)
            if size > self.max_stored_bytes:
                continue
            self.stored[snapshot.user_id] = snapshot
            self.stored_bytes += size
        while self.stored_bytes > self.max_stored_bytes:
            _user_id, oldest = self.stored.popitem(last=False)
            self.stored_bytes -= approximate_bytes(oldest)

    def forget_user(self, user_id: str) -> None:
        """Drop what this worker remembers of an erased user."""
        self._forget(user_id)

    def _forget(self, user_id: str) -> None:
        snapshot = self.stored.pop(user_id, None)
        if snapshot is not None:
            self.stored_bytes -= approximate_bytes(snapshot)


def newest_by_partition(activity: Iterable[tuple[int, int]]) -> Mapping[int, int]:
    """Per partition, the newest event time in a batch of (partition, event time)."""
    newest: dict[int, int] = {}
    for partition, event_time_ms in activity:
        if event_time_ms > newest.get(partition, -1):
            newest[partition] = event_time_ms
    return newest
