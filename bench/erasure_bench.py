"""Erasure: how long `signals forget` takes, from the request to the worker's confirmation,
with the worker busy on live traffic.

One `signals worker` (subprocess, isolated topic/group/prefix/keyspace) ingests synthetic
traffic sent at `--rate` events/s with event time = send time. After `--warmup` seconds,
once every `--every` seconds, one user who has been active is erased through
`jobs.forget.forget_users` (the code `signals forget` runs): the request's time and the
worker's `done_ms` in the cold tier's `erasures` table give the erasure time; the call's
own wall time (producing the request, polling the table) is reported beside it.

Baseline, same run, same moments: just before each erasure a probe event (a view by a new
user) is sent and the time until it is visible in Redis recorded: the worker's ordinary
freshness, which an erasure rides on (it is a record on the same topic).

    .venv/bin/python bench/erasure_bench.py [--rate 2000] [--seconds 40] [--every 1]
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    Isolated,
    Table,
    WorkerProcess,
    ensure_stack,
    live_traffic,
    percentiles,
    retime,
    write_results,
)

from schemas.events import Event, EventType
from schemas.hot_layout import hot_key
from sinks.connectivity import kafka_security, redis_options
from sinks.events_producer import EventProducer


def send_paced(iso: Isolated, events: list[Event], stop: threading.Event, seen: set[str]) -> None:
    """Send each event when its time comes (event time = send time), noting its user."""
    settings = iso.settings
    with EventProducer(
        settings.kafka_bootstrap, settings.events_topic, **kafka_security(settings)
    ) as producer:
        for event in events:
            if stop.is_set():
                break
            delay = event.event_time_ms / 1000 - time.time()
            if delay > 0:
                time.sleep(delay)
            producer.send(event)
            seen.add(event.user_id)


def probe_freshness(iso: Isolated, n: int, client: Any, producer: EventProducer) -> float:
    """Send a view by a new user; seconds until it is in their last-k in Redis."""
    settings = iso.settings
    user = f"probe-{n}"
    key = hot_key(settings.redis_key_prefix, user, EventType.VIEW)
    sent = time.time()
    producer.send(
        Event(
            event_id=f"probe-{n}-{int(sent * 1000)}",
            user_id=user,
            event_type=EventType.VIEW,
            event_time_ms=int(sent * 1000),
            product_id="probe",
            category_id="c1",
        )
    )
    producer.flush(5)
    deadline = sent + 30
    while time.time() < deadline:
        if client.exists(key):
            return time.time() - sent
        time.sleep(0.002)
    raise TimeoutError(f"probe {n} not visible after 30 s")


def measure(args: argparse.Namespace) -> tuple[list[float], list[float], list[float]]:
    """(erasure times, call times, probe freshness), in seconds."""
    import redis  # noqa: PLC0415

    from jobs.forget import forget_users  # noqa: PLC0415

    ensure_stack(print)
    iso = Isolated.create("erasure")
    settings = iso.settings
    events = live_traffic(args.rate, int(args.rate * args.seconds), users=5000)
    client = redis.Redis.from_url(settings.redis_url, **redis_options(settings))
    erasures: list[float] = []
    calls: list[float] = []
    probes: list[float] = []
    stop = threading.Event()
    seen: set[str] = set()
    prober = EventProducer(
        settings.kafka_bootstrap, settings.events_topic, **kafka_security(settings)
    )
    try:
        with WorkerProcess(iso.env, label="erasure") as worker:
            time.sleep(3)  # the worker joins its group
            retime(events, int(time.time() * 1000) + 500)
            sender = threading.Thread(target=send_paced, args=(iso, events, stop, seen))
            sender.start()
            time.sleep(args.warmup)
            rng = random.Random(7)
            end = time.time() + args.seconds - args.warmup - 2
            while time.time() < end and worker.alive():
                probes.append(probe_freshness(iso, len(probes), client, prober))
                user = rng.choice(sorted(seen))
                began = time.perf_counter()
                report = forget_users(settings, [user], wait_s=30, poll_s=0.01)
                calls.append(time.perf_counter() - began)
                if not report.done:
                    raise RuntimeError(f"{user} not erased in 30 s; worker log: {worker.tail()}")
                erasures.append(report.erased_after_s[user])
                time.sleep(max(0.0, args.every - calls[-1]))
            stop.set()
            sender.join()
            if not worker.alive():
                raise RuntimeError(f"the worker stopped: {worker.tail()}")
    finally:
        stop.set()
        prober.close()
        client.close()
        iso.cleanup()
    return erasures, calls, probes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=2000, help="events/s (2000)")
    parser.add_argument("--seconds", type=float, default=40, help="traffic seconds (40)")
    parser.add_argument("--warmup", type=float, default=5, help="seconds before the first erasure")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between erasures (1)")
    args = parser.parse_args(argv)
    erasures, calls, probes = measure(args)
    erased_ms = percentiles([s * 1000 for s in erasures])
    call_ms = percentiles([s * 1000 for s in calls])
    probe_ms = percentiles([s * 1000 for s in probes])
    table = Table(
        f"erasure under {args.rate:g} events/s ({len(erasures)} users erased)",
        head=("measurement", "p50", "p95", "max"),
        align="lrrr",
    )
    for name, values in (
        ("erasure: request -> done (worker)", erased_ms),
        ("signals forget call (produce + poll)", call_ms),
        ("baseline: probe event -> visible", probe_ms),
    ):
        table.add_row(name, *(f"{values[q]:.0f} ms" for q in ("p50_ms", "p95_ms", "max_ms")))
    table.print()
    write_results(
        "erasure",
        {
            "rate": args.rate,
            "users_erased": len(erasures),
            "erasure_ms": erased_ms,
            "call_ms": call_ms,
            "probe_freshness_ms": probe_ms,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
