"""What one trigger costs the feed ranker (`streams.ranker.FeedRanker.rank`), in process,
on the local single Redis, one at a time and RANK_BATCH at a time (`rank_many`).

Set-up: the generator's catalog (50,000 products, 200 categories) is loaded, and a stream
of synthetic events goes through the feature store and the hot tier, so users have
last-k lists and affinities and categories have trending products. Then one trigger per
user, one at a time: each merges up to 500 candidates (`CandidateBudget.total`), reads
their catalog items and features, scores them with a LightGBM model trained by the
training job on generated traffic of the same world (`jobs.train`), re-ranks and writes
the feed. Baselines in the same run: the same triggers ranked by popularity (no model),
and the floor under any ranker, the feed write alone (same users, same feed size). Also
timed: LightGBM scoring alone for 500 candidates (`LoadedModel.score`). Prints a table and
writes bench/results/ranker.json.

    .venv/bin/python bench/ranker_bench.py [--events N] [--triggers N] [--train-events N]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from harness import Table, ensure_stack, percentiles, write_results

from jobs.catalog import generated_items, load_items
from jobs.seed import apply_events
from jobs.traffic import TrafficParams, simulate
from jobs.traffic.catalog import Catalog
from jobs.train import run_training
from schemas.features import FeatureConfig
from schemas.feed_layout import Feed
from schemas.triggers import RankTrigger, Reason
from sinks.model_store import ModelStore
from streams.bootstrap import (
    build_catalog_store,
    build_feature_store,
    build_feed_store,
    build_hot_store,
    build_redis,
)
from streams.logic.candidates import CandidateBudget
from streams.logic.ranking import FEATURES
from streams.models import LoadedModel, ModelSlot
from streams.ranker import RANK_BATCH, FeedRanker, quiet_collector
from streams.settings import Settings

PARAMS = TrafficParams(seed=11, users=20_000)
WARM_UP = 500
BUDGET = CandidateBudget(total=500, reengage=40, affinity=250, new=30, explore=30)


async def prepare(settings: Settings, events: int) -> list[str]:
    """Load the catalog and a stream's features and last-k; returns the users seen."""
    params = PARAMS
    catalog_store = build_catalog_store(settings)
    features = build_feature_store(settings)
    hot = build_hot_store(settings)
    try:
        items = list(generated_items(Catalog.build(params)))
        await load_items(catalog_store, items, len(items), "bench")
        start = int(time.time() * 1000) - 3_600_000
        stream = list(itertools.islice(simulate(params, start), events))
        await apply_events(stream, features, hot)
        return sorted({e.user_id for e in stream})
    finally:
        await catalog_store.close()
        await features.close()
        await hot.close()


def train(params: TrafficParams, events: int, directory: str, *, compiled: bool) -> ModelSlot:
    """A model of the bench's world, trained by the training job, loaded into a slot."""
    store = ModelStore(directory)
    start = int(time.time() * 1000) - int(events / 20 * 1000) - 7_200_000
    log = list(itertools.islice(simulate(dataclasses.replace(params, rate=20.0), start), events))
    catalog = {item.product_id: item for item in generated_items(Catalog.build(params))}
    trained = run_training(log, catalog, FeatureConfig(), store, progress=False)
    slot = ModelSlot(store, compile=compiled)

    async def load() -> None:
        await slot.load_now()
        await slot.compiled()

    asyncio.run(load())
    assert slot.version == trained.version
    return slot


def score_alone(slot: ModelSlot, rows: Any, repeat: int = 2_000) -> dict[str, float]:
    model = slot.model
    assert model is not None
    times: list[float] = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        model.score(rows)
        times.append((time.perf_counter() - t0) * 1000)
    return percentiles(times)


async def measure(
    settings: Settings, users: list[str], slot: ModelSlot, first_sequence: int, batch: int = 1
) -> dict[str, Any]:
    """Rank one trigger per user, `batch` of them to a `rank_many` call (1: `rank`, as a
    ranker that keeps up does; more: as one that is behind does); a trigger's time is
    its call's."""
    client = build_redis(settings)
    ranker = FeedRanker(
        hot_store=build_hot_store(settings, client),
        features=build_feature_store(settings, client),
        catalog=build_catalog_store(settings, client),
        feeds=build_feed_store(settings, client),
        budget=BUDGET,
        models=slot,
    )
    floor = build_feed_store(settings, client)
    ranked_ms: list[float] = []
    floor_ms: list[float] = []
    candidates: list[int] = []
    quiet_collector()  # as the ranker's agent does when it starts
    try:
        # Warm up as a running ranker is: the shared view read, catalog items and product
        # features cached (the same users again below, with later sequences).
        for sequence, user in enumerate(users[:WARM_UP], first_sequence - WARM_UP):
            await ranker.rank(trigger(user, sequence))
        began, cpu_began = time.perf_counter(), time.process_time()
        numbered = list(enumerate(users, first_sequence + 1))
        for i in range(0, len(numbered), batch):
            chunk = numbered[i : i + batch]
            t0 = time.perf_counter()
            feeds = await ranker.rank_many([trigger(user, sequence) for sequence, user in chunk])
            took = (time.perf_counter() - t0) * 1000
            for (_sequence, user), feed in zip(chunk, feeds, strict=True):
                ranked_ms.append(took)
                assert feed is not None and feed.products, user
                candidates.append(len(feed.products))
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu_began
        for sequence, user in enumerate(users, first_sequence + 10**9):
            t0 = time.perf_counter()
            await floor.write(floor_feed(user, sequence))
            floor_ms.append((time.perf_counter() - t0) * 1000)
    finally:
        await client.aclose()
    return {
        "rank": percentiles(ranked_ms),
        "floor": percentiles(floor_ms),
        "reranks_per_s": len(users) / elapsed,
        "cpu_ms_per_trigger": cpu / len(users) * 1000,
        "feed_length_mean": statistics.mean(candidates),
        "candidates_mean": ranker.counters.candidates / max(ranker.counters.written, 1),
        "model": slot.version,
        "counters": {
            "written": ranker.counters.written,
            "scored": ranker.counters.scored,
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
    parser.add_argument(
        "--train-events", type=int, default=150_000, help="events the model trains on (150000)"
    )
    args = parser.parse_args(argv)
    ensure_stack(print)
    settings = Settings.load().model_copy(
        update={"redis_key_prefix": f"branker-{uuid.uuid4().hex[:8]}"}
    )
    with tempfile.TemporaryDirectory() as models:
        print(f"training a model on {args.train_events:,} generated events ...", flush=True)
        compiled = train(PARAMS, args.train_events, models, compiled=True)
        assert compiled.model is not None
        plain = ModelSlot(None, model=LoadedModel(compiled.model.version, compiled.model.booster))

        async def run() -> dict[str, Any]:
            print(f"set-up: catalog and {args.events:,} events through the features ...")
            users = (await prepare(settings, args.events))[: args.triggers]
            print(
                f"ranking {len(users):,} triggers one at a time, three ways: the compiled "
                f"model, LightGBM itself, popularity; then {RANK_BATCH} at a time, compiled"
            )
            try:
                return {
                    "compiled": await measure(settings, users, compiled, 10**6),
                    "lightgbm": await measure(settings, users, plain, 2 * 10**9),
                    "popularity": await measure(settings, users, ModelSlot(None), 4 * 10**9),
                    # Sequences above every earlier run's (and its floor's): not stale.
                    "compiled_batched": await measure(
                        settings, users, compiled, 6 * 10**9, batch=RANK_BATCH
                    ),
                }
            finally:
                client = build_redis(settings)
                keys = [k async for k in client.scan_iter(match=f"{settings.redis_key_prefix}:*")]
                for i in range(0, len(keys), 1_000):
                    await client.unlink(*keys[i : i + 1_000])
                await client.aclose()

        result = asyncio.run(run())
        rows = np.random.default_rng(7).normal(0, 10, (500, len(FEATURES)))
        result["score_500_compiled"] = score_alone(compiled, rows)
        result["score_500_lightgbm"] = score_alone(plain, rows)
    print_table(result)
    print(f"wrote {write_results('ranker', result)}")
    return 0


def print_table(result: dict[str, Any]) -> None:
    fast, slow, popular = result["compiled"], result["lightgbm"], result["popularity"]
    table = Table("feed ranker: one trigger at a time, one process, single Redis, 500 candidates")
    table.add("rank one trigger (compiled model), p50", fast["rank"]["p50_ms"], "ms")
    table.add(
        "rank one trigger (compiled model), p99", fast["rank"]["p99_ms"], "ms", "target <= 15"
    )
    table.add("re-ranks per second (compiled model)", fast["reranks_per_s"], "/s", "target >= 200")
    table.add("CPU per trigger (compiled model)", fast["cpu_ms_per_trigger"], "ms")
    batched = result["compiled_batched"]
    table.add(
        f"re-ranks per second, {RANK_BATCH} at a time (compiled)",
        batched["reranks_per_s"],
        "/s",
        "a ranker that is behind",
    )
    table.add(
        f"CPU per trigger, {RANK_BATCH} at a time (compiled)", batched["cpu_ms_per_trigger"], "ms"
    )
    table.add(
        f"rank {RANK_BATCH} triggers at once (compiled), p99", batched["rank"]["p99_ms"], "ms"
    )
    table.add("rank one trigger (LightGBM), p50", slow["rank"]["p50_ms"], "ms", "same model")
    table.add("rank one trigger (LightGBM), p99", slow["rank"]["p99_ms"], "ms")
    table.add("re-ranks per second (LightGBM)", slow["reranks_per_s"], "/s")
    table.add(
        "scoring alone, 500 rows, compiled, p50", result["score_500_compiled"]["p50_ms"], "ms"
    )
    table.add(
        "scoring alone, 500 rows, LightGBM, p50", result["score_500_lightgbm"]["p50_ms"], "ms"
    )
    table.add(
        "scoring alone, 500 rows, LightGBM, p99", result["score_500_lightgbm"]["p99_ms"], "ms"
    )
    table.add("rank by popularity (no model), p50", popular["rank"]["p50_ms"], "ms", "same run")
    table.add("rank by popularity (no model), p99", popular["rank"]["p99_ms"], "ms")
    table.add("re-ranks per second (popularity)", popular["reranks_per_s"], "/s")
    table.add("feed write alone, p50", fast["floor"]["p50_ms"], "ms", "the floor, same run")
    table.add("feed write alone, p99", fast["floor"]["p99_ms"], "ms")
    table.add("candidates per trigger (mean)", fast["candidates_mean"], "products")
    table.add("feeds scored by the model", fast["counters"]["scored"], "feeds", fast["model"])
    table.print()


if __name__ == "__main__":
    sys.exit(main())
