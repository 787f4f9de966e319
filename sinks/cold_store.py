"""The CQL cold tier: last-k snapshots and interaction history (ScyllaDB; Cassandra 5 locally).

When a session ends the worker moves the user's hot last-k here (`write_snapshots`) and
evicts the user from Redis only once this returns; a returning user is re-hydrated from
here (`load_last_k`), and the feed service reads it for users not in Redis. The layout
(day buckets, history blocks, the blobs, write timestamps, which items are new history)
is pure: `schemas.cold_layout`.

A flush is throughput-bound (thousands of users a second), so its rows are few (history
in blocks, not a row per interaction) and travel in few, large unlogged batches of many
users' rows, built straight in the driver's wire format; see `HISTORY_BATCH_BYTES` and
`_raw_batch` for the trade-offs.

The driver is callback based and runs its own I/O thread; every call here bridges
`ResponseFuture` callbacks to the asyncio loop with `call_soon_threadsafe`, so the
event loop never blocks on the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from cassandra import (
    ConsistencyLevel,
    OperationTimedOut,
    ReadTimeout,
    Unavailable,
    WriteTimeout,
)
from cassandra.cluster import Cluster, NoHostAvailable, Session
from cassandra.connection import ConnectionException
from cassandra.protocol import IsBootstrappingErrorMessage, OverloadedErrorMessage
from cassandra.query import (
    BatchStatement,
    BatchType,
    PreparedStatement,
    SimpleStatement,
    Statement,
)

from schemas.cold_layout import (
    decode_items,
    encode_items,
    history_blocks,
    newest_time_ms,
    packed,
    unstored_items,
    window_days,
    window_items,
)
from schemas.events import EventType
from schemas.hot_layout import Item, UserLastK

#: Driver errors that mean "the cluster cannot serve this right now", not "bad request".
#: Every cold-store write is idempotent, so the caller retries the whole call on these.
TRANSIENT_CQL_ERRORS: tuple[type[BaseException], ...] = (
    NoHostAvailable,
    OperationTimedOut,
    WriteTimeout,
    ReadTimeout,
    Unavailable,
    ConnectionException,
    OverloadedErrorMessage,
    IsBootstrappingErrorMessage,
)

#: Approximate value bytes of history block rows per CQL batch (~10 realistic users).
#: Each block is its own partition and needs no other in its batch, so a user's blocks
#: may go in several batches; a block larger than this goes alone, a single-partition
#: batch, which neither Cassandra nor ScyllaDB size-checks (their batch size limits are
#: for batches of several partitions: Cassandra fails those past 50 KiB by default,
#: ScyllaDB past 1 MiB). Batches are unlogged and span partitions (many users):
#: the per-request cost (driver CPU, a response, a callback) dominated a flush, and one
#: request per (user, type, day) partition capped it at ~250 users/s here. The price of a
#: multi-partition batch is paid by the coordinator, which splits it into one mutation per
#: partition and forwards those it does not own, so keep it modest (Scylla warns from
#: 128 KiB and fails at 1 MiB; the local Cassandra fails at 50 KiB, warns at 40 KiB).
#: On a multi-node cluster such a batch is not token-aware (Scylla: not shard-aware):
#: grouping rows by replica (`cluster.metadata.token_map` + murmur3 of each partition
#: key, then routing each batch by one of its keys) would restore that; not done, as the
#: local single node cannot measure it.
HISTORY_BATCH_BYTES = 16 * 1024
#: Approximate value bytes of snapshot rows per CQL batch (~12 realistic users). A user's
#: snapshot rows (one per type) are never split, so each user's snapshot stays one atomic
#: single-partition mutation; a user larger than this goes alone (single-partition: not
#: size-checked; at most ~3.2 MB, see `streams.settings.MAX_LAST_K`). Well under
#: Cassandra's default failure threshold for multi-partition batches (50 KiB).
SNAPSHOT_BATCH_BYTES = 16 * 1024
#: Users per re-hydration read (`WHERE user_id IN ?`). One request per user spent most of
#: a worker's re-hydration CPU in the driver (a request, a response and a callback hop to
#: the event loop each): 32 per read loaded ~10x more users/s here (4.0k -> 40.6k for
#: users with nothing stored). The coordinator fans the IN out to the partitions' replicas,
#: so keep it modest (ScyllaDB advises against large multi-partition INs); on a
#: multi-node cluster such a read is not token-aware.
USERS_PER_READ = 32
#: Day buckets `window` reads at once while walking back in time.
WINDOW_PARALLEL_DAYS = 4
#: Widest window in day buckets (one read each); at least the history TTL plus two days.
MAX_WINDOW_DAYS = 400

_CONSISTENCY = ConsistencyLevel.LOCAL_QUORUM
# Wire encodings of CQL int (and USING TTL) and bigint/timestamp (and USING TIMESTAMP).
_INT = struct.Struct(">i").pack
_BIGINT = struct.Struct(">q").pack

_INSERT_HISTORY = (
    "INSERT INTO history_by_user (user_id, event_type, day, newest_ms, block_id, items) "
    "VALUES (?, ?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"
)
_INSERT_SNAPSHOT = (
    "INSERT INTO lastk_by_user (user_id, event_type, items, updated_ms) "
    "VALUES (?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"
)
_SELECT_USER = (
    "SELECT user_id, event_type, items, WRITETIME(items) FROM lastk_by_user WHERE user_id = ?"
)
_SELECT_USERS = (
    "SELECT user_id, event_type, items, WRITETIME(items) FROM lastk_by_user WHERE user_id IN ?"
)
_ANY_SNAPSHOT = "SELECT user_id FROM lastk_by_user LIMIT 1"
_SNAPSHOT_USERS = "SELECT DISTINCT user_id FROM lastk_by_user"
_SELECT_SNAPSHOT = "SELECT items FROM lastk_by_user WHERE user_id = ? AND event_type = ?"
# Every block of the day that ends at or after the window's start; items outside the
# window are dropped after decoding (`window_items`).
_SELECT_WINDOW = (
    "SELECT items FROM history_by_user WHERE user_id = ? AND event_type = ? AND day = ? "
    "AND newest_ms >= ?"
)

# Erasure (`schemas.erasure`): every row of a user, at a write timestamp above every
# snapshot version issued before it. History partitions are per type and day: the days a
# row can still live in (the TTL) are named in one IN per type.
_ERASE_SNAPSHOTS = "DELETE FROM lastk_by_user USING TIMESTAMP ? WHERE user_id = ?"
_ERASE_HISTORY = (
    "DELETE FROM history_by_user USING TIMESTAMP ? "
    "WHERE user_id = ? AND event_type = ? AND day IN ?"
)
# The history table before 0003, still in place for a rolling deploy (see 0003).
_ERASE_OLD_HISTORY = (
    "DELETE FROM interactions_by_user USING TIMESTAMP ? "
    "WHERE user_id = ? AND event_type = ? AND day IN ?"
)
_RECORD_ERASURE = "INSERT INTO erasures (user_id, erased_ms, done_ms) VALUES (?, ?, ?)"
_SELECT_ERASURES = "SELECT user_id, erased_ms FROM erasures"

#: Day buckets one erasure DELETE names (ScyllaDB's default limit is 100).
ERASE_DAYS_PER_DELETE = 100

#: What to do with a request's rows (None: only its success matters).
OnRows = Callable[[list[Any]], None] | None


class ColdStore(Protocol):
    """What the worker (flush, re-hydration) and the feed service need from the cold tier."""

    async def write_snapshots(
        self, snapshots: Sequence[UserLastK], stored: Mapping[str, UserLastK] | None = None
    ) -> None:
        """Store each user's last-k and its history; returns once every write is acked.

        `stored`: per user id, the snapshot loaded at re-hydration (its items are history
        rows already and are not rewritten).
        """
        ...

    async def load_last_k(self, user_ids: Sequence[str]) -> dict[str, UserLastK]:
        """Each user's stored last-k (empty when nothing is stored)."""
        ...

    async def holds_any_snapshot(self) -> bool:
        """Whether any user's last-k is stored (the cold-tier index starts complete when not)."""
        ...

    def snapshot_users(self, page_size: int = 5000) -> AsyncIterator[list[str]]:
        """Every user with a stored last-k, a page at a time (a full scan: the index rebuild)."""
        ...

    async def last_k(self, user_id: str, event_type: EventType, k: int) -> list[Item]:
        """Newest first: (product id, event time ms), at most k."""
        ...

    async def window(
        self, user_id: str, event_type: EventType, start_ms: int, end_ms: int, limit: int
    ) -> list[Item]:
        """History in [start_ms, end_ms], newest first, at most `limit`."""
        ...

    async def close(self) -> None: ...


class _Prepared:
    """The store's statements, prepared once, each at LOCAL_QUORUM.

    LOCAL_QUORUM for reads and writes: a read sees every acknowledged write in the local
    DC (quorum + quorum overlap), and a remote DC being down never blocks the flush. With
    one node and RF 1 (the local stack) the quorum is that node.
    """

    def __init__(self, session: Session) -> None:
        self.insert_history = self._prepare(session, _INSERT_HISTORY)
        self.insert_snapshot = self._prepare(session, _INSERT_SNAPSHOT)
        # The writes are sent pre-encoded (`_raw_batch`): fail here, not with corrupt rows,
        # if the schema or the driver ever disagree with those encodings.
        _expect_bind_types(self.insert_history, _HISTORY_TYPES)
        _expect_bind_types(self.insert_snapshot, _SNAPSHOT_TYPES)
        if not isinstance(
            getattr(BatchStatement(), "_statements_and_parameters", None), list
        ):  # pragma: no cover - a driver release that changed its internals
            raise RuntimeError("cold store: this CQL driver's BatchStatement is not supported")
        self.select_user = self._prepare(session, _SELECT_USER)
        self.select_users = self._prepare(session, _SELECT_USERS)
        self.select_snapshot = self._prepare(session, _SELECT_SNAPSHOT)
        self.select_window = self._prepare(session, _SELECT_WINDOW)
        self.erase_snapshots = self._prepare(session, _ERASE_SNAPSHOTS)
        self.erase_history = self._prepare(session, _ERASE_HISTORY)
        self.erase_old_history = self._prepare(session, _ERASE_OLD_HISTORY)
        self.record_erasure = self._prepare(session, _RECORD_ERASURE)
        self.select_erasures = self._prepare(session, _SELECT_ERASURES)

    @staticmethod
    def _prepare(session: Session, cql: str) -> PreparedStatement:
        statement = session.prepare(cql)
        statement.consistency_level = _CONSISTENCY
        # Every statement may be retried or speculatively re-sent: writes are upserts of
        # the same values (and snapshot timestamps are explicit).
        statement.is_idempotent = True
        # No paging: snapshot partitions hold one row per type and a window reads one
        # day's blocks (one per flush), so every result is one response and callbacks
        # see all of it.
        statement.fetch_size = None
        return statement


_HISTORY_TYPES = ("text", "text", "int", "bigint", "bigint", "blob", "int", "bigint")
_SNAPSHOT_TYPES = ("text", "text", "blob", "bigint", "int", "bigint")


def _expect_bind_types(statement: PreparedStatement, expected: tuple[str, ...]) -> None:
    found = tuple(
        "text" if column.type.typename == "varchar" else column.type.typename
        for column in statement.column_metadata
    )
    if found != expected:
        raise RuntimeError(
            f"cold store: {statement.query_string!r} binds {found}, expected {expected}"
        )


def write_timestamp(snapshot: UserLastK) -> int:
    """The CQL write timestamp of a snapshot's rows (snapshot and history): its version.

    A flushed snapshot's version comes from the user's Redis version
    (`sinks.hot_sessions`): above every earlier snapshot of the user, so a stale one
    written late (a worker that lost its partition) never wins, and a real time in
    microseconds, so a DELETE at the current time removes what was written before it
    and nothing written after. A snapshot without one (written directly through this
    API) is stamped with the current time.
    """
    return snapshot.version or time.time_ns() // 1000


class CqlColdStore:
    """ColdStore on ScyllaDB or Cassandra through the `cassandra` driver.

    At most `max_in_flight` requests are in flight across all calls on this store (an
    asyncio.Semaphore), so one store belongs to one event loop. Statements are prepared
    on first use, off the loop, or up front with `open()`.
    """

    def __init__(
        self,
        session: Session,
        *,
        history_ttl_s: int,
        max_in_flight: int = 128,
        cluster: Cluster | None = None,
    ) -> None:
        if history_ttl_s < 1 or max_in_flight < 1:
            raise ValueError("history_ttl_s and max_in_flight must be >= 1")
        self._session = session
        self._cluster = cluster
        self._ttl_s = history_ttl_s
        self._slots = asyncio.Semaphore(max_in_flight)
        self._max_window_days = max(MAX_WINDOW_DAYS, -(-history_ttl_s // 86_400) + 2)
        self._prepared: _Prepared | None = None
        self._prepare_lock = asyncio.Lock()

    async def open(self) -> CqlColdStore:
        """Prepare the statements now (fail fast at startup instead of on first use)."""
        await self._statements()
        return self

    async def write_snapshots(
        self, snapshots: Sequence[UserLastK], stored: Mapping[str, UserLastK] | None = None
    ) -> None:
        """New items as history blocks, then one snapshot row per type; all acknowledged.

        `stored` maps a user id to the snapshot `load_last_k` returned when the worker
        re-hydrated that user (omit users that were not re-hydrated, or pass nothing):
        items equal to the stored ones are history rows already and are not written again,
        which also leaves their TTL counting from their first flush.

        Two phases: every history row is acknowledged before any snapshot row is sent, so
        a stored snapshot always implies its history is stored (what makes skipping the
        `stored` items safe, even if this call fails half way). Raises the first error
        after the requests already sent have finished; every write is idempotent, so the
        caller retries the whole call.
        """
        st = await self._statements()
        await self._run((batch, None) for batch in self._history_writes(st, snapshots, stored))
        await self._run((batch, None) for batch in self._snapshot_writes(st, snapshots))

    async def load_last_k(self, user_ids: Sequence[str]) -> dict[str, UserLastK]:
        """Up to `USERS_PER_READ` users per read (`user_id IN ?`), many reads concurrently."""
        st = await self._statements()
        loaded = {user_id: UserLastK(user_id) for user_id in user_ids}

        def on_rows(rows: list[Any]) -> None:
            for user_id, event_type, blob, written_at in rows:
                snapshot = loaded.get(user_id)
                if snapshot is not None and event_type in _EVENT_TYPES:  # else: skip
                    snapshot.items[EventType(event_type)] = decode_items(blob)
                    snapshot.version = max(snapshot.version, written_at or 0)

        users = list(loaded)
        await self._run(
            (
                # One user: the single-partition read keeps token-aware routing.
                st.select_user.bind((chunk[0],))
                if len(chunk) == 1
                else st.select_users.bind((chunk,)),
                on_rows,
            )
            for chunk in (
                users[i : i + USERS_PER_READ] for i in range(0, len(users), USERS_PER_READ)
            )
        )
        return loaded

    async def holds_any_snapshot(self) -> bool:
        statement = SimpleStatement(_ANY_SNAPSHOT, consistency_level=_CONSISTENCY)
        rows = await asyncio.to_thread(self._session.execute, statement)
        return rows.one() is not None

    async def snapshot_users(self, page_size: int = 5000) -> AsyncIterator[list[str]]:
        # A token-range scan of the partition keys, paged by the driver; each page is
        # fetched off the loop (the driver's paging API is synchronous).
        statement = SimpleStatement(
            _SNAPSHOT_USERS, fetch_size=page_size, consistency_level=_CONSISTENCY
        )
        paging_state = None
        while True:
            rows = await asyncio.to_thread(
                self._session.execute, statement, paging_state=paging_state
            )
            users = [row[0] for row in rows.current_rows]
            if users:
                yield users
            paging_state = rows.paging_state
            if paging_state is None:
                return

    async def last_k(self, user_id: str, event_type: EventType, k: int) -> list[Item]:
        st = await self._statements()
        found: list[Item] = []

        def on_rows(rows: list[Any]) -> None:
            if rows:
                found.extend(decode_items(rows[0][0])[: max(k, 0)])

        statement = st.select_snapshot.bind((user_id, EventType(event_type).value))
        await self._run([(statement, on_rows)])
        return found

    async def window(
        self, user_id: str, event_type: EventType, start_ms: int, end_ms: int, limit: int
    ) -> list[Item]:
        """Walks day buckets from `end_ms` back to `start_ms`, a few at a time, until `limit`.

        Newest first, equal times by product id; each day's blocks that end at or after
        `start_ms` are read whole and filtered here. Raises ValueError for a window wider
        than the TTL span (MAX_WINDOW_DAYS at least): each day is a read, and older rows
        have expired anyway.
        """
        days = window_days(start_ms, end_ms, self._max_window_days)
        st = await self._statements()
        type_name = EventType(event_type).value
        found: list[Item] = []
        for offset in range(0, len(days), WINDOW_PARALLEL_DAYS):
            if len(found) >= limit:
                break
            group = days[offset : offset + WINDOW_PARALLEL_DAYS]
            per_day: dict[int, list[bytes]] = {day: [] for day in group}
            await self._run(
                (
                    st.select_window.bind((user_id, type_name, day, start_ms)),
                    _collect_blobs_into(per_day[day]),
                )
                for day in group
            )
            for day in group:  # days do not overlap in time: newest day first is in order
                found.extend(window_items(per_day[day], start_ms, end_ms))
        return found[: max(limit, 0)]

    async def erase(self, user_id: str, write_timestamp_us: int, now_ms: int) -> None:
        """Delete every row of the user (snapshots, history in both tables) at this write
        timestamp: a snapshot written later with an earlier version (a flush in flight
        when the user was erased) stays deleted. Idempotent."""
        st = await self._statements()
        today = now_ms // 86_400_000
        # Every day bucket a read can reach (`window`: the TTL or 400 days, the larger),
        # and a day ahead. Older buckets exist only if a backfill wrote events that old;
        # no read reaches them and they expire with the TTL from their write.
        days = list(range(today - self._max_window_days, today + 2))
        requests: list[tuple[Statement, OnRows]] = [
            (st.erase_snapshots.bind((write_timestamp_us, user_id)), None)
        ]
        # At most ERASE_DAYS_PER_DELETE days per statement: ScyllaDB refuses a partition-key
        # product over 100 (max_partition_key_restrictions_per_query).
        chunks = [
            days[i : i + ERASE_DAYS_PER_DELETE] for i in range(0, len(days), ERASE_DAYS_PER_DELETE)
        ]
        for event_type in EventType:
            for statement in (st.erase_history, st.erase_old_history):
                for chunk in chunks:
                    requests.append(
                        (
                            statement.bind((write_timestamp_us, user_id, event_type.value, chunk)),
                            None,
                        )
                    )
        await self._run(requests)

    async def record_erasures(self, erased: Mapping[str, int], done_ms: int) -> None:
        """Remember who was erased and when (what `erasures` loads)."""
        st = await self._statements()
        await self._run(
            (st.record_erasure.bind((user, at, done_ms)), None) for user, at in erased.items()
        )

    async def erasures(self) -> dict[str, int]:
        """Every erased user and the time of their latest erasure (a small table)."""
        st = await self._statements()
        found: dict[str, int] = {}

        def on_rows(rows: list[Any]) -> None:
            for user_id, erased_ms in rows:
                found[user_id] = max(found.get(user_id, 0), erased_ms or 0)

        await self._run([(st.select_erasures.bind(()), on_rows)])
        return found

    async def close(self) -> None:
        """Shut the driver down (off the loop: it joins its threads) if this store owns it."""
        if self._cluster is not None:
            cluster, self._cluster = self._cluster, None
            await asyncio.get_running_loop().run_in_executor(None, cluster.shutdown)

    # -- internals -----------------------------------------------------------------------

    async def _statements(self) -> _Prepared:
        if self._prepared is None:
            async with self._prepare_lock:
                if self._prepared is None:
                    loop = asyncio.get_running_loop()
                    # Preparing is synchronous in the driver: do it once, on a thread.
                    self._prepared = await loop.run_in_executor(None, _Prepared, self._session)
        return self._prepared

    def _history_writes(
        self,
        st: _Prepared,
        snapshots: Sequence[UserLastK],
        stored: Mapping[str, UserLastK] | None,
    ) -> Iterator[Statement]:
        """Every user's history blocks, packed per `HISTORY_BATCH_BYTES` into unlogged
        batches, built lazily."""
        return (
            _raw_batch(rows)
            for rows in packed(self._history_rows(st, snapshots, stored), HISTORY_BATCH_BYTES)
        )

    def _history_rows(
        self,
        st: _Prepared,
        snapshots: Sequence[UserLastK],
        stored: Mapping[str, UserLastK] | None,
    ) -> Iterator[tuple[int, list[_BatchEntry]]]:
        """Per history block: (approximate bytes, its row)."""
        query_id = st.insert_history.query_id
        ttl = _INT(self._ttl_s)
        for snapshot in snapshots:
            user = snapshot.user_id.encode()
            before = stored.get(snapshot.user_id) if stored else None
            stamp = _BIGINT(write_timestamp(snapshot))
            for event_type, last_k in snapshot.items.items():
                items: Sequence[Item] = last_k
                if before is not None:
                    items = unstored_items(last_k, before.items.get(event_type))
                type_name = _TYPE_BYTES[event_type]
                for block in history_blocks(items):
                    values = (
                        user,
                        type_name,
                        _INT(block.day),
                        _BIGINT(block.newest_ms),
                        _BIGINT(block.block_id),
                        block.items_blob,
                        ttl,
                        stamp,
                    )
                    yield len(user) + len(block.items_blob) + 40, [(True, query_id, values)]

    def _snapshot_writes(
        self, st: _Prepared, snapshots: Sequence[UserLastK]
    ) -> Iterator[Statement]:
        """Snapshot rows, several users per unlogged batch, a user's rows never split.

        Each row carries its own write timestamp, the snapshot's version
        (`write_timestamp`; the batch's own timestamp only applies to rows without one).
        """
        return (
            _raw_batch(rows)
            for rows in packed(self._snapshot_rows(st, snapshots), SNAPSHOT_BATCH_BYTES)
        )

    def _snapshot_rows(
        self, st: _Prepared, snapshots: Sequence[UserLastK]
    ) -> Iterator[tuple[int, list[_BatchEntry]]]:
        """Per user: (approximate bytes, that user's snapshot rows)."""
        query_id = st.insert_snapshot.query_id
        ttl = _INT(self._ttl_s)
        for snapshot in snapshots:
            user = snapshot.user_id.encode()
            stamp = _BIGINT(write_timestamp(snapshot))
            rows: list[_BatchEntry] = []
            size = 0
            for event_type, items in snapshot.items.items():
                if not items:
                    continue
                blob = encode_items(items)
                rows.append(
                    (
                        True,
                        query_id,
                        (
                            user,
                            _TYPE_BYTES[event_type],
                            blob,
                            _BIGINT(newest_time_ms(items)),
                            ttl,
                            stamp,
                        ),
                    )
                )
                size += len(user) + len(blob) + 40
            if rows:
                yield size, rows

    async def _run(self, requests: Iterable[tuple[Statement, OnRows]]) -> None:
        """Send `requests` with at most `max_in_flight` outstanding; wait for all of them.

        No task per request: each request holds a semaphore slot, and its driver callback
        (on the driver's I/O thread) hands the outcome to the loop, which releases the
        slot, feeds the rows to `on_rows` and completes the call when the last one lands.
        On the first error no new request is sent; the error is raised once the requests
        already sent have finished.
        """
        call = _Call(asyncio.get_running_loop(), self._slots)
        try:
            for statement, on_rows in requests:
                if call.error is not None:
                    break
                await self._slots.acquire()
                try:
                    future = self._session.execute_async(statement)
                except BaseException:
                    self._slots.release()
                    raise
                call.pending += 1
                future.add_callbacks(
                    call.from_driver_ok,
                    call.from_driver_error,
                    callback_args=(on_rows,),
                )
        finally:
            call.sending = False
            call.maybe_finish()
        await call.done
        if call.error is not None:
            raise call.error


_EVENT_TYPES = frozenset(t.value for t in EventType)
_TYPE_BYTES = {t: t.value.encode() for t in EventType}


class _Call:
    """The in-flight state of one `_run`; touched only on the loop thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, slots: asyncio.Semaphore) -> None:
        self.loop = loop
        self.slots = slots
        self.done: asyncio.Future[None] = loop.create_future()
        self.pending = 0
        self.sending = True
        self.error: BaseException | None = None

    # Driver I/O thread: only hand over to the loop.
    def from_driver_ok(self, rows: list[Any] | None, on_rows: OnRows) -> None:
        self._to_loop(self.settle, rows, on_rows, None)

    def from_driver_error(self, error: BaseException) -> None:
        self._to_loop(self.settle, None, None, error)

    def _to_loop(self, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            self.loop.call_soon_threadsafe(*args)

    # Loop thread.
    def settle(self, rows: list[Any] | None, on_rows: OnRows, error: BaseException | None) -> None:
        self.slots.release()
        self.pending -= 1
        if error is None and on_rows is not None:
            try:
                on_rows(rows or [])
            except Exception as exc:  # a bad stored value: report it, keep the accounting
                error = exc
        if error is not None and self.error is None:
            self.error = error
        self.maybe_finish()

    def maybe_finish(self) -> None:
        if not self.sending and self.pending == 0 and not self.done.done():
            self.done.set_result(None)


#: One statement of a batch as the driver sends it: (prepared?, query id, wire values).
_BatchEntry = tuple[bool, bytes, tuple[bytes, ...]]


def _raw_batch(entries: list[_BatchEntry]) -> BatchStatement:
    """An unlogged batch of rows whose values are already in the wire format.

    `PreparedStatement.bind` serializes value by value through the driver's generic type
    layer (10-20 us a row on this machine), and even a `BoundStatement` per row plus
    `BatchStatement.add` costs several us a row; flush rows are only text, int, bigint
    and blob, encoded directly here, and the entries go straight into the batch's list
    of (prepared, query id, values) that the driver serializes (`BatchMessage`).
    `_Prepared` checks at prepare time that the bind types are the ones encoded here and
    that the driver still keeps that list.
    """
    batch = BatchStatement(BatchType.UNLOGGED, consistency_level=_CONSISTENCY)
    batch.is_idempotent = True
    batch._statements_and_parameters = entries
    return batch


def _collect_blobs_into(found: list[bytes]) -> Callable[[list[Any]], None]:
    def on_rows(rows: list[Any]) -> None:
        found.extend(items for (items,) in rows)

    return on_rows
