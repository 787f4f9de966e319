"""The CQL cold-tier adapter against the real CQL server: round trip, idempotence, stale
snapshots, windows across day buckets, TTLs, the in-flight bound and a down server."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from cassandra.query import BatchStatement

from infra.migrate import apply_migrations
from schemas.cold_layout import DAY_MS, decode_items
from schemas.events import PRODUCT_EVENT_TYPES, EventType
from schemas.hot_layout import Item, UserLastK, merge_items
from sinks.cold_store import (
    HISTORY_BATCH_BYTES,
    SNAPSHOT_BATCH_BYTES,
    TRANSIENT_CQL_ERRORS,
    USERS_PER_READ,
    CqlColdStore,
)
from sinks.cql import connect
from sinks.retry import transient_errors
from streams.bootstrap import build_cold_store
from streams.settings import Settings
from tests.conftest import free_port

T = TypeVar("T")
NOW_MS = 1_728_000_000_000  # 2024-10-04 00:00 UTC, day 20000
VERSION = 1_796_000_000_000_000  # a snapshot version (us), as a flush reads it from Redis
TYPES = sorted(PRODUCT_EVENT_TYPES)


@pytest.fixture
def cql(isolated_settings: Settings) -> Iterator[tuple[Settings, Any]]:
    """The test's own keyspace, migrated; dropped afterwards."""
    cluster, session = connect(isolated_settings)
    try:
        apply_migrations(session, isolated_settings)
        yield isolated_settings, session
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {isolated_settings.cql_keyspace}")
        cluster.shutdown()


def with_store(session: Any, body: Callable[[CqlColdStore], Awaitable[T]], **options: Any) -> T:
    async def main() -> T:
        store = CqlColdStore(session, **{"history_ttl_s": 3600, **options})
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def random_snapshot(rnd: random.Random, user_id: str, per_type: int = 10) -> UserLastK:
    snapshot = UserLastK(user_id)
    for event_type in rnd.sample(TYPES, rnd.randint(1, len(TYPES))):
        items = [
            (f"p{rnd.randrange(10_000)}", NOW_MS - rnd.randrange(3 * DAY_MS))
            for _ in range(per_type)
        ]
        snapshot.items[event_type] = merge_items(items, [], keep=per_type)
    return snapshot


def history_rows(session: Any, keyspace: str, user_id: str) -> list[tuple[Any, ...]]:
    """A user's history block rows as stored (a full scan: the keyspace is the test's own)."""
    rows = session.execute(
        "SELECT user_id, event_type, day, newest_ms, block_id, items "
        f"FROM {keyspace}.history_by_user"
    )
    return sorted(tuple(r[1:]) for r in rows if r[0] == user_id)


def history(session: Any, keyspace: str, user_id: str) -> list[tuple[str, int, int, str]]:
    """A user's history items: (type, day, event time, product), each block decoded."""
    return sorted(
        (event_type, day, at, product)
        for event_type, day, _newest, _block, items in history_rows(session, keyspace, user_id)
        for product, at in decode_items(items)
    )


def test_write_then_load_round_trips_many_users(cql: tuple[Settings, Any]) -> None:
    settings, _session = cql
    rnd = random.Random(1)
    snapshots = [random_snapshot(rnd, f"u{i}") for i in range(300)]

    async def body() -> dict[str, UserLastK]:
        store = build_cold_store(settings)  # the composition root's builder, own connection
        try:
            await store.write_snapshots(snapshots)
            return await store.load_last_k([s.user_id for s in snapshots])
        finally:
            await store.close()

    loaded = asyncio.run(body())
    assert {u: s.items for u, s in loaded.items()} == {s.user_id: s.items for s in snapshots}


def test_unknown_users_load_empty(cql: tuple[Settings, Any]) -> None:
    _settings, session = cql
    loaded = with_store(session, lambda store: store.load_last_k(["nobody", "ghost"]))
    assert loaded == {"nobody": UserLastK("nobody"), "ghost": UserLastK("ghost")}
    assert with_store(session, lambda store: store.last_k("nobody", EventType.VIEW, 5)) == []
    assert with_store(session, lambda store: store.load_last_k([])) == {}


def test_last_k_reads_one_type_newest_first(cql: tuple[Settings, Any]) -> None:
    _settings, session = cql
    snapshot = UserLastK(
        "u1", {EventType.VIEW: [("p3", 30), ("p2", 20), ("p1", 10)], EventType.ORDER: [("p9", 5)]}
    )

    async def body(store: CqlColdStore) -> tuple[list[Item], list[Item], list[Item]]:
        await store.write_snapshots([snapshot])
        return (
            await store.last_k("u1", EventType.VIEW, 2),
            await store.last_k("u1", EventType.ORDER, 10),
            await store.last_k("u1", EventType.CLICK, 10),
        )

    assert with_store(session, body) == ([("p3", 30), ("p2", 20)], [("p9", 5)], [])


def test_writing_the_same_snapshot_twice_changes_nothing(cql: tuple[Settings, Any]) -> None:
    """The same snapshot at the same version (a flush retried): the same rows, the same
    write timestamps."""
    settings, session = cql
    snapshot = random_snapshot(random.Random(2), "u1")
    snapshot.version = VERSION
    keyspace = settings.cql_keyspace
    snapshot_cells = (
        f"SELECT event_type, items, updated_ms, writetime(items) FROM {keyspace}.lastk_by_user "
        "WHERE user_id = 'u1'"
    )

    async def write_once(store: CqlColdStore) -> dict[str, UserLastK]:
        await store.write_snapshots([snapshot])
        return await store.load_last_k(["u1"])

    first = with_store(session, write_once)
    cells_once = list(session.execute(snapshot_cells))
    blocks_once = history_rows(session, keyspace, "u1")
    second = with_store(session, write_once)
    assert second == first
    assert list(session.execute(snapshot_cells)) == cells_once
    assert history_rows(session, keyspace, "u1") == blocks_once  # the same rows, no more
    assert sorted(history(session, keyspace, "u1")) == sorted(
        (t.value, at // DAY_MS, at, product)
        for t, items in snapshot.items.items()
        for product, at in items
    )
    # One row per (type, day) block, not one per interaction.
    assert len(blocks_once) == len(
        {(t, at // DAY_MS) for t, items in snapshot.items.items() for _p, at in items}
    )


def test_a_stale_snapshot_written_late_does_not_win(cql: tuple[Settings, Any]) -> None:
    """Rows are written at the snapshot's version: one read earlier (a worker that lost its
    partition, writing late) loses every row, even one whose list looks newer or longer;
    a snapshot without a version is stamped with the current time, and loading tells the
    stored version."""
    _settings, session = cql
    newer = UserLastK(
        "u1",
        {
            EventType.VIEW: [("p3", NOW_MS + 300), ("p2", NOW_MS + 200), ("p1", NOW_MS + 100)],
            EventType.CLICK: [("p1", NOW_MS + 50)],
        },
        version=VERSION + 2,
    )
    stale = UserLastK(
        "u1",
        {
            EventType.VIEW: [("p2", NOW_MS + 200), ("p1", NOW_MS + 100)],
            EventType.CLICK: [("p5", NOW_MS + 60), ("p1", NOW_MS + 50)],
        },
        version=VERSION + 1,
    )
    unversioned = UserLastK("u2", {EventType.VIEW: [("p1", NOW_MS)]})

    async def body(store: CqlColdStore) -> dict[str, UserLastK]:
        await store.write_snapshots([newer])
        await store.write_snapshots([stale])
        before = time.time_ns() // 1000
        await store.write_snapshots([unversioned])
        loaded = await store.load_last_k(["u1", "u2"])
        assert before <= loaded["u2"].version <= time.time_ns() // 1000
        return loaded

    loaded = with_store(session, body)
    assert loaded["u1"].items == newer.items
    assert loaded["u1"].version == VERSION + 2


def test_window_is_newest_first_within_bounds_across_days_and_honours_limit(
    cql: tuple[Settings, Any],
) -> None:
    _settings, session = cql
    day = NOW_MS  # start of day 20000
    times = [day - 2 * DAY_MS + 5, day - DAY_MS - 1, day - DAY_MS + 7, day + 1, day + 9, day + 500]
    snapshot = UserLastK(
        "u1", {EventType.VIEW: merge_items([(f"p{i}", t) for i, t in enumerate(times)], [], 50)}
    )
    snapshot.items[EventType.CLICK] = [("c1", day + 3)]

    week_ago = day - 7 * DAY_MS

    async def body(store: CqlColdStore) -> dict[str, list[Item]]:
        await store.write_snapshots([snapshot])
        got = {
            "all": await store.window("u1", EventType.VIEW, week_ago, day + DAY_MS, 100),
            "inner": await store.window("u1", EventType.VIEW, day - DAY_MS - 1, day + 9, 100),
            "limited": await store.window("u1", EventType.VIEW, week_ago, day + DAY_MS, 4),
            "one_day": await store.window("u1", EventType.VIEW, day - 5, day + 10, 100),
            "empty": await store.window("u1", EventType.VIEW, day + 600, day + 900, 100),
            "zero": await store.window("u1", EventType.VIEW, week_ago, day + DAY_MS, 0),
            "click": await store.window("u1", EventType.CLICK, week_ago, day + DAY_MS, 10),
        }
        with pytest.raises(ValueError, match="at most 400 days"):
            await store.window("u1", EventType.VIEW, 0, day, 10)  # ~20k day buckets
        return got

    got = with_store(session, body)
    newest_first = sorted(((f"p{i}", t) for i, t in enumerate(times)), key=lambda x: -x[1])
    assert got["all"] == newest_first
    assert got["inner"] == [item for item in newest_first if day - DAY_MS - 1 <= item[1] <= day + 9]
    assert got["inner"][-1] == ("p1", day - DAY_MS - 1)  # both bounds inclusive
    assert got["limited"] == newest_first[:4]  # spans two day buckets
    assert got["one_day"] == [("p4", day + 9), ("p3", day + 1)]
    assert got["empty"] == [] and got["zero"] == []
    assert got["click"] == [("c1", day + 3)]


def test_writes_carry_the_history_ttl_setting(cql: tuple[Settings, Any]) -> None:
    settings, session = cql
    snapshot = UserLastK("u1", {EventType.VIEW: [("p1", NOW_MS)]})
    with_store(session, lambda store: store.write_snapshots([snapshot]), history_ttl_s=1000)
    for table in ("lastk_by_user", "history_by_user"):
        ttls = [
            row[0]
            for row in session.execute(f"SELECT TTL(items) FROM {settings.cql_keyspace}.{table}")
        ]
        assert ttls and all(990 <= ttl <= 1000 for ttl in ttls)  # not the 180-day default


def test_history_rows_expire_with_the_setting(cql: tuple[Settings, Any]) -> None:
    _settings, session = cql
    snapshot = UserLastK("u1", {EventType.VIEW: [("p2", NOW_MS + 1), ("p1", NOW_MS)]})

    async def body(store: CqlColdStore) -> tuple[list[Item], list[Item], UserLastK]:
        await store.write_snapshots([snapshot])
        before = await store.window("u1", EventType.VIEW, NOW_MS, NOW_MS + DAY_MS, 10)
        await asyncio.sleep(3)
        after = await store.window("u1", EventType.VIEW, NOW_MS, NOW_MS + DAY_MS, 10)
        return before, after, (await store.load_last_k(["u1"]))["u1"]

    before, after, loaded = with_store(session, body, history_ttl_s=2)
    assert before == [("p2", NOW_MS + 1), ("p1", NOW_MS)]
    assert after == []
    assert loaded == UserLastK("u1")


class CountingSession:
    """Wraps a driver session to record the most requests ever in flight at once, and what
    every request carried: per request, the (query id, values) of its rows and how many
    requests were in flight when it was sent."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._lock = threading.Lock()
        self.in_flight = 0
        self.most = 0
        self.sent = 0
        self.requests: list[tuple[list[tuple[bytes, tuple[bytes, ...]]], int]] = []

    def prepare(self, cql: str) -> Any:
        return self._session.prepare(cql)

    def execute_async(self, statement: Any) -> Any:
        if isinstance(statement, BatchStatement):
            rows = [(qid, tuple(v)) for _, qid, v in statement._statements_and_parameters]
        else:
            rows = [(statement.prepared_statement.query_id, tuple(statement.values))]
        with self._lock:
            self.requests.append((rows, self.in_flight))
            self.in_flight += 1
            self.sent += 1
            self.most = max(self.most, self.in_flight)
        future = self._session.execute_async(statement)
        future.add_callbacks(self._done, self._done)
        return future

    def _done(self, _result: object) -> None:
        with self._lock:
            self.in_flight -= 1

    def query_id(self, cql_start: str) -> bytes:
        return bytes(self._session.prepare(cql_start).query_id)


def test_2000_users_with_8_requests_in_flight_at_most(cql: tuple[Settings, Any]) -> None:
    _settings, session = cql
    rnd = random.Random(3)
    snapshots = [random_snapshot(rnd, f"u{i}", per_type=5) for i in range(2000)]
    counting = CountingSession(session)

    async def body(store: CqlColdStore) -> dict[str, UserLastK]:
        await store.write_snapshots(snapshots)
        return await store.load_last_k([s.user_id for s in snapshots])

    loaded = with_store(counting, body, max_in_flight=8)
    assert {u: s.items for u, s in loaded.items()} == {s.user_id: s.items for s in snapshots}
    assert 1 < counting.most <= 8
    # Rows of many users share a request: history blocks in batches, then snapshots.
    history_items = sum(len(items) for s in snapshots for items in s.items.values())
    reads = -(-len(snapshots) // USERS_PER_READ)
    writes = [rows for rows, _ in counting.requests[:-reads]]  # then the reads
    read_id = counting.query_id(
        "SELECT user_id, event_type, items, WRITETIME(items) FROM lastk_by_user WHERE user_id IN ?"
    )
    assert all(rows[0][0] == read_id for rows, _ in counting.requests[-reads:])
    history_id = history_query_id(counting)
    history_batches = [rows for rows in writes if rows[0][0] == history_id]
    assert sum(len(decode_items(v[5])) for rows in history_batches for _q, v in rows) == (
        history_items
    )
    for rows in history_batches:
        # A batch holds ~HISTORY_BATCH_BYTES of blobs; only a single block may exceed it.
        assert len(rows) == 1 or sum(len(values[5]) for _q, values in rows) <= (HISTORY_BATCH_BYTES)
    assert len(writes) < len(snapshots) // 4  # it was ~4 requests a user
    assert reads < len(snapshots) // 16  # it was 1 read a user


def history_query_id(counting: CountingSession) -> bytes:
    return counting.query_id(
        "INSERT INTO history_by_user (user_id, event_type, day, newest_ms, block_id, items) "
        "VALUES (?, ?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"
    )


def test_history_is_acknowledged_before_any_snapshot_and_a_user_is_one_batch(
    cql: tuple[Settings, Any],
) -> None:
    _settings, session = cql
    rnd = random.Random(4)
    snapshots = [random_snapshot(rnd, f"u{i}", per_type=30) for i in range(300)]
    counting = CountingSession(session)
    with_store(counting, lambda store: store.write_snapshots(snapshots))

    history_id = history_query_id(counting)
    kinds = [rows[0][0] == history_id for rows, _ in counting.requests]
    first_snapshot = kinds.index(False)
    assert all(kinds[:first_snapshot]) and not any(kinds[first_snapshot:])
    assert counting.requests[first_snapshot][1] == 0  # every history request had its answer
    # A user's snapshot rows (one per type) all travel in the same batch: one mutation.
    batch_of: dict[bytes, set[int]] = {}
    for index, (rows, _) in enumerate(counting.requests[first_snapshot:]):
        for _qid, values in rows:
            batch_of.setdefault(values[0], set()).add(index)
        assert sum(len(values[2]) for _qid, values in rows) <= SNAPSHOT_BATCH_BYTES
    assert len(batch_of) == len(snapshots)
    assert all(len(batches) == 1 for batches in batch_of.values())
    assert len(counting.requests) - first_snapshot > 1  # and several users share a batch


def test_stored_items_are_not_rewritten_and_no_history_is_lost(
    cql: tuple[Settings, Any],
) -> None:
    _settings, session = cql
    first = UserLastK(
        "u1",
        {
            EventType.VIEW: [("p3", NOW_MS + 300), ("p2", NOW_MS + 200), ("p1", NOW_MS + 100)],
            EventType.ORDER: [("o1", NOW_MS + 50)],
        },
    )
    counting = CountingSession(session)

    async def body(store: CqlColdStore) -> tuple[list[Item], list[Item], UserLastK]:
        await store.write_snapshots([first])
        stored = await store.load_last_k(["u1"])  # what the worker re-hydrates the user with
        counting.requests.clear()
        # The next session: a new view, p2 viewed again, and a late view older than p3.
        views = merge_items(
            [("p9", NOW_MS + 900), ("p2", NOW_MS + 600), ("p7", NOW_MS + 150)],
            first.items[EventType.VIEW],
            10,
        )
        second = UserLastK("u1", {EventType.VIEW: views, EventType.ORDER: [("o1", NOW_MS + 50)]})
        await store.write_snapshots([second], stored=stored)
        return (
            await store.window("u1", EventType.VIEW, NOW_MS, NOW_MS + DAY_MS, 100),
            await store.window("u1", EventType.ORDER, NOW_MS, NOW_MS + DAY_MS, 100),
            (await store.load_last_k(["u1"]))["u1"],
        )

    views, orders, loaded = with_store(counting, body)
    history_id = history_query_id(counting)
    rewritten = sorted(
        item
        for rows, _ in counting.requests
        for qid, values in rows
        if qid == history_id
        for item in decode_items(values[5])
    )
    assert [product for product, _ in rewritten] == ["p2", "p7", "p9"]  # only the new items
    assert views == [
        ("p9", NOW_MS + 900),
        ("p2", NOW_MS + 600),
        ("p3", NOW_MS + 300),
        ("p2", NOW_MS + 200),
        ("p7", NOW_MS + 150),
        ("p1", NOW_MS + 100),
    ]
    assert orders == [("o1", NOW_MS + 50)]
    assert loaded.items[EventType.VIEW][0] == ("p9", NOW_MS + 900)
    assert loaded.items[EventType.ORDER] == [("o1", NOW_MS + 50)]  # snapshots always written


def test_the_newest_snapshot_wins_even_within_one_call(cql: tuple[Settings, Any]) -> None:
    _settings, session = cql
    newer = UserLastK(
        "u1", {EventType.VIEW: [("p2", NOW_MS + 200), ("p1", NOW_MS + 100)]}, version=VERSION + 1
    )
    stale = UserLastK("u1", {EventType.VIEW: [("p1", NOW_MS + 100)]}, version=VERSION)

    async def body(store: CqlColdStore) -> UserLastK:
        await store.write_snapshots([newer, stale])  # same call, likely the same batch
        return (await store.load_last_k(["u1"]))["u1"]

    assert with_store(session, body).items == newer.items


def test_a_down_server_raises_a_transient_error(isolated_settings: Settings) -> None:
    settings = isolated_settings.model_copy(update={"cql_port": free_port()})
    started = time.monotonic()
    with pytest.raises(TRANSIENT_CQL_ERRORS):
        build_cold_store(settings)
    assert time.monotonic() - started < 30
    # ... and the agents' retry loop treats those as "store unavailable", not as bad input.
    assert set(TRANSIENT_CQL_ERRORS) <= set(transient_errors())
