"""Freshness: how long after it is produced an event is visible in Redis, under load.

One `signals worker` (subprocess, isolated topic/group/prefix/keyspace) ingests synthetic
background traffic sent at a fixed rate with event time = send time. Every ~20 ms a probe
(a view of product `probe` by a new user `probe-<n>`) is sent and its send time recorded;
a poller process checks the outstanding probe keys in one Redis pipeline every ~2 ms and
records when each appears (a probe older than 40 ms is checked every 5% of its age, so a
worker that falls behind is not also flooded with checks). Freshness is produce -> visible.

Baseline, same run, same probes: a raw aiokafka consumer (no group, the worker's fetch
settings) on the same topic records when each probe arrives: produce -> consumed, the
transport floor under the worker. Poller and consumer run in their own processes, so
the producer's loop does not delay their clocks (CLOCK_MONOTONIC is system-wide).

Probes sent in the first `--warmup` seconds are not counted (every user is new then, so
every batch also reads the cold tier). Writes bench/results/freshness.json.

It also reports the CPU share of the local Kafka broker (both phases) and of the worker,
and the worker's memory at the start and end of the traffic.

    .venv/bin/python bench/freshness_bench.py [--rate 5000] [--seconds 30] [--warmup 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import sys
import time
import uuid
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    ROOT,
    Isolated,
    Table,
    WorkerProcess,
    broker_pid,
    cpu_seconds,
    ensure_stack,
    exported_tree,
    live_traffic,
    parse_env,
    percentiles,
    retime,
    wait_until_quiet,
    write_results,
)

from schemas.events import Event, EventType
from schemas.feature_layout import user_features_key
from schemas.hot_layout import hot_key, interaction_of
from streams.settings import Settings

PROBE_EVERY_S = 0.020
POLL_EVERY_S = 0.002
POLL_BACKOFF = 20
TARGET_P99_MS = 150.0
FEATURE_TARGET_P99_MS = 100.0
TRIGGER_TARGET_P99_MS = 150.0


def probe_key(prefix: str, n: int) -> str:
    return hot_key(prefix, f"probe-{n}", EventType.VIEW)


def probe_feature_key(prefix: str, n: int) -> str:
    """The probe user's feature hash: written by the same batch as their last-k."""
    return user_features_key(prefix, f"probe-{n}")


def probe_event(user_id: str) -> Event:
    return Event(
        event_id=uuid.uuid4().hex,
        user_id=user_id,
        event_type=EventType.VIEW,
        event_time_ms=int(time.time() * 1000),
        product_id="probe",
    )


def poll_redis(
    *,
    redis_url: str,
    prefix: str,
    sent: Synchronized[int],
    seen: Synchronized[int],
    stop: MpEvent,
    out: mp.Queue[dict[int, float]],
    features: bool = False,
) -> None:
    """Process: every POLL_EVERY_S, EXISTS on the due unseen probes in one pipeline (their
    last-k key, or with `features` their feature hash).

    A probe is due every POLL_EVERY_S while young, then every 1/POLL_BACKOFF of its age
    (precision: 2 ms or 5%, whichever is larger). Polling every overdue probe every 2 ms
    would flood Redis exactly when a worker falls behind, slowing it down further.
    """
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(redis_url)
    visible: dict[int, float] = {}
    pending: dict[int, tuple[float, float]] = {}  # probe -> (first known, next poll)
    queued = 0
    next_tick = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        upto = sent.value
        pending.update((n, (now, now)) for n in range(queued, upto))
        queued = upto
        due = [n for n, (_first, at) in pending.items() if at <= now]
        if due:
            pipe = client.pipeline(transaction=False)
            key_of = probe_feature_key if features else probe_key
            for n in due:
                pipe.exists(key_of(prefix, n))
            found = pipe.execute()
            now = time.monotonic()
            for n, hit in zip(due, found, strict=True):
                if hit:
                    visible[n] = now
                    del pending[n]
                else:
                    first = pending[n][0]
                    pending[n] = (first, now + max(POLL_EVERY_S, (now - first) / POLL_BACKOFF))
            seen.value = len(visible)
        next_tick += POLL_EVERY_S
        delay = next_tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_tick = time.monotonic()
    client.close()
    out.put(visible)


def consume_raw(
    *,
    bootstrap: str,
    topic: str,
    partitions: int,
    fetch_max_wait_ms: int,
    ready: MpEvent,
    seen: Synchronized[int],
    stop: MpEvent,
    out: mp.Queue[dict[int, float]],
) -> None:
    """Process: a raw aiokafka consumer from the end of every partition; probe arrivals."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: PLC0415

    async def run() -> dict[int, float]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=fetch_max_wait_ms,
        )
        await consumer.start()
        arrivals: dict[int, float] = {}
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:
                await consumer.position(tp)
            ready.set()
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=100)
                now = time.monotonic()
                for records in batches.values():
                    for record in records:
                        key = record.key or b""
                        if key.startswith(b"probe-"):
                            arrivals[int(key[6:])] = now
                seen.value = len(arrivals)
        finally:
            await consumer.stop()
        return arrivals

    out.put(asyncio.run(run()))


def applied_count(iso: Isolated) -> int:
    """Interactions the worker has applied so far (the hot store's counter)."""
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(iso.settings.redis_url)
    try:
        return int(client.get(f"{iso.settings.redis_key_prefix}:stats:applied") or 0)
    finally:
        client.close()


def wait_visible(iso: Isolated, worker: WorkerProcess, timeout_s: float = 90) -> float:
    """Send warm-up probes until one is in Redis: the worker has joined and is applying."""
    import redis  # noqa: PLC0415

    from sinks.events_producer import EventProducer  # noqa: PLC0415

    settings = iso.settings
    client = redis.Redis.from_url(settings.redis_url)
    started = time.monotonic()
    try:
        with EventProducer(settings.kafka_bootstrap, settings.events_topic) as producer:
            for n in range(10**9):
                producer.send(probe_event(f"warm-{n}"))
                producer.flush(5)
                for _ in range(20):
                    if client.exists(hot_key(settings.redis_key_prefix, f"warm-{n}", "view")):
                        return time.monotonic() - started
                    time.sleep(0.01)
                if not worker.alive():
                    raise RuntimeError(f"worker exited; log:\n{worker.tail()}")
                if time.monotonic() - started > timeout_s:
                    raise RuntimeError(f"no probe visible in {timeout_s:.0f}s:\n{worker.tail()}")
    finally:
        client.close()
    raise AssertionError("unreachable")


@dataclass
class Schedule:
    """Background traffic encoded up front: (key, framed value, send time in epoch s)."""

    messages: list[tuple[bytes, bytes, float]]

    @classmethod
    def encode(cls, events: list[Event]) -> Schedule:
        """Retime `events` to start once they are all encoded, then encode them.

        Encoding before the clock runs keeps the producer's CPU (validate + Avro, ~10 us
        an event) off the two cores the worker is measured on; producers run elsewhere in
        production.
        """
        from schemas.codec import encode_event  # noqa: PLC0415

        began = time.perf_counter()
        for event in events[:2000]:
            encode_event(event)
        per_event_s = (time.perf_counter() - began) / min(len(events), 2000)
        start_ms = int((time.time() + 1.0 + 1.5 * per_event_s * len(events)) * 1000)
        retime(events, start_ms)
        messages = [(e.user_id.encode(), encode_event(e), e.event_time_ms / 1000) for e in events]
        return cls(messages)


def send_traffic(
    iso: Isolated,
    schedule: Schedule,
    seconds: float,
    sent: Synchronized[int],
    seen: Synchronized[int],
    *,
    progress: Synchronized[int] | None = None,
) -> tuple[list[float], int, float]:
    """Background at its scheduled times plus a probe every PROBE_EVERY_S.

    Returns the probes' send times (monotonic), the background events sent and how long.
    Prints progress every 5 s (probes sent vs seen shows a consumer falling behind); with
    `progress`, it keeps the background events sent so far there instead (every 64), for a
    caller that reports progress itself (bench/burst_bench.py).
    """
    from confluent_kafka import Producer  # noqa: PLC0415

    from schemas.codec import encode_event  # noqa: PLC0415
    from sinks.events_producer import BATCHING, GUARANTEES  # noqa: PLC0415

    settings = iso.settings
    topic = settings.events_topic
    # The producer library's settings, with the values already encoded.
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, **BATCHING, **GUARANTEES})
    messages = schedule.messages
    wait_s = messages[0][2] - time.time()
    if wait_s > 0:
        time.sleep(wait_s)
    probe_times: list[float] = []
    background = 0
    started = time.monotonic()
    next_probe = started
    next_report = started + 5
    end = started + seconds
    while background < len(messages):
        now = time.monotonic()
        if now >= end:
            break
        if progress is None and now >= next_report:
            print(
                f"  t={now - started:4.0f}s  background {background:>7,} "
                f"({background / (now - started):,.0f}/s)  probes sent {len(probe_times):>5,}"
                f"  seen {seen.value:>5,}",
                flush=True,
            )
            next_report += 5
        if now >= next_probe:
            probe = probe_event(f"probe-{len(probe_times)}")
            probe_times.append(time.monotonic())
            producer.produce(topic, key=probe.user_id.encode(), value=encode_event(probe))
            sent.value = len(probe_times)
            next_probe += PROBE_EVERY_S
            continue
        key, value, send_at = messages[background]
        ahead_s = send_at - time.time()
        if ahead_s <= 0:
            producer.produce(topic, key=key, value=value)
            background += 1
            if background % 64 == 0:
                producer.poll(0)
                if progress is not None:
                    progress.value = background
            continue
        time.sleep(min(ahead_s, next_probe - now, 0.002))
    elapsed = time.monotonic() - started
    if progress is not None:
        progress.value = background
    if producer.flush(30):
        raise RuntimeError("the benchmark's producer could not deliver everything in 30 s")
    return probe_times, background, elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Produce -> visible-in-Redis latency under background load, "
        "beside produce -> consumed by a raw aiokafka consumer (same probes, same run).",
        epilog="Writes bench/results/freshness.json. Needs the local stack (started if not up).",
    )
    parser.add_argument("--rate", type=float, default=5000, help="background events/s (5000)")
    parser.add_argument("--seconds", type=float, default=30, help="measured seconds (30)")
    parser.add_argument(
        "--warmup", type=float, default=5, help="seconds of traffic before probes count (5)"
    )
    parser.add_argument(
        "--env",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="extra setting for the worker (SIGNALS_ prefix optional)",
    )
    parser.add_argument(
        "--compare",
        metavar="REF",
        action="append",
        default=[],
        help="then run the same measurement with the worker from this git ref (e.g. HEAD~1), "
        "and again with this tree, alternating: a before/after in one run",
    )
    args = parser.parse_args(argv)
    try:
        args.worker_env = parse_env(args.env)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.rate <= 0 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--rate and --seconds must be positive, --warmup not negative")

    print("local stack ...", flush=True)
    ensure_stack()
    wait_until_quiet()
    iso = Isolated.create("fresh")
    try:
        result = measure(iso, args)
    finally:
        iso.cleanup()
    report(result)
    if args.compare:
        result["compare"] = compare(args, result)
    path = write_results("freshness", result)
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


def compare(args: argparse.Namespace, first: dict[str, Any]) -> list[dict[str, Any]]:
    """After the first run (this tree): each `--compare` ref, then this tree again, each on
    its own fresh topic with the same traffic shape; a table of p50/p99 of each run."""
    runs = [("this tree", first)]
    for ref in args.compare:
        for label, tree in ((f"worker@{ref}", exported_tree(ref)), ("this tree", None)):
            with tree if tree is not None else contextlib.nullcontext(ROOT) as source:
                wait_until_quiet()
                iso = Isolated.create("fresh")
                try:
                    print(f"{label} ...", flush=True)
                    runs.append((label, measure(iso, args, source)))
                finally:
                    iso.cleanup()
    table = Table(
        "freshness before/after, alternated",
        head=("worker", "p50 ms", "p99 ms", "floor p99 ms", "worker CPU %"),
    )
    table.align = "lrrrr"
    rows = []
    for label, run in runs:
        fresh, floor = run["freshness"], run["transport_floor"]
        cpu = run["worker_cpu_share"]
        cpu_percent = round(100 * cpu, 1) if cpu is not None else "-"
        table.add_row(label, fresh["p50_ms"], fresh["p99_ms"], floor["p99_ms"], cpu_percent)
        rows.append(
            {
                "worker": label,
                **{k: fresh[k] for k in ("p50_ms", "p99_ms")},
                "worker_cpu_share": cpu,
            }
        )
    table.print()
    return rows


def measure(  # noqa: PLR0915
    iso: Isolated, args: argparse.Namespace, source: Path = ROOT
) -> dict[str, Any]:
    """Two phases over the same traffic: the worker (with the Redis poller), then the raw
    consumer alone. One at a time, so neither steals the other's CPU on two cores."""
    settings = Settings.load(
        **{
            key.removeprefix("SIGNALS_").lower(): value
            for key, value in {**iso.env, **args.worker_env}.items()
            if key != "SIGNALS_LAST_K"
        }
    )
    ctx = mp.get_context("spawn")
    total = args.warmup + args.seconds
    print(f"generating {args.rate * total:,.0f} background events ...", flush=True)
    events = live_traffic(args.rate, int(args.rate * total * 1.05) + 1000)

    # Phase 1: the worker, and a poller that sees probes appear in Redis.
    sent, poll_seen, stop = ctx.Value("q", 0), ctx.Value("q", 0), ctx.Event()
    poll_out: mp.Queue[dict[int, float]] = ctx.Queue()

    def poller_of(
        seen: Synchronized[int], out: mp.Queue[dict[int, float]], *, features: bool
    ) -> Any:
        return ctx.Process(
            target=poll_redis,
            kwargs={
                "redis_url": settings.redis_url,
                "prefix": settings.redis_key_prefix,
                "sent": sent,
                "seen": seen,
                "stop": stop,
                "out": out,
                "features": features,
            },
        )

    poller = poller_of(poll_seen, poll_out, features=False)
    feature_seen = ctx.Value("q", 0)
    feature_out: mp.Queue[dict[int, float]] = ctx.Queue()
    feature_poller = poller_of(feature_seen, feature_out, features=True)
    # Each probe is a new user's first event: a session start, so it triggers a re-rank.
    trigger_seen, trigger_ready = ctx.Value("q", 0), ctx.Event()
    trigger_out: mp.Queue[dict[int, float]] = ctx.Queue()
    trigger_reader = ctx.Process(
        target=consume_raw,
        kwargs={
            "bootstrap": settings.kafka_bootstrap,
            "topic": settings.trigger_topic,
            "partitions": settings.events_partitions,
            "fetch_max_wait_ms": settings.fetch_max_wait_ms,
            "ready": trigger_ready,
            "seen": trigger_seen,
            "stop": stop,
            "out": trigger_out,
        },
    )
    with_features = settings.features_enabled
    with_triggers = with_features and settings.triggers_enabled
    with WorkerProcess({**iso.env, **args.worker_env}, label="freshness", source=source) as worker:
        print("worker starting (warm-up probes until one is visible) ...", flush=True)
        startup_s = wait_visible(iso, worker)
        print("encoding the background traffic ...", flush=True)
        schedule = Schedule.encode(events)
        poller.start()
        if with_features:
            feature_poller.start()
        if with_triggers:
            trigger_reader.start()
            if not trigger_ready.wait(60):
                raise RuntimeError("the trigger reader did not start within 60 s")
        feature_visible: dict[int, float] = {}
        triggered: dict[int, float] = {}
        try:
            print(f"worker: {args.rate:,.0f} events/s + a probe every 20 ms for {total:g}s ...")
            applied_before = applied_count(iso)
            with Usage(broker_pid(), worker.pid) as usage:
                sent_at, background, elapsed = send_traffic(iso, schedule, total, sent, poll_seen)
            applied_rate = (applied_count(iso) - applied_before) / elapsed
            wait_for_seen(poll_seen, len(sent_at))
            if with_features:
                wait_for_seen(feature_seen, len(sent_at))
            if with_triggers:
                wait_for_seen(trigger_seen, len(sent_at))
            stop.set()
            visible = poll_out.get(timeout=30)
            if with_features:
                feature_visible = feature_out.get(timeout=30)
            if with_triggers:
                triggered = trigger_out.get(timeout=30)
            if not worker.alive():
                raise RuntimeError(f"worker exited during the run; log:\n{worker.tail()}")
        finally:
            stop.set()
            stop_process(poller)
            if with_features:
                stop_process(feature_poller)
            if with_triggers:
                stop_process(trigger_reader)

    # Phase 2: the same traffic to a raw consumer (the transport floor under the worker).
    raw_sent_at, consumed, raw_usage = raw_phase(iso, settings, events, total)

    raw_counted = [n for n, t in enumerate(raw_sent_at) if t - raw_sent_at[0] >= args.warmup]
    floor = percentiles(
        [(consumed[n] - raw_sent_at[n]) * 1000 for n in raw_counted if n in consumed]
    )
    counted = [n for n, t in enumerate(sent_at) if t - sent_at[0] >= args.warmup]
    fresh = percentiles([(visible[n] - sent_at[n]) * 1000 for n in counted if n in visible])
    feature_fresh = percentiles(
        [(feature_visible[n] - sent_at[n]) * 1000 for n in counted if n in feature_visible]
    )
    trigger_fresh = percentiles(
        [(triggered[n] - sent_at[n]) * 1000 for n in counted if n in triggered]
    )
    achieved = background / elapsed
    offered = sum(1 for e in events[:background] if interaction_of(e) is not None) / elapsed
    lost = sum(1 for n in counted if n not in visible)
    # Per counted probe, in send order: (seconds after the first probe, ms to visible; None
    # if never seen), to see when the slow ones happened.
    probes = [
        (
            round(sent_at[n] - sent_at[0], 3),
            round((visible[n] - sent_at[n]) * 1000, 1) if n in visible else None,
        )
        for n in counted
    ]
    return {
        "rate_asked": args.rate,
        "rate_achieved": round(achieved),
        "interactions_sent_per_s": round(offered),
        "worker_applied_per_s": round(applied_rate),
        "seconds": args.seconds,
        "warmup_s": args.warmup,
        "probes_counted": len(counted),
        "probes_lost": lost,
        "freshness": fresh,
        "feature_freshness": feature_fresh if feature_visible else None,
        "trigger_freshness": trigger_fresh if triggered else None,
        "probes_without_feature": sum(1 for n in counted if n not in feature_visible),
        "probes_without_trigger": sum(1 for n in counted if n not in triggered),
        "probes": probes,
        "transport_floor": floor,
        "worker_startup_s": round(startup_s, 2),
        "target_p99_ms": TARGET_P99_MS,
        "partitions": settings.events_partitions,
        "worker_settings": args.worker_env,
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        # Share of one core while sending: the Kafka broker and the worker in phase 1, the
        # broker alone in phase 2 (the raw consumer is not measured).
        "worker_rss_mb": usage.rss_mb[1],
        "per_minute": per_minute(probes),
        "broker_cpu_share": usage.shares[0],
        "worker_cpu_share": usage.shares[1],
        "broker_cpu_share_raw_phase": raw_usage.shares[0],
    }


class Usage:
    """CPU share of one core used by some processes over a `with` block, and their resident
    memory (MB) at its start and end (None: not a local process)."""

    def __init__(self, *pids: int | None) -> None:
        self._pids = pids
        self._began: list[float | None] = []
        self._started = 0.0
        self.shares: list[float | None] = []
        self.rss_mb: list[tuple[float | None, float | None]] = []

    def _now(self) -> list[float | None]:
        return [cpu_seconds(pid) if pid else None for pid in self._pids]

    def _rss(self) -> list[float | None]:
        return [rss_mb(pid) if pid else None for pid in self._pids]

    def __enter__(self) -> Usage:
        self._started, self._began = time.monotonic(), self._now()
        self._rss_began = self._rss()
        return self

    def __exit__(self, *_exc: object) -> None:
        wall = time.monotonic() - self._started
        self.shares = [
            round((end - began) / wall, 3) if began is not None and end is not None else None
            for began, end in zip(self._began, self._now(), strict=True)
        ]
        self.rss_mb = list(zip(self._rss_began, self._rss(), strict=True))


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for pid {pid}")


def per_minute(probes: list[tuple[float, float | None]]) -> list[dict[str, Any]]:
    """p50/p99 of the counted probes per minute of the run (does the tail drift?)."""
    minutes: dict[int, list[float]] = {}
    for at_s, latency_ms in probes:
        if latency_ms is not None:
            minutes.setdefault(int(at_s // 60), []).append(latency_ms)
    return [{"minute": m + 1, **percentiles(samples)} for m, samples in sorted(minutes.items())]


def raw_phase(
    iso: Isolated, settings: Settings, events: list[Event], total: float
) -> tuple[list[float], dict[int, float], Usage]:
    """The same traffic, read by a raw aiokafka consumer: probe send times and arrivals."""
    ctx = mp.get_context("spawn")
    raw_sent, raw_seen, stop, ready = ctx.Value("q", 0), ctx.Value("q", 0), ctx.Event(), ctx.Event()
    raw_out: mp.Queue[dict[int, float]] = ctx.Queue()
    raw = ctx.Process(
        target=consume_raw,
        kwargs={
            "bootstrap": settings.kafka_bootstrap,
            "topic": settings.events_topic,
            "partitions": settings.events_partitions,
            "fetch_max_wait_ms": settings.fetch_max_wait_ms,
            "ready": ready,
            "seen": raw_seen,
            "stop": stop,
            "out": raw_out,
        },
    )
    raw.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the raw consumer did not start within 60 s")
        print("encoding the background traffic again ...", flush=True)
        schedule = Schedule.encode(events)
        print(f"raw consumer: the same traffic for {total:g}s ...")
        with Usage(broker_pid()) as usage:
            raw_sent_at, _, _ = send_traffic(iso, schedule, total, raw_sent, raw_seen)
        wait_for_seen(raw_seen, len(raw_sent_at))
        stop.set()
        consumed = raw_out.get(timeout=30)
    finally:
        stop.set()
        stop_process(raw)

    return raw_sent_at, consumed, usage


def wait_for_seen(seen: Synchronized[int], expected: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and seen.value < expected:
        time.sleep(0.05)


def stop_process(process: mp.process.BaseProcess) -> None:
    if process.pid is None:
        return
    process.join(10)
    if process.is_alive():
        process.terminate()
        process.join()


def report(r: dict[str, Any]) -> None:
    fresh, floor = r["freshness"], r["transport_floor"]
    table = Table(
        f"freshness: {r['partitions']} partitions, one worker, "
        f"background {r['rate_achieved']:,} events/s (asked {r['rate_asked']:,.0f}), "
        f"{r['probes_counted']} probes over {r['seconds']:g}s"
    )
    for q in ("p50", "p95", "p99", "max"):
        table.add(
            f"produce -> visible in Redis, {q}",
            fresh[f"{q}_ms"],
            "ms",
            f"raw aiokafka produce -> consumed {q}: {floor[f'{q}_ms']:,.1f} ms (floor)",
        )
    for key, what, target in (
        ("feature_freshness", "feature in Redis", FEATURE_TARGET_P99_MS),
        ("trigger_freshness", "trigger on its topic", TRIGGER_TARGET_P99_MS),
    ):
        for q in ("p50", "p99") if r.get(key) else ():
            table.add(
                f"produce -> {what}, {q}",
                r[key][f"{q}_ms"],
                "ms",
                f"target p99 <= {target:.0f} ms" if q == "p99" else "",
            )
    table.add("background rate achieved", r["rate_achieved"], "events/s")
    table.add(
        "worker applied while sending",
        r["worker_applied_per_s"],
        "interactions/s",
        f"sent {r['interactions_sent_per_s']:,}/s (lower: the worker fell behind)",
    )
    table.add("probes not visible after 10 s", r["probes_lost"], "", "counted probes")
    if r["broker_cpu_share"] is not None:
        table.add(
            "Kafka broker CPU (worker phase)",
            round(100 * r["broker_cpu_share"], 1),
            "% of a core",
            f"{100 * r['broker_cpu_share_raw_phase']:.1f}% in the raw phase",
        )
    if r["worker_cpu_share"] is not None:
        table.add("worker CPU", round(100 * r["worker_cpu_share"], 1), "% of a core")
        began, ended = r["worker_rss_mb"]
        table.add("worker resident memory", ended, "MB", f"{began} MB when the traffic started")
    if len(r["per_minute"]) > 1:
        for minute in r["per_minute"]:
            table.add(
                f"minute {minute['minute']}: p99 (p50)",
                minute["p99_ms"],
                "ms",
                f"p50 {minute['p50_ms']:.1f} ms, {minute['n']} probes",
            )
    table.add("worker startup (to first visible)", r["worker_startup_s"], "s")
    table.print()
    print(f"target: p99 <= {TARGET_P99_MS:.0f} ms at 5,000 events/s")


if __name__ == "__main__":
    raise SystemExit(main())
