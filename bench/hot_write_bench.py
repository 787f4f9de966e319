"""What the hot tier's batch write costs, and what its hot-user key check adds to it.

A batch's write (`RedisHotStore.record`) checks, inside its Lua call, that every user the
worker found hot (in the active set) still has a version key, so a user half-evicted by
an interrupted eviction is re-hydrated instead of written without history. This bench
times batch writes without the check (the baseline) and with it, in one run: pairs of
fresh batches of the same shape, one of each, which goes first alternating. On the single
Redis and on the 3-master Redis Cluster, at two batch sizes (a freshness-sized batch and
an ingest-sized one). Every user has their keys, as in production, so the check never
refuses a write. Prints a table and writes bench/results/hot_write.json.

    .venv/bin/python bench/hot_write_bench.py [--batches N] [--users N]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ROOT, Table, ensure_stack, write_results

from schemas.events import PRODUCT_EVENT_TYPES, EventType
from schemas.hot_layout import Interaction
from sinks.hot_store import HotUsers, RedisHotStore, Rehydrated
from sinks.redis_scripts import HotRedis
from streams.bootstrap import build_redis
from streams.settings import Settings, stack_cluster_url

#: Events per batch: about what a 5k/s stream delivers per fetch, and an ingest catch-up.
BATCH_SIZES = (500, 5_000)
PARTITIONS = 8
TYPES = sorted(PRODUCT_EVENT_TYPES)
T0 = 1_790_000_000_000


async def never_missing(users: Collection[str]) -> Rehydrated:
    raise RuntimeError(f"every user has keys in this bench, yet {sorted(users)[:3]} had none")


def batches(users: list[str], size: int, count: int, seed: int) -> list[list[Interaction]]:
    rnd = random.Random(seed)
    return [
        [
            Interaction(
                rnd.choice(users), rnd.choice(TYPES), f"p{rnd.randrange(5_000)}", T0 + n * 10**6 + i
            )
            for i in range(size)
        ]
        for n in range(count)
    ]


def activity_of(rows: list[Interaction]) -> dict[int, dict[str, int]]:
    activity: dict[int, dict[str, int]] = {}
    for row in rows:
        latest = activity.setdefault(hash(row.user_id) % PARTITIONS, {})
        latest[row.user_id] = max(latest.get(row.user_id, 0), row.event_time_ms)
    return activity


@dataclass
class Runs:
    """One batch size on one backend: write times (ms) without and with the check."""

    users_per_batch: float
    plain: list[float] = field(default_factory=list)
    checked: list[float] = field(default_factory=list)


async def measure(settings: Settings, users: int, count: int) -> dict[int, Runs]:
    """Per batch size: `count` batches written without the check and `count` with it,
    interleaved in pairs (which goes first alternates, so neither always meets a warmer
    Redis)."""
    client = build_redis(settings)
    store = RedisHotStore(client, settings.redis_key_prefix, settings.last_k)
    ids = [f"u{i:07d}" for i in range(users)]
    seed_rows = [Interaction(user, EventType.VIEW, "p0", T0) for user in ids]
    times: dict[int, Runs] = {}
    try:
        await store.record(seed_rows, activity_of(seed_rows))  # every user hot, with keys
        for size in BATCH_SIZES:
            # Every write gets a batch of its own (new events, real trimming): a batch
            # written twice would be a near no-op the second time.
            planned = [
                (rows, activity, {u for latest in activity.values() for u in latest})
                for rows in batches(ids, size, 2 * count, size)
                for activity in [activity_of(rows)]
            ]
            runs = times[size] = Runs(statistics.median(len(hot) for *_, hot in planned))
            for index, (rows, activity, users_hot) in enumerate(planned):
                # Pairs of batches; which variant goes first alternates from pair to pair.
                checked = (index % 2 == 0) == (index // 2 % 2 == 1)
                hot = HotUsers(users_hot, never_missing) if checked else None
                started = time.perf_counter()
                await store.record(rows, activity, hot=hot)
                took = (time.perf_counter() - started) * 1000
                (runs.checked if checked else runs.plain).append(took)
    finally:
        await cleanup(client, settings.redis_key_prefix)
        await client.aclose()
    return times


async def cleanup(client: HotRedis, prefix: str) -> None:
    """Delete the bench's keys (one key per UNLINK: on a cluster they span every slot)."""
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=5_000)]
    for start in range(0, len(keys), 1_000):
        async with client.pipeline(transaction=False) as pipe:
            for key in keys[start : start + 1_000]:
                pipe.execute_command("UNLINK", key)
            await pipe.execute()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=100, help="batches per size (default 100)")
    parser.add_argument("--users", type=int, default=2_000, help="distinct users (default 2000)")
    args = parser.parse_args(argv)
    if args.batches < 2 or args.users < 1:
        parser.error("--batches must be at least 2 and --users positive")

    ensure_stack(say=print)
    base = Settings.load()
    backends = {"single Redis": base.model_copy(update={"redis_key_prefix": _prefix()})}
    url = stack_cluster_url()
    if url:
        backends["Redis Cluster"] = base.model_copy(
            update={"redis_url": url, "redis_cluster": True, "redis_key_prefix": _prefix()}
        )
    else:
        print("no Redis Cluster in the stack's env file: measuring the single Redis only")

    table = Table(
        f"hot-tier batch write, {args.users:,} users all hot, median of {args.batches} batches",
        head=("backend", "events/batch", "users/batch", "no check ms", "checked ms", "added"),
        align="llrrrr",
    )
    measured: list[dict[str, object]] = []
    for name, settings in backends.items():
        for size, runs in asyncio.run(measure(settings, args.users, args.batches)).items():
            plain, checked = statistics.median(runs.plain), statistics.median(runs.checked)
            added = f"{checked / plain - 1:+.1%}"
            table.add_row(name, size, round(runs.users_per_batch), plain, checked, added)
            measured.append(
                {
                    "backend": name,
                    "events_per_batch": size,
                    "users_per_batch": runs.users_per_batch,
                    "plain_median_ms": round(plain, 3),
                    "checked_median_ms": round(checked, 3),
                    "plain_ms": [round(t, 3) for t in runs.plain],
                    "checked_ms": [round(t, 3) for t in runs.checked],
                }
            )
    table.print()
    path = write_results(
        "hot_write", {"users": args.users, "batches": args.batches, "runs": measured}
    )
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


def _prefix() -> str:
    return f"bhotwrite-{uuid.uuid4().hex[:8]}"


if __name__ == "__main__":
    raise SystemExit(main())
