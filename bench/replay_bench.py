"""Replay throughput from one process: `signals replay --to-parquet` against a raw consumer
reading the same offsets in the same run.

Set-up: an isolated topic on the local stack's Kafka with N generated events (the
production partition count). Then, alternating over `--rounds` rounds (raw, replay,
replay, raw, ...):

- raw consumer: the replay's own consumer settings (assigned partitions, 10,000 records a
  consume call), touching every record's value and offset, nothing else: the ceiling;
- replay to Parquet: `jobs.replay.replay_to_parquet` over an event-time range holding
  every event (decode, range rule, hive-style files, manifest), into a fresh folder;
- once: replay to another topic (transactional copy).

Prints a table (records/s, the ratio to the raw consumer) and writes
bench/results/replay.json. Target (issue 15): Parquet >= 0.8x the raw consumer.

    .venv/bin/python bench/replay_bench.py [--events 300000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Isolated, Table, ensure_stack, produce, write_results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000, help="events in the topic")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (2)")
    args = parser.parse_args(argv)
    ensure_stack(print)
    iso = Isolated.create("replay", keyspace=False)
    try:
        return run(iso, args.events, args.rounds)
    finally:
        iso.cleanup()


def raw_consumer(bootstrap: str, topic: str) -> tuple[int, float]:
    """Every record of `topic` to its end: (records, seconds)."""
    from confluent_kafka import KafkaError, TopicPartition  # noqa: PLC0415

    from jobs.replay import replay_consumer  # noqa: PLC0415

    consumer = replay_consumer(bootstrap)
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
        began = time.perf_counter()
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        remaining = {p for p in partitions if ends[p] > 0}
        records = size = 0
        while remaining:
            for message in consumer.consume(10_000, timeout=0.5):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        remaining.discard(message.partition())
                    continue
                value = message.value()
                size += len(value) if value else 0
                records += 1
                if (message.offset() or 0) + 1 >= ends[message.partition()]:
                    remaining.discard(message.partition())
        return records, time.perf_counter() - began
    finally:
        consumer.close()


def to_parquet(bootstrap: str, topic: str, folder: Path) -> tuple[int, float]:
    from jobs.replay import ReplayRequest, replay_to_parquet  # noqa: PLC0415
    from schemas.replay_layout import EventTimeRange  # noqa: PLC0415

    shutil.rmtree(folder, ignore_errors=True)
    request = ReplayRequest(topic, EventTimeRange(0, int(time.time() * 1000) + 3_600_000))
    summary = replay_to_parquet(bootstrap, request, folder, progress=False)
    return summary.selected, summary.seconds


def to_topic(bootstrap: str, topic: str, target: str) -> tuple[int, float]:
    from jobs.replay import ReplayRequest, replay_to_topic  # noqa: PLC0415
    from schemas.replay_layout import EventTimeRange  # noqa: PLC0415

    request = ReplayRequest(topic, EventTimeRange(0, int(time.time() * 1000) + 3_600_000))
    with tempfile.TemporaryDirectory() as scratch:
        summary = replay_to_topic(
            bootstrap, request, target, errors_path=Path(scratch) / "errors.jsonl", progress=False
        )
    return summary.selected, summary.seconds


def run(iso: Isolated, events: int, rounds: int) -> int:
    from infra.topics import delete_topics  # noqa: PLC0415

    settings = iso.settings
    bootstrap, topic = settings.kafka_bootstrap, settings.events_topic
    print(f"set-up: {events:,} events into {topic} ...", flush=True)
    produce(settings, events)
    runs: dict[str, list[dict[str, float]]] = {"raw consumer": [], "replay to parquet": []}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "out"
        for round_ in range(rounds):
            order = ["raw consumer", "replay to parquet"]
            for name in order if round_ % 2 == 0 else order[::-1]:
                count, seconds = (
                    raw_consumer(bootstrap, topic)
                    if name == "raw consumer"
                    else to_parquet(bootstrap, topic, folder)
                )
                if count != events:
                    raise RuntimeError(f"{name} read {count} records, expected {events}")
                runs[name].append({"records": count, "seconds": seconds, "per_s": count / seconds})
                print(f"round {round_ + 1}: {name}: {count / seconds:,.0f} records/s", flush=True)
    target = f"{topic}.copy"
    copied, seconds = to_topic(bootstrap, topic, target)
    delete_topics(settings, _specs(settings))
    best = {name: max(r["per_s"] for r in measured) for name, measured in runs.items()}
    ratio = best["replay to parquet"] / best["raw consumer"]
    table = Table(
        f"replay: {events:,} events, {settings.events_partitions} partitions, one process",
        head=("reader", "records/s (best)", "runs", "vs raw consumer"),
        align="lrrr",
    )
    for name, measured in runs.items():
        table.add_row(
            name,
            best[name],
            ", ".join(f"{r['per_s']:,.0f}" for r in measured),
            f"{best[name] / best['raw consumer']:.2f}x",
        )
    topic_rate = copied / seconds
    table.add_row("replay to a topic", topic_rate, "1", f"{topic_rate / best['raw consumer']:.2f}x")
    table.print()
    print("target: replay to Parquet >= 0.8x the raw consumer")
    result: dict[str, Any] = {
        "events": events,
        "runs": runs,
        "best_per_s": best,
        "parquet_vs_raw": round(ratio, 3),
        "to_topic_per_s": topic_rate,
    }
    print(f"wrote {write_results('replay', result)}")
    return 0


def _specs(settings: Any) -> list[Any]:
    from infra.topics import TopicSpec  # noqa: PLC0415

    return [
        TopicSpec(
            name=f"{settings.events_topic}.copy",
            partitions=settings.events_partitions,
            cleanup_policy="delete",
            retention_ms=3_600_000,
            purpose="the bench's copy",
        )
    ]


if __name__ == "__main__":
    sys.exit(main())
