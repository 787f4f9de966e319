"""Benchmark: the CQL cold tier (`sinks.cold_store`) against the running local stack.

Measures, in its own keyspace (created, migrated and dropped here):

- flush: `write_snapshots` for users with ~10 items per type across 5 types, in calls of
  `--flush-batch` users (as the worker flushes ended sessions), beside a baseline of the
  same writes with one INSERT per history row (no per-partition batches);
- re-hydration: `load_last_k([user])` latency for single users, one at a time, beside the
  driver's synchronous `session.execute` of the same prepared read (the floor);
- bulk load: `load_last_k` of every user in one call.

Prints a table and writes bench/results/cold_store.json. Targets: flush >= 2,000 users/s,
re-hydration p99 <= 20 ms. The machine is shared: compare figures within one run only.

    .venv/bin/python bench/cold_store_bench.py [--users N] [--flush-batch N] [--samples N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sinks.cold_store as cold_store_module  # noqa: E402
from infra.migrate import apply_migrations  # noqa: E402
from schemas.events import EventType  # noqa: E402
from sinks.cold_store import CqlColdStore  # noqa: E402
from sinks.cql import connect, driver_name  # noqa: E402
from streams.logic.lastk import UserLastK, merge_items  # noqa: E402
from streams.settings import Settings  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "cold_store.json"
TYPES = [
    EventType.VIEW,
    EventType.CLICK,
    EventType.ADD_TO_CART,
    EventType.WISHLIST,
    EventType.ORDER,
]
ITEMS_PER_TYPE = 10


def snapshots(count: int, tag: str, seed: int = 11) -> list[UserLastK]:
    """Users with ITEMS_PER_TYPE items in each of 5 types, from the last hour."""
    rnd = random.Random(seed)
    now_ms = int(time.time() * 1000)
    users = []
    for i in range(count):
        snapshot = UserLastK(f"{tag}-u{i:07d}")
        for event_type in TYPES:
            items = [
                (f"p{rnd.randrange(1_000_000):07d}", now_ms - rnd.randrange(3_600_000))
                for _ in range(ITEMS_PER_TYPE)
            ]
            snapshot.items[event_type] = merge_items(items, [], keep=ITEMS_PER_TYPE)
        users.append(snapshot)
    return users


async def flush_rate(store: CqlColdStore, users: list[UserLastK], batch: int) -> float:
    """Users per second through write_snapshots, `batch` users per call."""
    await store.open()
    started = time.perf_counter()
    for offset in range(0, len(users), batch):
        await store.write_snapshots(users[offset : offset + batch])
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
    args = parser.parse_args(argv)
    if min(args.users, args.flush_batch, args.samples) <= 0:
        parser.error("--users, --flush-batch and --samples must be positive")

    tag = uuid.uuid4().hex[:8]
    settings = Settings.load(cql_keyspace=f"bench_cold_{tag}")
    cluster, session = connect(settings)
    try:
        apply_migrations(session, settings)
        result = run(session, settings, tag, args)
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {settings.cql_keyspace}")
        cluster.shutdown()

    width = 52
    rows = [
        ("flush, per-partition batches (ours)", f"{result['flush_users_per_s']:,.0f} users/s"),
        (
            "flush, one INSERT per row (baseline)",
            f"{result['baseline_flush_users_per_s']:,.0f} users/s",
        ),
        ("  ours, history rows written", f"{result['flush_rows_per_s']:,.0f} rows/s"),
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
    print(f"{'measurement':<{width}} {'value':>16}")
    print(f"{'-' * width} {'-' * 16}")
    for name, value in rows:
        print(f"{name:<{width}} {value:>16}")
    print(
        f"users={args.users} x {len(TYPES)} types x {ITEMS_PER_TYPE} items, "
        f"{args.flush_batch} users per call, max_in_flight={settings.cql_max_in_flight}; "
        f"targets: flush >= 2,000 users/s, re-hydration p99 <= 20 ms"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


def run(session: Any, settings: Settings, tag: str, args: argparse.Namespace) -> dict[str, Any]:
    users = snapshots(args.users, tag)
    baseline_users = snapshots(args.users, f"{tag}b", seed=12)

    async def measure() -> dict[str, Any]:
        store = CqlColdStore(
            session,
            history_ttl_s=settings.cold_history_ttl_s,
            max_in_flight=settings.cql_max_in_flight,
        )
        ours = await flush_rate(store, users, args.flush_batch)
        batch_rows = cold_store_module.HISTORY_BATCH_ROWS
        cold_store_module.HISTORY_BATCH_ROWS = 1  # every history row its own INSERT
        try:
            baseline = await flush_rate(store, baseline_users, args.flush_batch)
        finally:
            cold_store_module.HISTORY_BATCH_ROWS = batch_rows
        sample = random.Random(5).choices([u.user_id for u in users], k=args.samples)
        rehydrate = await rehydration(store, sample)
        bulk = await bulk_load_rate(store, [u.user_id for u in users])
        await store.close()
        return {
            "flush_users_per_s": round(ours),
            "flush_rows_per_s": round(ours * len(TYPES) * ITEMS_PER_TYPE),
            "baseline_flush_users_per_s": round(baseline),
            "rehydrate": percentiles(rehydrate),
            "bulk_load_users_per_s": round(bulk),
        }

    measured = asyncio.run(measure())
    sync = percentiles(sync_reads(session, [u.user_id for u in users[: args.samples]]))
    return {
        "users": args.users,
        "types": len(TYPES),
        "items_per_type": ITEMS_PER_TYPE,
        "flush_batch_users": args.flush_batch,
        "max_in_flight": settings.cql_max_in_flight,
        **measured,
        "sync_read": sync,
        "targets": {"flush_users_per_s": 2000, "rehydrate_p99_ms": 20},
        "cql_server": f"{settings.cql_hosts}:{settings.cql_port}",
        "driver": driver_name(),
        "python": platform.python_version(),
    }


if __name__ == "__main__":
    raise SystemExit(main())
