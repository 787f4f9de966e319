"""Benchmark: the CQL cold tier (`sinks.cold_store`) against the running local stack.

Measures, in its own keyspace (created, migrated and dropped here):

- flush: `write_snapshots` in calls of `--flush-batch` users (as the worker flushes ended
  sessions), per `--strategy` (default: all, alternated over `--rounds` rounds; the median
  round is reported):
  - `rows`: the previous history layout (the baseline, kept here only): one row per
    interaction in `interactions_by_user` (migration 0001, dropped by 0003; this bench
    creates it in its own keyspace), 100 rows of many users per unlogged batch, then the
    store's snapshots;
  - `blocks`: the store's plan, one history row per (user, type, day) holding the
    flush's items of that day (`history_by_user`), many users per batch, then snapshots;
  for two user shapes: `5x10` (5 types x 10 items) and `realistic` (~20 views, 5 clicks,
  2 carts, 1 wishlist, an order for some), in users/s and CQL rows/s (history + snapshot);
- returning users: the realistic users flushed again after a short new session, with and
  without `stored=` (the snapshots loaded at re-hydration): rows that are already history
  are not rewritten;
- re-hydration: `load_last_k([user])` latency for single users, one at a time, beside the
  driver's synchronous `session.execute` of the same prepared read (the floor);
- bulk load: `load_last_k` of every user in one call.

Prints a table and writes bench/results/cold_store.json. Targets: flush >= 2,000 users/s,
re-hydration p99 <= 20 ms. The machine is shared: compare figures within one run only.

    .venv/bin/python bench/cold_store_bench.py [--users N] [--flush-batch N] [--samples N]
        [--strategy all|rows|blocks] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import platform
import random
import statistics
import struct
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from infra.migrate import apply_migrations  # noqa: E402
from schemas.cold_layout import day_of, history_blocks, unstored_items  # noqa: E402
from schemas.events import EventType  # noqa: E402
from schemas.hot_layout import Item, UserLastK, merge_items  # noqa: E402
from sinks.cold_store import CqlColdStore, _BatchEntry, _raw_batch  # noqa: E402
from sinks.cql import connect  # noqa: E402
from streams.settings import DEFAULT_LAST_K, Settings  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "cold_store.json"
TYPES = [
    EventType.VIEW,
    EventType.CLICK,
    EventType.ADD_TO_CART,
    EventType.WISHLIST,
    EventType.ORDER,
]
ITEMS_PER_TYPE = 10
#: The realistic session: items per type (an order for ORDER_SHARE of users).
REALISTIC = {
    EventType.VIEW: 20,
    EventType.CLICK: 5,
    EventType.ADD_TO_CART: 2,
    EventType.WISHLIST: 1,
}
ORDER_SHARE = 0.3
STRATEGIES = ("rows", "blocks")
#: The previous layout's table (migration 0001), for the `rows` baseline.
LEGACY_TABLE = """
CREATE TABLE IF NOT EXISTS interactions_by_user (
    user_id text, event_type text, day int, event_time timestamp, product_id text,
    PRIMARY KEY ((user_id, event_type, day), event_time, product_id)
) WITH CLUSTERING ORDER BY (event_time DESC, product_id ASC)
"""
LEGACY_INSERT = (
    "INSERT INTO interactions_by_user (user_id, event_type, day, event_time, product_id) "
    "VALUES (?, ?, ?, ?, ?) USING TTL ?"
)
LEGACY_BATCH_ROWS = 100


def snapshots(count: int, tag: str, seed: int = 11) -> list[UserLastK]:
    """Users with ITEMS_PER_TYPE items in each of 5 types, from the last hour."""
    rnd = random.Random(seed)
    now_ms = int(time.time() * 1000)
    users = []
    for i in range(count):
        snapshot = UserLastK(f"{tag}-u{i:07d}")
        for event_type in TYPES:
            snapshot.items[event_type] = recent_items(rnd, now_ms, ITEMS_PER_TYPE)
        users.append(snapshot)
    return users


def realistic(count: int, tag: str, seed: int = 13) -> list[UserLastK]:
    """Users shaped like a real session: ~20 views, 5 clicks, 2 carts, 1 wishlist, an order
    for some."""
    rnd = random.Random(seed)
    now_ms = int(time.time() * 1000)
    users = []
    for i in range(count):
        snapshot = UserLastK(f"{tag}-r{i:07d}")
        for event_type, n in REALISTIC.items():
            snapshot.items[event_type] = recent_items(rnd, now_ms, n)
        if rnd.random() < ORDER_SHARE:
            snapshot.items[EventType.ORDER] = recent_items(rnd, now_ms, 1)
        users.append(snapshot)
    return users


def recent_items(rnd: random.Random, now_ms: int, n: int) -> list[Item]:
    items = [
        (f"p{rnd.randrange(1_000_000):07d}", now_ms - rnd.randrange(3_600_000)) for _ in range(n)
    ]
    return merge_items(items, [], keep=n)


def next_session(users: list[UserLastK], seed: int = 17) -> list[UserLastK]:
    """The same users after a short new session (5 views, 1 click), merged into their last-k
    as the worker's re-hydration does (keep = Settings' default k per type)."""
    rnd = random.Random(seed)
    now_ms = int(time.time() * 1000) + 3_600_000
    keep = DEFAULT_LAST_K
    out = []
    for user in users:
        fresh = {
            EventType.VIEW: recent_items(rnd, now_ms, 5),
            EventType.CLICK: recent_items(rnd, now_ms, 1),
        }
        items = dict(user.items)
        for event_type, new in fresh.items():
            items[event_type] = merge_items(new, items.get(event_type, []), keep[event_type])
        out.append(UserLastK(user.user_id, items))
    return out


def batched(rows: Iterable[_BatchEntry], size: int) -> Iterator[list[_BatchEntry]]:
    """The previous layout's batching: consecutive lists of `size` rows (the last shorter)."""
    remaining = iter(rows)
    while batch := list(itertools.islice(remaining, size)):
        yield batch


def cql_rows(
    users: list[UserLastK], strategy: str, stored: dict[str, UserLastK] | None = None
) -> int:
    """CQL rows a flush of `users` writes: history (per item, or per block) + snapshots."""
    total = 0
    for user in users:
        before = stored.get(user.user_id) if stored else None
        for event_type, items in user.items.items():
            new = unstored_items(items, before.items.get(event_type) if before else None)
            total += len(new) if strategy == "rows" else len(history_blocks(new))
            total += 1 if items else 0
    return total


class RowPerInteractionColdStore(CqlColdStore):
    """The previous history layout, for the same-run baseline: one row per interaction,
    `LEGACY_BATCH_ROWS` rows of many users per unlogged batch, pre-encoded as the store
    encoded them; then the store's own snapshot writes."""

    def __init__(self, session: Any, **options: Any) -> None:
        super().__init__(session, **options)
        session.execute(LEGACY_TABLE)
        self._legacy = session.prepare(LEGACY_INSERT)

    async def write_snapshots(self, snapshots: Any, stored: Any = None) -> None:
        st = await self._statements()
        rows = batched(self._legacy_rows(snapshots, stored), LEGACY_BATCH_ROWS)
        await self._run((_raw_batch(batch), None) for batch in rows)
        await self._run((batch, None) for batch in self._snapshot_writes(st, snapshots))

    def _legacy_rows(self, snapshots: list[UserLastK], stored: dict[str, UserLastK] | None) -> Any:
        query_id = self._legacy.query_id
        ttl = _INT(self._ttl_s)
        for snapshot in snapshots:
            user = snapshot.user_id.encode()
            before = stored.get(snapshot.user_id) if stored else None
            for event_type, last_k in snapshot.items.items():
                items = unstored_items(last_k, before.items.get(event_type) if before else None)
                type_name = EventType(event_type).value.encode()
                for product, at in items:
                    day = _INT(day_of(at))
                    values = (user, type_name, day, _BIGINT(at), product.encode(), ttl)
                    entry: _BatchEntry = (True, query_id, values)
                    yield entry


_INT = struct.Struct(">i").pack
_BIGINT = struct.Struct(">q").pack


async def flush_rate(
    store: CqlColdStore,
    users: list[UserLastK],
    batch: int,
    stored: dict[str, UserLastK] | None = None,
) -> float:
    """Users per second through write_snapshots, `batch` users per call."""
    await store.open()
    started = time.perf_counter()
    for offset in range(0, len(users), batch):
        await store.write_snapshots(users[offset : offset + batch], stored)
    return len(users) / (time.perf_counter() - started)


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples_s)
    return {
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 3),
        "max_ms": round(ms[-1], 3),
    }


async def rehydration(store: CqlColdStore, user_ids: list[str]) -> list[float]:
    await store.load_last_k(user_ids[:50])  # warm up
    took = []
    for user_id in user_ids:
        started = time.perf_counter()
        loaded = await store.load_last_k([user_id])
        took.append(time.perf_counter() - started)
        assert loaded[user_id].items, f"{user_id} came back empty"
    return took


def sync_reads(session: Any, user_ids: list[str]) -> list[float]:
    prepared = session.prepare("SELECT event_type, items FROM lastk_by_user WHERE user_id = ?")
    took = []
    for user_id in user_ids:
        started = time.perf_counter()
        session.execute(prepared, (user_id,))
        took.append(time.perf_counter() - started)
    return took


async def bulk_load_rate(store: CqlColdStore, user_ids: list[str]) -> float:
    started = time.perf_counter()
    loaded = await store.load_last_k(user_ids)
    elapsed = time.perf_counter() - started
    assert all(s.items for s in loaded.values())
    return len(user_ids) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=4000, help="users flushed (default 4000)")
    parser.add_argument("--flush-batch", type=int, default=500, help="users per write call")
    parser.add_argument("--samples", type=int, default=2000, help="single-user loads timed")
    parser.add_argument("--strategy", choices=("all", *STRATEGIES), default="all")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds (median)")
    args = parser.parse_args(argv)
    if min(args.users, args.flush_batch, args.samples, args.rounds) <= 0:
        parser.error("--users, --flush-batch, --samples and --rounds must be positive")

    tag = uuid.uuid4().hex[:8]
    settings = Settings.load(cql_keyspace=f"bench_cold_{tag}")
    cluster, session = connect(settings)
    try:
        apply_migrations(session, settings)
        result = run(session, settings, tag, args)
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {settings.cql_keyspace}")
        cluster.shutdown()

    width = 56
    rows: list[tuple[str, str]] = []
    for shape, per_strategy in result["flush"].items():
        for strategy, figures in per_strategy.items():
            rows.append(
                (
                    f"flush {shape}, {strategy}",
                    f"{figures['users_per_s']:,.0f} users/s {figures['rows_per_s']:>9,.0f} rows/s",
                )
            )
    for case, figures in result.get("returning", {}).items():
        rows.append(
            (
                f"flush returning realistic, {case}",
                f"{figures['users_per_s']:,.0f} users/s {figures['rows_per_s']:>9,.0f} rows/s",
            )
        )
    rows += [
        ("re-hydrate 1 user, load_last_k p50", f"{result['rehydrate']['p50_ms']:.2f} ms"),
        ("re-hydrate 1 user, load_last_k p99", f"{result['rehydrate']['p99_ms']:.2f} ms"),
        ("re-hydrate 1 user, load_last_k max", f"{result['rehydrate']['max_ms']:.2f} ms"),
        ("same read, sync session.execute p50 (floor)", f"{result['sync_read']['p50_ms']:.2f} ms"),
        ("same read, sync session.execute p99 (floor)", f"{result['sync_read']['p99_ms']:.2f} ms"),
        (
            "bulk load_last_k, all users in one call",
            f"{result['bulk_load_users_per_s']:,.0f} users/s",
        ),
    ]
    print(f"{'measurement':<{width}} {'value':>32}")
    print(f"{'-' * width} {'-' * 32}")
    for name, value in rows:
        print(f"{name:<{width}} {value:>32}")
    print(
        f"users={args.users} per shape and round, {args.flush_batch} users per call, "
        f"median of {args.rounds} alternated rounds, max_in_flight={settings.cql_max_in_flight}; "
        "rows/s = CQL rows written (history + snapshot); targets: flush >= 2,000 users/s, "
        "re-hydration p99 <= 20 ms"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


def run(session: Any, settings: Settings, tag: str, args: argparse.Namespace) -> dict[str, Any]:
    strategies = STRATEGIES if args.strategy == "all" else (args.strategy,)
    shapes = {"5x10": snapshots, "realistic": realistic}

    async def measure() -> dict[str, Any]:
        options = {
            "history_ttl_s": settings.cold_history_ttl_s,
            "max_in_flight": settings.cql_max_in_flight,
        }
        stores: dict[str, CqlColdStore] = {
            "rows": RowPerInteractionColdStore(session, **options),
            "blocks": CqlColdStore(session, **options),
        }
        # Fresh users for every (shape, strategy, round): no run rewrites another's rows.
        rates: dict[str, dict[str, list[float]]] = {
            shape: {s: [] for s in strategies} for shape in shapes
        }
        rows_per_user: dict[str, dict[str, float]] = {shape: {} for shape in shapes}
        for round_ in range(args.rounds):
            for shape, make in shapes.items():
                order = strategies if round_ % 2 == 0 else tuple(reversed(strategies))
                for strategy in order:
                    users = make(args.users, f"{tag}{shape[0]}{strategy[0]}{round_}", seed=round_)
                    rows_per_user[shape][strategy] = cql_rows(users, strategy) / len(users)
                    rate = await flush_rate(stores[strategy], users, args.flush_batch)
                    rates[shape][strategy].append(rate)
        flush = {
            shape: {
                strategy: {
                    "users_per_s": round(statistics.median(samples)),
                    "rows_per_s": round(statistics.median(samples) * per_user[strategy]),
                    "cql_rows_per_user": round(per_user[strategy], 2),
                    "rounds_users_per_s": [round(r) for r in samples],
                }
                for strategy, samples in per_strategy.items()
            }
            for shape, per_strategy in rates.items()
            for per_user in [rows_per_user[shape]]
        }

        # Returning users: flushed once, re-hydrated, a short session, flushed again.
        store = stores["blocks"]
        first = realistic(args.users, f"{tag}ret")
        await flush_rate(store, first, args.flush_batch)
        loaded = await store.load_last_k([u.user_id for u in first])
        again = next_session(first)
        returning: dict[str, dict[str, float]] = {}
        samples: dict[str, list[float]] = {"all rows": [], "stored= (new rows only)": []}
        for round_ in range(args.rounds):
            for case in samples if round_ % 2 == 0 else reversed(list(samples)):
                stored = loaded if case.startswith("stored") else None
                samples[case].append(await flush_rate(store, again, args.flush_batch, stored))
        for case, case_rates in samples.items():
            stored = loaded if case.startswith("stored") else None
            per_user = cql_rows(again, "blocks", stored) / len(again)
            returning[case] = {
                "users_per_s": round(statistics.median(case_rates)),
                "rows_per_s": round(statistics.median(case_rates) * per_user),
                "cql_rows_per_user": round(per_user, 2),
            }

        everyone = [u.user_id for u in first]
        sample = random.Random(5).choices(everyone, k=args.samples)
        rehydrate = await rehydration(store, sample)
        bulk = await bulk_load_rate(store, everyone)
        await store.close()
        return {
            "flush": flush,
            "returning": returning,
            "rehydrate": percentiles(rehydrate),
            "bulk_load_users_per_s": round(bulk),
            "sample_user_ids": everyone[: args.samples],
        }

    measured = asyncio.run(measure())
    sync = percentiles(sync_reads(session, measured.pop("sample_user_ids")))
    return {
        "users": args.users,
        "flush_batch_users": args.flush_batch,
        "rounds": args.rounds,
        "max_in_flight": settings.cql_max_in_flight,
        **measured,
        "sync_read": sync,
        "targets": {"flush_users_per_s": 2000, "rehydrate_p99_ms": 20},
        "cql_server": f"{settings.cql_hosts}:{settings.cql_port}",
        "driver": f"scylla-driver {metadata.version('scylla-driver')}",
        "python": platform.python_version(),
    }


if __name__ == "__main__":
    raise SystemExit(main())
