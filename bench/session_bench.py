"""Session tiering: flush to the cold tier, re-hydration, and Redis bytes per active user.

In-process, with the real adapters from `streams.bootstrap` on an isolated key prefix and
a freshly migrated keyspace (no worker, no Kafka):

  (a) flush: N users get a realistic last-k in the hot tier (`RedisHotStore.record` with
      `activity`, as the worker writes it: ~20 views, 5 clicks, 2 carts, 1 wishlist,
      sometimes an order), then `SessionKeeper.flush_ended` runs with a clock that has
      ended every session, until all are cold. Baseline: `RedisSessions.snapshots` of the
      same users in the same chunks, the Redis read alone (the ceiling without the cold
      write and the eviction).
  (b) re-hydration: for M of the now-cold users, one at a time (a returning user's first
      batch), `SessionKeeper.hydrate([(partition, user)])` + the `record` that applies it
      with one new view. Baseline, interleaved on other cold users: one
      `CqlColdStore.load_last_k([user])` alone.
  (c) memory, after (a)'s population and before the flush: `MEMORY USAGE` of sampled users'
      keys (every type + version key, plus their share of the active sets), `OBJECT
      ENCODING` of their sorted sets, and the listpack limits; the same for a few users
      whose every type is full at the default k (the worst case). Baseline: the raw bytes
      held (member bytes + an 8-byte score per item).

Writes bench/results/session.json. Targets: flush >= 2,000 users/s, re-hydration p99
<= 20 ms.

    .venv/bin/python bench/session_bench.py [--users 5000] [--rehydrate 1000] [--sample 200]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    ROOT,
    Isolated,
    Table,
    ensure_stack,
    percentiles,
    wait_until_quiet,
    write_results,
)

from schemas.cold_layout import day_of
from schemas.events import PRODUCT_EVENT_TYPES, EventType
from schemas.hot_layout import Interaction, active_key, hot_key, version_key
from sinks.cold_store import CqlColdStore
from sinks.hot_sessions import EndedSession
from sinks.hot_store import HotUsers, RedisHotStore
from streams.bootstrap import build_hot_store, build_redis, build_session_keeper
from streams.sessions import SessionKeeper
from streams.settings import Settings

TARGET_FLUSH_USERS_PER_S = 2000
TARGET_REHYDRATE_P99_MS = 20.0
#: A realistic session's last-k: items per type (an order only for some users).
SHAPE = {EventType.VIEW: 20, EventType.CLICK: 5, EventType.ADD_TO_CART: 2, EventType.WISHLIST: 1}
ORDER_SHARE = 0.3
USERS_PER_WRITE = 100  # ~2,900 interactions per record call, about one worker batch
WARMUP_USERS = 20


@dataclass
class Population:
    users: list[str]
    partition: dict[str, int]
    items: int  # interactions held in the hot tier
    types: int  # (user, type) sets held
    blocks: int = 0  # (user, type, day) history blocks a flush writes


def partition_of(user_id: str, partitions: int) -> int:
    return zlib.crc32(user_id.encode()) % partitions


def user_interactions(
    user_id: str, shape: dict[EventType, int], rnd: random.Random, now_ms: int
) -> list[Interaction]:
    """Distinct products per type, distinct times within the last hour."""
    rows = []
    start = now_ms - 3_600_000 + rnd.randrange(3_000_000)
    for event_type, count in shape.items():
        for n, product in enumerate(rnd.sample(range(50_000), count)):
            at = start + rnd.randrange(600_000) + n
            rows.append(Interaction(user_id, event_type, f"p{product:06d}", at))
    return rows


async def populate(
    store: RedisHotStore,
    tag: str,
    count: int,
    *,
    shape_of: Callable[[random.Random], dict[EventType, int]],
    partitions: int,
    seed: int,
) -> Population:
    """Write `count` users through `record` with activity, USERS_PER_WRITE per call."""
    rnd = random.Random(seed)
    now_ms = int(time.time() * 1000)
    pop = Population([], {}, 0, 0)
    for offset in range(0, count, USERS_PER_WRITE):
        batch: list[Interaction] = []
        activity: dict[int, dict[str, int]] = {}
        for n in range(offset, min(count, offset + USERS_PER_WRITE)):
            user = f"{tag}{n:07d}"
            shape = shape_of(rnd)
            rows = user_interactions(user, shape, rnd, now_ms)
            partition = partition_of(user, partitions)
            activity.setdefault(partition, {})[user] = max(r.event_time_ms for r in rows)
            batch.extend(rows)
            pop.users.append(user)
            pop.partition[user] = partition
            pop.items += len(rows)
            pop.types += len(shape)
            pop.blocks += len({(r.event_type, day_of(r.event_time_ms)) for r in rows})
        await store.record(batch, activity)
    return pop


def realistic_shape(rnd: random.Random) -> dict[EventType, int]:
    return {**SHAPE, EventType.ORDER: 1} if rnd.random() < ORDER_SHARE else dict(SHAPE)


async def memory(client: Any, prefix: str, users: list[str]) -> dict[str, Any]:
    """Bytes of each user's own keys (every type + version), raw bytes, set encodings."""
    types = [t for t in EventType if t in PRODUCT_EVENT_TYPES]
    own = raw = 0
    encodings: Counter[str] = Counter()
    for user in users:
        keys = [hot_key(prefix, user, t) for t in types]
        async with client.pipeline(transaction=False) as pipe:
            for key in [*keys, version_key(prefix, user)]:
                pipe.memory_usage(key, samples=0)
            for key in keys:
                pipe.object("ENCODING", key)
                pipe.zrange(key, 0, -1)
            replies = await pipe.execute()
        own += sum(r or 0 for r in replies[: len(keys) + 1])
        pairs = zip(replies[len(keys) + 1 :: 2], replies[len(keys) + 2 :: 2], strict=True)
        for encoding, members in pairs:
            if encoding is not None:
                encodings[_text(encoding)] += 1
                raw += sum(len(m) + 8 for m in members)
    return {
        "sampled_users": len(users),
        "own_keys_bytes_per_user": round(own / len(users)),
        "raw_bytes_per_user": round(raw / len(users)),
        "encodings": dict(encodings),
    }


async def active_share(client: Any, prefix: str, partitions: int, users: int) -> float:
    """Bytes of the per-partition active sets divided by the users in them."""
    async with client.pipeline(transaction=False) as pipe:
        for partition in range(partitions):
            pipe.memory_usage(active_key(prefix, partition), samples=0)
        active = sum(r or 0 for r in await pipe.execute())
    return float(active / users)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def flush_all(keeper: SessionKeeper, pop: Population) -> float:
    """flush_ended with a wall clock far enough ahead that every session has ended."""
    wall_ms = int(time.time() * 1000)
    for user in pop.users:
        keeper.observe(pop.partition[user], wall_ms, wall_ms)
    later = wall_ms + keeper.gap_ms + keeper.idle_grace_ms + 3_600_000
    started = time.perf_counter()
    moved = await keeper.flush_ended(later)
    elapsed = time.perf_counter() - started
    if moved != len(pop.users):
        raise RuntimeError(f"flushed {moved} of {len(pop.users)} users")
    return elapsed


async def read_snapshots(keeper: SessionKeeper, pop: Population) -> float:
    """Baseline: the Redis read of every user's snapshot, in flush-sized chunks."""
    sessions = [EndedSession(u, pop.partition[u], 0) for u in pop.users]
    started = time.perf_counter()
    for offset in range(0, len(sessions), keeper.flush_batch):
        await keeper.hot.snapshots(sessions[offset : offset + keeper.flush_batch])
    return time.perf_counter() - started


async def rehydrate(
    keeper: SessionKeeper, store: RedisHotStore, pop: Population, samples: int
) -> tuple[list[float], list[float]]:
    """Per returning user: hydrate + record (ms); interleaved baseline: load_last_k alone."""
    rnd = random.Random(3)
    chosen = rnd.sample(pop.users, min(len(pop.users), 2 * samples + WARMUP_USERS))
    ours, floor = [], []
    for n, user in enumerate(chosen[: samples + WARMUP_USERS]):
        partition = pop.partition[user]
        now_ms = int(time.time() * 1000)
        started = time.perf_counter()
        hydration = await keeper.hydrate([(partition, user)])
        history = hydration.history.rows
        await store.record(
            [*history, Interaction(user, EventType.VIEW, "p-new", now_ms)],
            {partition: {user: now_ms}},
            counted=1,
            hot=HotUsers(hydration.hot, keeper.rehydrate),
            floors=hydration.history.floors,
        )
        took = (time.perf_counter() - started) * 1000
        if not history:
            raise RuntimeError(f"{user} came back from the cold tier empty")
        other = chosen[samples + WARMUP_USERS + n] if n < samples else None
        if other is not None:
            started = time.perf_counter()
            loaded = await keeper.cold.load_last_k([other])
            floor_took = (time.perf_counter() - started) * 1000
            if not loaded[other].items:
                raise RuntimeError(f"{other} came back from the cold tier empty")
        if n >= WARMUP_USERS:
            ours.append(took)
            if other is not None:
                floor.append(floor_took)
    return ours, floor


async def measure(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    client = build_redis(settings)
    store = build_hot_store(settings, client)
    keeper = build_session_keeper(settings, client)
    cold = keeper.cold
    assert isinstance(cold, CqlColdStore)
    full_store = RedisHotStore(client, f"{settings.redis_key_prefix}-full", settings.last_k)
    partitions = settings.events_partitions
    try:
        await cold.open()
        print(f"populating {args.users:,} users ...", flush=True)
        pop = await populate(
            store, "s", args.users, shape_of=realistic_shape, partitions=partitions, seed=1
        )

        def full_shape(_rnd: random.Random) -> dict[EventType, int]:
            return dict(settings.last_k)

        full = await populate(
            full_store, "f", args.sample, shape_of=full_shape, partitions=partitions, seed=2
        )
        sample = random.Random(4).sample(pop.users, min(args.sample, len(pop.users)))
        share = await active_share(client, settings.redis_key_prefix, partitions, len(pop.users))
        mem = await memory(client, settings.redis_key_prefix, sample)
        mem_full = await memory(client, f"{settings.redis_key_prefix}-full", full.users)
        for m in (mem, mem_full):
            m["active_set_share_bytes"] = round(share)
            m["bytes_per_user"] = round(m["own_keys_bytes_per_user"] + share)
        config: dict[Any, Any] = await client.config_get("zset-max-listpack-*")
        limits = {_text(k): int(v) for k, v in config.items()}
        print("snapshot read (baseline) ...", flush=True)
        read_s = await read_snapshots(keeper, pop)
        print("flush ...", flush=True)
        flush_s = await flush_all(keeper, pop)
        rows = pop.blocks + pop.types  # a history row per block, a snapshot row per type
        print(f"re-hydrating {args.rehydrate:,} users one at a time ...", flush=True)
        ours, floor = await rehydrate(keeper, store, pop, args.rehydrate)
    finally:
        await cold.close()
        await client.aclose()
    return {
        "users": len(pop.users),
        "items_per_user": round(pop.items / len(pop.users), 1),
        "flush_batch": keeper.flush_batch,
        "flush_users_per_s": round(len(pop.users) / flush_s),
        "flush_rows_per_s": round(rows / flush_s),
        "snapshot_read_users_per_s": round(len(pop.users) / read_s),
        "rehydrate": percentiles(ours),
        "load_last_k": percentiles(floor),
        "memory_realistic": mem,
        "memory_full_k": mem_full,
        "last_k": {t.value: k for t, k in settings.last_k.items()},
        "listpack_limits": limits,
        "targets": {
            "flush_users_per_s": TARGET_FLUSH_USERS_PER_S,
            "rehydrate_p99_ms": TARGET_REHYDRATE_P99_MS,
        },
    }


def report(r: dict[str, Any]) -> None:
    table = Table(
        f"sessions: {r['users']:,} users x ~{r['items_per_user']} items, "
        f"flush batch {r['flush_batch']}, default k {r['last_k']}"
    )
    table.add(
        "flush_ended: users moved to the cold tier",
        r["flush_users_per_s"],
        "users/s",
        f"Redis snapshot read alone: {r['snapshot_read_users_per_s']:,} users/s (ceiling)",
    )
    table.add(
        "flush_ended: CQL rows written", r["flush_rows_per_s"], "rows/s", "history + snapshot"
    )
    for q in ("p50", "p99", "max"):
        table.add(
            f"re-hydrate 1 user (hydrate + record), {q}",
            r["rehydrate"][f"{q}_ms"],
            "ms",
            f"load_last_k alone {q}: {r['load_last_k'][f'{q}_ms']:.2f} ms",
        )
    for label, mem in (
        ("realistic", r["memory_realistic"]),
        ("every type full", r["memory_full_k"]),
    ):
        table.add(
            f"Redis bytes per active user, {label}",
            mem["bytes_per_user"],
            "bytes",
            f"raw member+score bytes {mem['raw_bytes_per_user']:,}; "
            f"active-set share {mem['active_set_share_bytes']}",
        )
        table.add(f"  sorted-set encodings, {label}", str(mem["encodings"]), "", "")
    limits = r["listpack_limits"]
    table.add(
        "zset listpack limits (entries / value bytes)",
        f"{limits.get('zset-max-listpack-entries')} / {limits.get('zset-max-listpack-value')}",
        "",
        f"largest default k: {max(r['last_k'].values())}",
    )
    table.print()
    print(
        f"targets: flush >= {TARGET_FLUSH_USERS_PER_S:,} users/s, "
        f"re-hydration p99 <= {TARGET_REHYDRATE_P99_MS:.0f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Flush throughput, re-hydration latency and Redis bytes per user, "
        "each beside a same-run baseline (real adapters, isolated prefix and keyspace).",
        epilog="Writes bench/results/session.json. Needs the local stack (started if not up).",
    )
    parser.add_argument("--users", type=int, default=5000, help="users flushed (5000)")
    parser.add_argument("--rehydrate", type=int, default=1000, help="users re-hydrated (1000)")
    parser.add_argument("--sample", type=int, default=200, help="users sampled for memory (200)")
    args = parser.parse_args(argv)
    if min(args.users, args.rehydrate, args.sample) <= 0:
        parser.error("--users, --rehydrate and --sample must be positive")
    args.rehydrate = min(args.rehydrate, (args.users - WARMUP_USERS) // 2)
    if args.rehydrate <= 0:
        parser.error(f"--users must be at least {WARMUP_USERS + 2}")

    print("local stack ...", flush=True)
    ensure_stack()
    wait_until_quiet()
    iso = Isolated.create("session", topics=False)
    try:
        result = asyncio.run(measure(iso.settings, args))
    finally:
        iso.cleanup()
    report(result)
    path = write_results("session", result)
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
