"""What one trigger costs the feed ranker (`streams.ranker.FeedRanker.rank`), in process,
on the local single Redis.

Set-up: the generator's catalog (50,000 products, 200 categories) is loaded, and a stream
of synthetic events goes through the feature store and the hot tier, so users have
last-k lists and affinities and categories have trending products. Then one trigger per
user, one at a time: each merges up to 500 candidates (`CandidateBudget.total`), reads
their catalog items and features, ranks, re-ranks and writes the feed. The baseline in
the same run is the floor under any ranker: the feed write alone (the same users, the
same feed size). Prints a table and writes bench/results/ranker.json.

    .venv/bin/python bench/ranker_bench.py [--events N] [--triggers N]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Table, ensure_stack, percentiles, write_results

from jobs.catalog import generated_items, load_items
from jobs.traffic import TrafficParams, simulate
from jobs.traffic.catalog import Catalog
from schemas.feature_layout import CountedEvent
from schemas.features import plan_features
from schemas.feed_layout import Feed
from schemas.hot_layout import interaction_of
from schemas.triggers import RankTrigger, Reason
from streams.bootstrap import (
    build_catalog_store,
    build_feature_store,
    build_feed_store,
    build_hot_store,
    build_redis,
)
from streams.logic.candidates import CandidateBudget
from streams.ranker import FeedRanker
from streams.settings import Settings

BUDGET = CandidateBudget(total=500, reengage=40, affinity=250, new=30, explore=30)


async def prepare(settings: Settings, events: int) -> list[str]:
    """Load the catalog and a stream's features and last-k; returns the users seen."""
    params = TrafficParams(seed=11, users=20_000)
    catalog_store = build_catalog_store(settings)
    features = build_feature_store(settings)
    hot = build_hot_store(settings)
    try:
        items = list(generated_items(Catalog.build(params)))
        await load_items(catalog_store, items, len(items), "bench")
        start = int(time.time() * 1000) - 3_600_000
        stream = list(itertools.islice(simulate(params, start), events))
        watermarks: dict[int, int] = {}
        for position in range(0, len(stream), 2_000):
            batch = stream[position : position + 2_000]
            counted = [
                CountedEvent(
                    e.user_id,
                    e.event_type,
                    e.event_time_ms,
                    e.product_id,
                    e.category_id,
                    0,
                    position + i,
                    e.event_id,
                )
                for i, e in enumerate(batch)
            ]
            plan = plan_features(counted, watermarks, features.config)
            watermarks = plan.watermarks
            await features.apply(plan)
            interactions = [i for e in batch if (i := interaction_of(e)) is not None]
            activity = {0: {e.user_id: e.event_time_ms for e in batch}}
            await hot.record(interactions, activity, counted=len(interactions))
        return sorted({e.user_id for e in stream})
    finally:
        await catalog_store.close()
        await features.close()
        await hot.close()


async def measure(settings: Settings, users: list[str]) -> dict[str, Any]:
    client = build_redis(settings)
    ranker = FeedRanker(
        hot_store=build_hot_store(settings, client),
        features=build_feature_store(settings, client),
        catalog=build_catalog_store(settings, client),
        feeds=build_feed_store(settings, client),
        budget=BUDGET,
    )
    floor = build_feed_store(settings, client)
    ranked_ms: list[float] = []
    floor_ms: list[float] = []
    candidates: list[int] = []
    try:
        await ranker.rank(trigger(users[0], 1))  # the shared view's first read
        began = time.perf_counter()
        for sequence, user in enumerate(users, 2):
            t0 = time.perf_counter()
            feed = await ranker.rank(trigger(user, sequence))
            ranked_ms.append((time.perf_counter() - t0) * 1000)
            assert feed is not None and feed.products, user
            candidates.append(len(feed.products))
        elapsed = time.perf_counter() - began
        for sequence, user in enumerate(users, 10**9):
            t0 = time.perf_counter()
            await floor.write(floor_feed(user, sequence))
            floor_ms.append((time.perf_counter() - t0) * 1000)
    finally:
        await client.aclose()
    return {
        "rank": percentiles(ranked_ms),
        "floor": percentiles(floor_ms),
        "reranks_per_s": len(users) / elapsed,
        "feed_length_mean": statistics.mean(candidates),
        "candidates_mean": ranker.counters.candidates / max(ranker.counters.written, 1),
        "counters": {
            "written": ranker.counters.written,
            "fallbacks": ranker.counters.fallbacks,
            "channels": ranker.counters.channels,
        },
    }


def trigger(user: str, sequence: int) -> RankTrigger:
    now = int(time.time() * 1000)
    return RankTrigger(user, sequence, Reason.HIGH_INTENT, now, 0, None, now)


def floor_feed(user: str, sequence: int) -> Feed:
    products = [f"p{i:07d}" for i in range(100)]
    return Feed(user, sequence, products, ["trending"] * 100, "popularity", True, "x", 0, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000, help="events of set-up (60000)")
    parser.add_argument("--triggers", type=int, default=5_000, help="triggers timed (5000)")
    args = parser.parse_args(argv)
    ensure_stack(print)
    settings = Settings.load().model_copy(
        update={"redis_key_prefix": f"branker-{uuid.uuid4().hex[:8]}"}
    )

    async def run() -> dict[str, Any]:
        print(f"set-up: catalog and {args.events:,} events through the features ...", flush=True)
        users = await prepare(settings, args.events)
        print(f"ranking {min(args.triggers, len(users)):,} triggers one at a time ...", flush=True)
        try:
            return await measure(settings, users[: args.triggers])
        finally:
            client = build_redis(settings)
            keys = [k async for k in client.scan_iter(match=f"{settings.redis_key_prefix}:*")]
            for i in range(0, len(keys), 1_000):
                await client.unlink(*keys[i : i + 1_000])
            await client.aclose()

    result = asyncio.run(run())
    rank, floor = result["rank"], result["floor"]
    table = Table("feed ranker: one trigger at a time, one process, single Redis")
    table.add(
        "rank one trigger, p50", rank["p50_ms"], "ms", "popularity ranking, up to 500 candidates"
    )
    table.add("rank one trigger, p99", rank["p99_ms"], "ms", "target <= 15 ms")
    table.add("re-ranks per second, one process", result["reranks_per_s"], "/s", "target >= 200")
    table.add("feed write alone, p50", floor["p50_ms"], "ms", "the floor, same run")
    table.add("feed write alone, p99", floor["p99_ms"], "ms")
    table.add("candidates per trigger (mean)", result["candidates_mean"], "products")
    table.add("feed length (mean)", result["feed_length_mean"], "products")
    table.print()
    print(f"wrote {write_results('ranker', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
