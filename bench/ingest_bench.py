"""Ingest throughput: events topic -> one `signals worker` -> Redis, against the local stack.

Produces N synthetic events onto a fresh topic (production partition count), then measures
in the same run:

  (a) the ceiling: a raw aiokafka consumer reading the whole topic (and the same consumer
      also decoding + validating every event, the least a Python worker must do);
  (b) one worker subprocess (its own consumer group and Redis key prefix) from start until
      every interaction is visible in Redis (`<prefix>:stats:applied`). The sustained rate
      runs from the first applied batch to the last, so startup and group join are excluded.

`--compare REF` also runs the worker from git REF (e.g. HEAD) on the same topic, for a
before/after in one run. Prints a table and writes bench/results/ingest.json.

    .venv/bin/python bench/ingest_bench.py [--events N] [--compare HEAD] [--env K=V ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    ROOT,
    Isolated,
    Produced,
    Table,
    WorkerProcess,
    cpu_seconds,
    end_offsets,
    ensure_stack,
    exported_tree,
    parse_env,
    produce,
    raw_aiokafka_consume,
    wait_until_quiet,
    write_results,
)

from sinks.connectivity import redis_options
from streams.settings import Settings

POLL_S = 0.02


@dataclass
class WorkerRun:
    label: str
    events: int
    interactions: int
    startup_s: float  # worker start -> first applied batch visible
    sustained_s: float  # first applied batch -> all applied
    middle_s: float  # 10% -> 90% of interactions applied
    cpu_s: float  # worker CPU while applying (first applied -> all applied)
    triggers: int = 0  # rank-refresh triggers the run published
    feature_bytes: dict[str, float] | None = None  # mean Redis bytes per user / product

    @property
    def events_per_s(self) -> float:
        """Sustained rate in events (interactions scaled by the events/interactions ratio)."""
        return self.interactions_per_s * self.events / self.interactions

    @property
    def interactions_per_s(self) -> float:
        return self.interactions / self.sustained_s if self.sustained_s > 0 else float("nan")

    @property
    def middle_events_per_s(self) -> float:
        return 0.8 * self.events / self.middle_s if self.middle_s > 0 else float("nan")

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_s / self.events * 1e6

    def summary(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "events_per_s": round(self.events_per_s),
            "interactions_per_s": round(self.interactions_per_s),
            "middle_events_per_s": round(self.middle_events_per_s),
            "cpu_us_per_event": round(self.cpu_us_per_event, 1),
            "triggers_per_1000_events": round(1000 * self.triggers / self.events, 1),
        }


def run_worker(
    iso: Isolated,
    produced_events: int,
    interactions: int,
    *,
    label: str,
    source: Path,
    extra_env: dict[str, str],
    timeout_s: float,
) -> WorkerRun:
    """One worker with its own consumer group and key prefix over the shared topic."""
    import redis  # noqa: PLC0415

    from infra.topics import apply_topics, declared_topics, delete_topics  # noqa: PLC0415

    suffix = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")
    env = {
        **iso.env,
        "SIGNALS_APP_ID": f"{iso.env['SIGNALS_APP_ID']}-{suffix}",
        "SIGNALS_REDIS_KEY_PREFIX": f"{iso.env['SIGNALS_REDIS_KEY_PREFIX']}-{suffix}",
        "SIGNALS_TRIGGER_TOPIC": f"{iso.env['SIGNALS_TRIGGER_TOPIC']}-{suffix}",
        **extra_env,
    }
    settings = Settings.load(
        **{k.removeprefix("SIGNALS_").lower(): v for k, v in env.items() if k != "SIGNALS_LAST_K"}
    )
    apply_topics(settings)  # the group's Faust leader topic; the events topic exists already
    stats_key = f"{settings.redis_key_prefix}:stats:applied"
    client = redis.Redis.from_url(settings.redis_url, **redis_options(settings))
    try:
        with WorkerProcess(env, label=suffix, source=source) as worker:
            started = time.perf_counter()
            deadline = started + timeout_s
            first_t = t10 = t90 = 0.0
            first_count = 0
            cpu_first = 0.0
            while True:
                now = time.perf_counter()
                count = int(client.get(stats_key) or 0)
                if count and not first_t:
                    first_t, first_count = now, count
                    cpu_first = cpu_seconds(worker.pid)
                if not t10 and count >= 0.1 * interactions:
                    t10 = now
                if not t90 and count >= 0.9 * interactions:
                    t90 = now
                if count >= interactions:
                    cpu_last = cpu_seconds(worker.pid)
                    break
                if not worker.alive():
                    raise RuntimeError(f"worker {label} exited; log:\n{worker.tail()}")
                if now > deadline:
                    raise RuntimeError(
                        f"worker {label}: {count}/{interactions} applied after {timeout_s:.0f}s;"
                        f" log:\n{worker.tail()}"
                    )
                time.sleep(POLL_S)
            # Everything applied: the last batch's triggers are out once it commits.
            time.sleep(max(1.0, 2 * settings.commit_interval_s))
            triggers = end_offsets(settings, settings.trigger_topic)
        # The first poll that sees a count sees a whole batch already applied: scale the
        # events to the part applied after it.
        remaining = interactions - first_count
        return WorkerRun(
            label=label,
            events=round(produced_events * remaining / interactions),
            interactions=remaining,
            startup_s=first_t - started,
            sustained_s=now - first_t,
            middle_s=t90 - t10,
            cpu_s=cpu_last - cpu_first,
            triggers=triggers,
            feature_bytes=_feature_bytes(client, settings) if settings.features_enabled else None,
        )
    finally:
        client.close()
        iso.cleanup_redis()  # the next run starts on a Redis without this run's keys
        delete_topics(
            settings, [s for s in declared_topics(settings) if s.name == settings.trigger_topic]
        )


def _feature_bytes(client: Any, settings: Settings, sample: int = 500) -> dict[str, float]:
    """Mean Redis bytes (MEMORY USAGE) of the feature keys per user (hash and affinity
    set) and per product, over a sample of each."""
    prefix = settings.redis_key_prefix

    def sampled(pattern: str) -> list[bytes]:
        keys: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=1000):
            keys.append(key)
            if len(keys) >= sample:
                break
        return keys

    def usage(key: bytes | str) -> int:
        return int(client.memory_usage(key, samples=0) or 0)

    users = sampled(f"{prefix}:f:u:*")
    products = sampled(f"{prefix}:f:p:*")
    per_user = [usage(key) for key in users]  # one value per user (schemas.feature_layout)
    return {
        "user_bytes": statistics.mean(per_user) if per_user else 0.0,
        "product_bytes": statistics.mean(usage(k) for k in products) if products else 0.0,
        "users_sampled": len(users),
        "products_sampled": len(products),
    }


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0912, PLR0915  (a flat script)
    parser = argparse.ArgumentParser(
        description="Ingest throughput of one worker vs a raw aiokafka consumer, same run.",
        epilog="Writes bench/results/ingest.json. Needs the local stack (started if not up).",
    )
    parser.add_argument("--events", type=int, default=200_000, help="events (default 200000)")
    parser.add_argument("--users", type=int, default=50_000, help="distinct users (default 50000)")
    parser.add_argument(
        "--compare",
        metavar="REF",
        action="append",
        default=[],
        help="also run the worker from this git ref (e.g. HEAD) for a before/after",
    )
    parser.add_argument(
        "--env",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="extra setting for the worker from this tree (SIGNALS_ prefix optional)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run each worker this many times (default 1)"
    )
    parser.add_argument("--timeout", type=float, default=600, help="per worker run, seconds")
    parser.add_argument("--skip-raw", action="store_true", help="skip the raw consumer ceiling")
    parser.add_argument(
        "--bad-share",
        type=float,
        default=0.01,
        help="also run the worker over a topic where this share of messages must be "
        "dead-lettered (default 0.01; 0 skips)",
    )
    args = parser.parse_args(argv)
    if args.events <= 0 or args.repeat <= 0:
        parser.error("--events and --repeat must be positive")
    try:
        extra_env = parse_env(args.env)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))

    print("local stack ...", flush=True)
    ensure_stack()
    wait_until_quiet()
    iso = Isolated.create("ingest")
    settings = iso.settings
    print(
        f"topic {settings.events_topic} ({settings.events_partitions} partitions); "
        f"producing {args.events:,} events ...",
        flush=True,
    )
    produced = produce(settings, args.events, users=args.users)
    table = Table(
        f"ingest: {produced.events:,} events ({produced.interactions:,} with a product), "
        f"{settings.events_partitions} partitions, one worker"
    )
    table.add("produce (library settings)", produced.events / produced.seconds, "events/s")
    result: dict[str, Any] = {
        "events": produced.events,
        "interactions": produced.interactions,
        "partitions": settings.events_partitions,
        "topic": settings.events_topic,
    }

    if not args.skip_raw:
        print("raw aiokafka consumer ...", flush=True)
        raw = asyncio.run(raw_aiokafka_consume(settings, produced.events, decode=False))
        raw_decode = asyncio.run(raw_aiokafka_consume(settings, produced.events, decode=True))
        table.add("raw aiokafka consumer (ceiling)", raw.rate, "msg/s", f"{raw.messages:,} read")
        table.add("raw aiokafka + decode/validate", raw_decode.rate, "msg/s", "same, one core")
        result["raw_consumer_msgs_per_s"] = round(raw.rate)
        result["raw_consumer_decode_msgs_per_s"] = round(raw_decode.rate)

    bad: tuple[Isolated, Produced] | None = None
    if args.bad_share > 0:
        bad_iso = Isolated.create("ingest-bad")
        print(f"producing {args.events:,} messages, {args.bad_share:.1%} bad ...", flush=True)
        bad_produced = produce(
            bad_iso.settings, args.events, users=args.users, bad_share=args.bad_share
        )
        bad = bad_iso, bad_produced

    runs: list[WorkerRun] = []
    clean_runs: list[WorkerRun] = []
    bad_runs: list[WorkerRun] = []
    store_only = {"SIGNALS_FEATURES_ENABLED": "false", "SIGNALS_TRIGGERS_ENABLED": "false"}
    with_features = {"SIGNALS_FEATURES_ENABLED": "true", "SIGNALS_TRIGGERS_ENABLED": "true"}
    variants: list[tuple[str, Path | None, dict[str, str]]] = [
        *((f"worker@{ref}", None, {}) for ref in args.compare),
        ("worker, interaction store only", ROOT, {**store_only, **extra_env}),
        ("worker + features + triggers", ROOT, {**with_features, **extra_env}),
    ]
    feature_runs: list[WorkerRun] = []
    try:
        # Clean and bad runs alternate, so the machine's drift (page cache, Cassandra's
        # background work) does not land on one side of the comparison.
        for attempt in range(args.repeat):
            suffix = "" if args.repeat == 1 else f"#{attempt + 1}"
            for label, source, env in variants:
                ref = label.split("@", 1)[1] if source is None else None
                tree = exported_tree(ref) if ref else contextlib.nullcontext(source)
                with tree as folder:
                    print(f"{label} (run {attempt + 1}) ...", flush=True)
                    assert folder is not None
                    run = run_worker(
                        iso,
                        produced.events,
                        produced.interactions,
                        label=label + suffix,
                        source=folder,
                        extra_env=env,
                        timeout_s=args.timeout,
                    )
                runs.append(run)
                if source is ROOT:
                    # The store-only runs are the baseline of the features' cost; the
                    # bad-message runs compare against them too (the default worker).
                    if env.get("SIGNALS_FEATURES_ENABLED") == "true":
                        feature_runs.append(run)
                    else:
                        clean_runs.append(run)
                table.add(
                    run.label,
                    run.events_per_s,
                    "events/s",
                    f"10-90%: {run.middle_events_per_s:,.0f}/s; "
                    f"{run.cpu_us_per_event:.0f} us CPU/event; startup {run.startup_s:.1f}s"
                    + (
                        f"; {1000 * run.triggers / run.events:.0f} triggers/1000 events"
                        if run.triggers
                        else ""
                    ),
                )
            if bad is not None:
                print(f"worker over {args.bad_share:.1%} bad messages (run {attempt + 1}) ...")
                run = run_worker(
                    bad[0],
                    bad[1].events,
                    bad[1].interactions,
                    label=f"worker, {args.bad_share:.0%} bad messages{suffix}",
                    source=ROOT,
                    extra_env=extra_env,
                    timeout_s=args.timeout,
                )
                runs.append(run)
                bad_runs.append(run)
                table.add(
                    run.label,
                    run.events_per_s,
                    "events/s",
                    f"{run.cpu_us_per_event:.0f} us CPU/event; the bad ones dead-lettered",
                )
    finally:
        if bad is not None:
            bad[0].cleanup()
    if feature_runs and clean_runs:
        with_rate = statistics.median(r.events_per_s for r in feature_runs)
        alone_rate = statistics.median(r.events_per_s for r in clean_runs)
        table.add(
            "features + triggers vs store only (medians)",
            f"{with_rate / alone_rate:.0%}",
            "",
            f"CPU per event {statistics.median(r.cpu_us_per_event for r in feature_runs):.1f} vs "
            f"{statistics.median(r.cpu_us_per_event for r in clean_runs):.1f} us; target 75%",
        )
        result["features_vs_store_only"] = round(with_rate / alone_rate, 3)
        sizes = feature_runs[-1].feature_bytes or {}
        if sizes:
            table.add(
                "Redis bytes per user (features)", sizes["user_bytes"], "B", "the user's one value"
            )
            table.add(
                "Redis bytes per product (features)", sizes["product_bytes"], "B", "counts hash"
            )
            result["feature_bytes"] = sizes
    if bad_runs:
        clean_rate = statistics.median(r.events_per_s for r in clean_runs)
        bad_rate = statistics.median(r.events_per_s for r in bad_runs)
        clean_cpu = statistics.median(r.cpu_us_per_event for r in clean_runs)
        bad_cpu = statistics.median(r.cpu_us_per_event for r in bad_runs)
        table.add(
            f"{args.bad_share:.0%} bad vs clean (medians)",
            f"{bad_rate / clean_rate:.0%}",
            "",
            f"CPU per event {bad_cpu:.1f} vs {clean_cpu:.1f} us ({bad_cpu / clean_cpu - 1:+.0%})",
        )
        result["bad_share"] = args.bad_share
        result["bad_vs_clean"] = round(bad_rate / clean_rate, 3)
        result["bad_vs_clean_cpu_per_event"] = round(bad_cpu / clean_cpu, 3)
    result["workers"] = [run.summary() for run in runs]
    result["worker_env"] = extra_env
    table.print()
    path = write_results("ingest", result)
    print(f"wrote {path.relative_to(ROOT)}")
    iso.cleanup_redis()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
