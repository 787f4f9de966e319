"""Sale-day burst: a steady rate, then `--factor` x that rate for `--burst` seconds, then
the steady rate again, against one `signals worker`. Does its memory stay bounded, is
nothing lost or dead-lettered, how fast does the lag drain, and when is freshness back?

Phase 1, the baseline (same run, same worker settings): `produce()` `--sustained-events`
onto an isolated topic and run a worker over the backlog from the start
(`ingest_bench.run_worker`): its sustained rate, interactions applied per second from the
first applied batch to the last.

Phase 2, the burst, on a fresh isolated topic and a fresh worker. The traffic is three
segments of `live_traffic()` (steady, factor x steady: a sale brings more shoppers, not
faster ones; steady again), each stretched to fill its time exactly and encoded up front
(`freshness_bench.Schedule`, event time = send time), so the producer's CPU is not in
the measurement. `freshness_bench.send_traffic` sends it with a probe every 20 ms, and
`freshness_bench.poll_redis` (its own process) records when each probe is visible in
Redis. A sampler thread records every 0.5 s: the worker's RSS and CPU time, its applied
counter, and what the schedule had sent by then (background interactions plus probes).
Lag = scheduled - applied, in interactions (so it includes any shortfall of the sender,
reported on its own as "producer behind schedule"). It prints a timeline every 5 s.
Everything is generated before the clock runs: the defaults make 3.45M events (a few
minutes of one core and ~2.4 GB in this process while encoding).

Reported, beside the issue's targets (printed as PASS / not met, never failing the run):

- catch-up rate: the worker's applied rate over the periods (during and after the burst)
  where the lag exceeded one batch (`batch_max`), and its ratio to the sustained rate
  (target >= 0.9x);
- lag drained: from the burst's end until the lag is at most one batch;
- freshness back: the steady p99 is that of the probes sent after `--warmup` and before
  the burst; from the lag draining until a trailing 5 s window of probes (by send time;
  a probe never seen counts as infinitely late) has its p99 at or below 1.1x it
  (target <= 30 s);
- memory: peak RSS, RSS at the burst's start, middle and end; bounded when the second
  half of the burst grows RSS by at most half as much as the first (linear growth makes
  the halves equal) or by less than 5 MB;
- nothing lost: the applied counter equals the interactions on the topic (warm-up probes
  included) after a short settle, and the dead-letter topic is empty.

Writes bench/results/burst.json (with the 0.5 s samples). Needs the local stack.

    .venv/bin/python bench/burst_bench.py [--rate 5000] [--steady 30] [--burst 60]
        [--factor 10] [--after 120] [--warmup 5] [--users 50000]
        [--sustained-events 200000] [--env K=V ...]
"""

from __future__ import annotations

import argparse
import bisect
import gc
import itertools
import math
import multiprocessing as mp
import sys
import threading
import time
from dataclasses import asdict, dataclass
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))

from freshness_bench import (
    Schedule,
    applied_count,
    poll_redis,
    rss_mb,
    send_traffic,
    stop_process,
    wait_for_seen,
    wait_visible,
)
from harness import (
    ROOT,
    Isolated,
    Table,
    WorkerProcess,
    broker_pid,
    cpu_seconds,
    end_offsets,
    ensure_stack,
    live_traffic,
    parse_env,
    percentiles,
    produce,
    wait_until_quiet,
    write_results,
)
from ingest_bench import WorkerRun, run_worker

from schemas.events import Event
from schemas.hot_layout import interaction_of
from streams.settings import Settings

SAMPLE_EVERY_S = 0.5
TIMELINE_EVERY = 10  # samples: a timeline line every 5 s
WINDOW_S = 5.0  # the rolling freshness window
TOLERANCE = 1.1  # "back to the steady p99" allows 10% over it
TARGET_CATCH_UP = 0.9  # x the sustained rate
TARGET_RECOVERY_S = 30.0
BOUNDED_SHARE = 0.5  # second-half RSS growth at most this share of the first half's
BOUNDED_NOISE_MB = 5.0  # ... or below this (allocator noise)
STALL_S = 60.0  # give up waiting for the last events when nothing is applied this long


@dataclass(frozen=True)
class Plan:
    """The piecewise rate, in seconds from the traffic's start."""

    rate: float
    steady_s: float
    burst_s: float
    factor: float
    after_s: float
    warmup_s: float

    @property
    def burst_start(self) -> float:
        return self.steady_s

    @property
    def burst_end(self) -> float:
        return self.steady_s + self.burst_s

    @property
    def total_s(self) -> float:
        return self.steady_s + self.burst_s + self.after_s

    def segments(self) -> list[tuple[float, float, float]]:
        """(start s, seconds, events/s) of the steady, burst and after segments."""
        return [
            (0.0, self.steady_s, self.rate),
            (self.burst_start, self.burst_s, self.rate * self.factor),
            (self.burst_end, self.after_s, self.rate),
        ]


def burst_traffic(plan: Plan, users: int) -> list[Event]:
    """The three segments' events in send order, event times in the plan's time (ms after
    the first event's).

    Each segment is its own `live_traffic` at its rate (own seed: different sessions of
    the same population), stretched to fill its span exactly (the simulation's rate is
    only about the one asked, and segments must neither overlap nor leave gaps). Late and
    duplicate deliveries keep their place in the order and their (stretched) lateness.
    """
    events: list[Event] = []
    base_ms = 0
    for index, (start_s, seconds, rate) in enumerate(plan.segments()):
        count = round(rate * seconds)
        if count == 0:
            continue
        segment = live_traffic(rate, count, users=users, seed=7 + index)
        if not events:
            base_ms = segment[0].event_time_ms
        fit(segment, base_ms + round(start_s * 1000), seconds * 1000)
        events += segment
    return events


def fit(events: list[Event], start_ms: int, span_ms: float) -> None:
    """Shift and stretch event times (in place) so that the first event is at `start_ms`
    and `len(events)` of them fill `span_ms` at an even rate; a late delivery of an event
    from before the first stays at `start_ms`."""
    unique = list({id(event): event for event in events}.values())
    first = events[0].event_time_ms
    last = max(event.event_time_ms for event in unique)
    scale = span_ms * (len(events) - 1) / len(events) / max(last - first, 1)
    for event in unique:
        event.event_time_ms = start_ms + max(0, round((event.event_time_ms - first) * scale))


class Scheduled:
    """How many interactions the schedule has sent by a time (background from the plan,
    probes as counted by the sender), and how many messages are interactions."""

    def __init__(self, schedule: Schedule, is_interaction: npt.NDArray[np.bool_]) -> None:
        send_at = np.array([message[2] for message in schedule.messages], dtype=np.float64)
        self.origin = float(send_at[0])  # epoch s of the plan's t = 0
        # `send_traffic` sends in order: a message goes once every one before it has, so
        # a late delivery (an older event time) goes at its predecessors' time.
        self.send_t = np.maximum.accumulate(send_at - self.origin)
        self.interactions = np.cumsum(is_interaction, dtype=np.int64)

    def background_by(self, t: float) -> int:
        """Background interactions the schedule had sent by `t` (s after the origin)."""
        sent = int(np.searchsorted(self.send_t, t, side="right"))
        return self.of_first(sent)

    def of_first(self, messages: int) -> int:
        """Interactions among the first `messages` background messages."""
        return int(self.interactions[messages - 1]) if messages > 0 else 0


@dataclass
class Sample:
    t: float  # s after the traffic's start
    rss_mb: float  # the worker's resident memory
    worker_cpu_s: float
    # CPU seconds of the local stack's processes (absent: not local): who else was busy.
    stack_cpu_s: dict[str, float]
    applied: int  # interactions applied since the traffic started
    scheduled: int  # interactions the schedule had sent by `t` (probes: those sent)
    sent: int  # interactions handed to the producer by `t`
    sent_events: int  # events (with and without a product, probes included) handed to it

    @property
    def lag(self) -> int:
        return self.scheduled - self.applied


class Sampler(threading.Thread):
    """Every SAMPLE_EVERY_S, the worker's memory, CPU and applied count beside what was
    sent; prints a timeline line every TIMELINE_EVERY samples. A thread of the sending
    process: a few /proc reads and one Redis GET per sample, well under 1% of a core."""

    def __init__(
        self,
        iso: Isolated,
        *,
        worker_pid: int,
        scheduled: Scheduled,
        applied_before: int,
        background_sent: Synchronized[int],
        probes_sent: Synchronized[int],
    ) -> None:
        super().__init__(name="burst-sampler", daemon=True)
        self.samples: list[Sample] = []
        self.failure: BaseException | None = None
        self._iso = iso
        self._pid = worker_pid
        self._stack = stack_pids()
        self._scheduled = scheduled
        self._applied_before = applied_before
        self._background_sent = background_sent
        self._probes_sent = probes_sent
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        if self.failure is not None:
            raise RuntimeError("the sampler failed") from self.failure

    def run(self) -> None:
        try:
            next_at = time.monotonic()
            while not self._halt.is_set():
                self.samples.append(self.sample())
                if len(self.samples) % TIMELINE_EVERY == 0:
                    self.print_line()
                next_at += SAMPLE_EVERY_S
                self._halt.wait(max(0.0, next_at - time.monotonic()))
        except BaseException as exc:  # raised again by stop(); the worker may have exited
            print(f"  sampler stopped: {exc!r}", flush=True)
            self.failure = exc

    def sample(self) -> Sample:
        t = time.time() - self._scheduled.origin
        probes = self._probes_sent.value
        background = self._background_sent.value
        return Sample(
            t=round(t, 3),
            rss_mb=rss_mb(self._pid),
            worker_cpu_s=cpu_seconds(self._pid),
            stack_cpu_s={name: cpu_seconds(pid) for name, pid in self._stack.items()},
            applied=applied_count(self._iso) - self._applied_before,
            scheduled=self._scheduled.background_by(t) + probes,
            sent=self._scheduled.of_first(background) + probes,
            sent_events=background + probes,
        )

    def print_line(self) -> None:
        now, then = self.samples[-1], self.samples[max(0, len(self.samples) - 1 - TIMELINE_EVERY)]
        seconds = max(now.t - then.t, 1e-9)
        cpu = (now.worker_cpu_s - then.worker_cpu_s) / seconds
        print(
            f"  t={now.t:5.0f}s  sent {(now.sent - then.sent) / seconds:>7,.0f}/s  "
            f"applied {(now.applied - then.applied) / seconds:>7,.0f}/s  "
            f"lag {now.lag:>9,}  RSS {now.rss_mb:6.1f} MB  worker CPU {cpu:4.0%}",
            flush=True,
        )


def stack_pids() -> dict[str, int]:
    """The local stack's Kafka broker, Redis and Cassandra process ids (those running
    here): with the worker, what the two cores are shared by."""
    from infra.cassandra_server import CassandraService  # noqa: PLC0415
    from infra.services import RedisService  # noqa: PLC0415
    from infra.stack import load_config  # noqa: PLC0415

    config = load_config()
    pids = {
        "broker": broker_pid(),
        "redis": RedisService(config).pid(),
        "cassandra": CassandraService(config).pid(),
    }
    return {name: pid for name, pid in pids.items() if pid}


def sustained(args: argparse.Namespace) -> WorkerRun:
    """Phase 1: the same worker settings over a pre-produced backlog, on its own topic."""
    iso = Isolated.create("burst-base")
    try:
        print(f"phase 1: producing {args.sustained_events:,} events (backlog) ...", flush=True)
        produced = produce(iso.settings, args.sustained_events, users=args.users)
        print("phase 1: a worker over the backlog from the start ...", flush=True)
        return run_worker(
            iso,
            produced.events,
            produced.interactions,
            label="burst-sustained",
            source=ROOT,
            extra_env=args.worker_env,
            timeout_s=600,
        )
    finally:
        delete_app_topics(iso)
        iso.cleanup()


def delete_app_topics(iso: Isolated) -> None:
    """Delete the topics of apps named after this Isolated's app id: `run_worker` gives
    its worker its own (`<app id>-<label>`), whose Faust leader topics `cleanup()` does
    not know about."""
    from confluent_kafka.admin import AdminClient  # noqa: PLC0415

    from infra.topics import declared_topics  # noqa: PLC0415

    admin = AdminClient({"bootstrap.servers": iso.settings.kafka_bootstrap})
    prefix = f"{iso.settings.app_id}-"
    own = {spec.name for spec in declared_topics(iso.settings)}  # cleanup() deletes these
    names = [
        name
        for name in admin.list_topics(timeout=15).topics
        if name.startswith(prefix) and name not in own
    ]
    for future in admin.delete_topics(names, request_timeout=30).values() if names else ():
        future.result()


@dataclass
class BurstRun:
    """What phase 2 recorded; `summarise` turns it into the figures."""

    samples: list[Sample]
    probes: list[tuple[float, float | None]]  # (sent at t, ms to visible; None: never)
    scheduled_events: int
    background_sent: int
    probes_sent: int
    warm_messages: int  # wait_visible's probes, on the topic before the traffic
    on_topic: int  # messages on the events topic at the end
    interactions_produced: int  # warm-up probes + background interactions + probes
    applied: int  # the applied counter after the settle (warm-up probes included)
    dead_letters: int
    startup_s: float
    late_start_s: float  # how late the sender started after the schedule's first time
    traffic_end_t: float  # when the sender was done (plan time)
    peak_rss_mb: float  # the worker's VmHWM at the end: its peak, between samples too
    batch_max: int


def burst(iso: Isolated, plan: Plan, args: argparse.Namespace) -> BurstRun:  # noqa: PLR0915
    """Phase 2: the piecewise traffic, probes and samples against a fresh worker."""
    settings = Settings.load(
        **{
            key.removeprefix("SIGNALS_").lower(): value
            for key, value in {**iso.env, **args.worker_env}.items()
            if key != "SIGNALS_LAST_K"
        }
    )
    counts = [round(rate * seconds) for _, seconds, rate in plan.segments()]
    print(f"phase 2: generating {sum(counts):,} events ({' + '.join(map(str, counts))}) ...")
    began = time.perf_counter()
    events = burst_traffic(plan, args.users)
    is_interaction = np.fromiter(
        (interaction_of(event) is not None for event in events), dtype=np.bool_, count=len(events)
    )
    print(f"  generated in {time.perf_counter() - began:.0f} s", flush=True)

    ctx = mp.get_context("spawn")
    probes_sent, seen, stop = ctx.Value("q", 0), ctx.Value("q", 0), ctx.Event()
    background_sent = ctx.Value("q", 0)
    visible_out: mp.Queue[dict[int, float]] = ctx.Queue()
    poller = ctx.Process(
        target=poll_redis,
        kwargs={
            "redis_url": settings.redis_url,
            "prefix": settings.redis_key_prefix,
            "sent": probes_sent,
            "seen": seen,
            "stop": stop,
            "out": visible_out,
        },
    )
    with WorkerProcess({**iso.env, **args.worker_env}, label="burst") as worker:
        print("worker starting (warm-up probes until one is visible) ...", flush=True)
        startup_s = wait_visible(iso, worker)
        print("encoding the traffic ...", flush=True)
        schedule = Schedule.encode(events)
        scheduled_events = len(events)
        del events  # the encoded messages are all the sender needs
        gc.collect()
        scheduled = Scheduled(schedule, is_interaction)
        warm = end_offsets(settings, settings.events_topic)
        poller.start()
        sampler = Sampler(
            iso,
            worker_pid=worker.pid,
            scheduled=scheduled,
            applied_before=warm,  # the lag counts warm-up probes not yet applied
            background_sent=background_sent,
            probes_sent=probes_sent,
        )
        try:
            late_start_s = max(0.0, time.time() - scheduled.origin)
            if late_start_s > 0:
                print(f"  the sender starts {late_start_s:.1f} s after the schedule's start")
            print(
                f"sending: {plan.rate:,.0f}/s for {plan.steady_s:g} s, "
                f"{plan.rate * plan.factor:,.0f}/s for {plan.burst_s:g} s, "
                f"{plan.rate:,.0f}/s for {plan.after_s:g} s, a probe every 20 ms; "
                "rates in interactions/s, lag = scheduled - applied",
                flush=True,
            )
            sampler.start()
            # Slack: a producer behind schedule still sends everything.
            sent_at, background, _ = send_traffic(
                iso, schedule, plan.total_s + 60, probes_sent, seen, progress=background_sent
            )
            traffic_end_t = time.time() - scheduled.origin
            interactions = warm + scheduled.of_first(background) + len(sent_at)
            print("traffic done; waiting for the worker to apply the rest ...", flush=True)
            wait_applied(iso, worker, interactions)
            time.sleep(max(2.0, 2 * settings.commit_interval_s))  # the settle
            applied = applied_count(iso)
            wait_for_seen(seen, len(sent_at))
            stop.set()
            visible = visible_out.get(timeout=30)
            if not worker.alive():
                raise RuntimeError(f"worker exited during the run; log:\n{worker.tail()}")
            peak_rss = peak_rss_mb(worker.pid)
        finally:
            stop.set()
            stop_process(poller)
            if sampler.ident is not None:  # started
                sampler.stop()
        on_topic = end_offsets(settings, settings.events_topic)
        dead_letters = end_offsets(settings, settings.dead_letter_topic)

    # Probe times on the plan's clock: the sender and the poller use CLOCK_MONOTONIC.
    to_plan = time.time() - time.monotonic() - scheduled.origin
    probes = [
        (
            round(at + to_plan, 3),
            round((visible[n] - at) * 1000, 1) if n in visible else None,
        )
        for n, at in enumerate(sent_at)
    ]
    return BurstRun(
        samples=sampler.samples,
        probes=probes,
        scheduled_events=scheduled_events,
        background_sent=background,
        probes_sent=len(sent_at),
        warm_messages=warm,
        on_topic=on_topic,
        interactions_produced=interactions,
        applied=applied,
        dead_letters=dead_letters,
        startup_s=startup_s,
        late_start_s=late_start_s,
        traffic_end_t=traffic_end_t,
        peak_rss_mb=peak_rss,
        batch_max=settings.batch_max,
    )


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of a process so far in MB (VmHWM, Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmHWM for pid {pid}")


def wait_applied(iso: Isolated, worker: WorkerProcess, expected: int) -> None:
    """Until the applied counter reaches `expected`, the worker exits, or nothing more is
    applied for STALL_S (then the shortfall is reported as lost, not raised)."""
    last, last_change = -1, time.monotonic()
    while True:
        count = applied_count(iso)
        if count >= expected:
            return
        if not worker.alive():
            raise RuntimeError(f"worker exited; log:\n{worker.tail()}")
        now = time.monotonic()
        if count != last:
            last, last_change = count, now
        elif now - last_change > STALL_S:
            print(f"  nothing applied for {STALL_S:.0f} s: {count:,} of {expected:,}")
            return
        time.sleep(0.2)


def nearest(samples: list[Sample], t: float) -> Sample:
    """The first sample at or after `t` (the last one if none)."""
    return next((s for s in samples if s.t >= t), samples[-1])


def rate_between(samples: list[Sample], start: float, end: float, field: str) -> float:
    """Mean per second of a counter (a Sample field) from the first sample at or after
    `start` to the last one at or before `end`."""
    inside = [s for s in samples if start <= s.t <= end]
    if len(inside) < 2:
        return math.nan
    a, b = inside[0], inside[-1]
    return float(getattr(b, field) - getattr(a, field)) / (b.t - a.t)


def window_p99(probes: list[tuple[float, float | None]], times: list[float], end: float) -> float:
    """p99 (nearest rank) of the probes sent in (end - WINDOW_S, end]; never seen = inf."""
    lo, hi = bisect.bisect_right(times, end - WINDOW_S), bisect.bisect_right(times, end)
    window = sorted(math.inf if ms is None else ms for _, ms in probes[lo:hi])
    return window[max(0, math.ceil(0.99 * len(window)) - 1)] if window else math.nan


def summarise(
    plan: Plan, base: WorkerRun, run: BurstRun, worker_env: dict[str, str]
) -> dict[str, Any]:
    """The issue's figures from the samples and probes."""
    samples, probes, batch = run.samples, run.probes, run.batch_max
    sustained_rate = base.interactions_per_s

    # Freshness in the steady phase (after the warm-up): the level to come back to.
    def fresh_in(start: float, end: float) -> dict[str, float]:
        return percentiles([ms for t, ms in probes if start <= t < end and ms is not None])

    steady = fresh_in(plan.warmup_s, plan.burst_start)
    threshold = TOLERANCE * steady["p99_ms"]

    # Catch-up: consecutive samples, both with more than a batch of lag, from the burst on.
    behind = [
        (a, b)
        for a, b in itertools.pairwise(samples)
        if a.t >= plan.burst_start and a.lag > batch and b.lag > batch
    ]

    def catch_up(pairs: list[tuple[Sample, Sample]]) -> tuple[float, dict[str, float], float]:
        """(applied/s, CPU share of the worker and the stack's processes, seconds) over
        these sample pairs."""
        seconds = sum(b.t - a.t for a, b in pairs)
        if seconds <= 0:
            return math.nan, {}, 0.0
        applied = sum(b.applied - a.applied for a, b in pairs)
        cpu = {"worker": sum(b.worker_cpu_s - a.worker_cpu_s for a, b in pairs)}
        for name in pairs[0][0].stack_cpu_s:
            cpu[name] = sum(b.stack_cpu_s[name] - a.stack_cpu_s[name] for a, b in pairs)
        return applied / seconds, {k: round(v / seconds, 3) for k, v in cpu.items()}, seconds

    rate_all, cpu_all, behind_s = catch_up(behind)
    rate_burst, _, behind_burst_s = catch_up([p for p in behind if p[0].t < plan.burst_end])
    rate_after, _, behind_after_s = catch_up([p for p in behind if p[0].t >= plan.burst_end])
    peak_lag = max(samples, key=lambda s: s.lag)

    # Drained: the first sample from the burst's end on with at most a batch of lag.
    drained = next((s for s in samples if s.t >= plan.burst_end and s.lag <= batch), None)
    drain_s = drained.t - plan.burst_end if drained else math.nan
    # Drained only once no more traffic came: faster than under steady traffic, and no
    # probes left to see freshness come back.
    drained_late = drained is None or drained.t > run.traffic_end_t

    # Freshness back: the first trailing window ending at or after the drain with its
    # p99 at or below the threshold.
    recovery_s = math.nan
    times = [t for t, _ in probes]
    if drained is not None and not math.isnan(threshold):
        for t in times[bisect.bisect_left(times, drained.t) :]:
            if window_p99(probes, times, t) <= threshold:
                recovery_s = t - drained.t
                break
    recovered_at = drained.t + recovery_s if drained and not math.isnan(recovery_s) else None
    if not math.isnan(recovery_s):
        recovery_met: bool | None = recovery_s <= TARGET_RECOVERY_S
    else:  # not back within the run: a failure only if the run left it 30 s to come back
        observed = run.traffic_end_t - drained.t if drained else 0.0
        recovery_met = False if observed >= TARGET_RECOVERY_S else None

    # Memory over the burst.
    at_start = nearest(samples, plan.burst_start)
    at_middle = nearest(samples, plan.burst_start + plan.burst_s / 2)
    at_end = nearest(samples, plan.burst_end)
    first_half = at_middle.rss_mb - at_start.rss_mb
    second_half = at_end.rss_mb - at_middle.rss_mb
    peak = max(samples, key=lambda s: s.rss_mb)
    bounded = second_half <= max(BOUNDED_NOISE_MB, BOUNDED_SHARE * first_half)

    producer_behind = max(samples, key=lambda s: s.scheduled - s.sent)
    lost = run.interactions_produced - run.applied
    probes_lost = sum(1 for t, ms in probes if ms is None and t >= plan.warmup_s)
    ratio = rate_all / sustained_rate if sustained_rate > 0 else math.nan
    return {
        "plan": asdict(plan),
        "worker_settings": worker_env,
        "batch_max": batch,
        "sustained": base.summary(),
        "sustained_interactions_per_s": round(sustained_rate),
        "sent_events_per_s": {
            name: whole(rate_between(samples, start, start + seconds, "sent_events"))
            for name, (start, seconds, _) in zip(
                ("steady", "burst", "after"), plan.segments(), strict=True
            )
        },
        "producer_behind_max": {
            "interactions": producer_behind.scheduled - producer_behind.sent,
            "t": producer_behind.t,
        },
        "late_start_s": round(run.late_start_s, 2),
        "peak_lag": {"interactions": peak_lag.lag, "t": peak_lag.t},
        "catch_up": {
            "interactions_per_s": round(rate_all) if behind else None,
            "vs_sustained": round(ratio, 3) if behind else None,
            "cpu_share": cpu_all,  # of one core, while behind: the worker and the stack
            "seconds_behind": round(behind_s, 1),
            "during_burst_per_s": round(rate_burst) if behind_burst_s else None,
            "after_burst_per_s": round(rate_after) if behind_after_s else None,
            "target_vs_sustained": TARGET_CATCH_UP,
            "met": bool(ratio >= TARGET_CATCH_UP) if behind else None,
        },
        "drain_s": None if math.isnan(drain_s) else round(drain_s, 1),
        "drained_at_t": drained.t if drained else None,
        "drained_after_traffic": drained_late,
        "traffic_ended_t": round(run.traffic_end_t, 2),
        "freshness": {
            "steady": steady,
            "burst": fresh_in(plan.burst_start, plan.burst_end),
            "after_recovery": (
                fresh_in(recovered_at, math.inf) if recovered_at is not None else None
            ),
            "threshold_ms": round(threshold, 1),
            "tolerance": TOLERANCE,
            "window_s": WINDOW_S,
            "recovery_s": None if math.isnan(recovery_s) else round(recovery_s, 2),
            "target_recovery_s": TARGET_RECOVERY_S,
            "met": recovery_met,
        },
        "rss_mb": {
            "peak": peak.rss_mb,
            "peak_t": peak.t,
            "peak_vmhwm": run.peak_rss_mb,
            "burst_start": at_start.rss_mb,
            "burst_middle": at_middle.rss_mb,
            "burst_end": at_end.rss_mb,
            "growth_first_half": round(first_half, 1),
            "growth_second_half": round(second_half, 1),
            "bounded": bounded,
        },
        "scheduled_events": run.scheduled_events,
        "background_sent": run.background_sent,
        "probes_sent": run.probes_sent,
        "probes_lost": probes_lost,
        "warm_messages": run.warm_messages,
        "on_topic": run.on_topic,
        "delivered_all": run.on_topic == run.warm_messages + run.background_sent + run.probes_sent,
        "interactions_produced": run.interactions_produced,
        "applied": run.applied,
        "lost": lost,
        "dead_letters": run.dead_letters,
        "worker_startup_s": round(run.startup_s, 2),
        "samples": [asdict(s) for s in samples],
        "probes": probes,
    }


def whole(value: float) -> int | None:
    """A rate for the JSON: rounded, None when there was nothing to measure."""
    return None if math.isnan(value) else round(value)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else "PASS" if ok else "not met"


def report(r: dict[str, Any]) -> None:
    plan, catch, fresh, rss = r["plan"], r["catch_up"], r["freshness"], r["rss_mb"]
    sent = r["sent_events_per_s"]
    table = Table(
        f"burst: {plan['rate']:,.0f} events/s for {plan['steady_s']:g} s, "
        f"{plan['factor']:g}x for {plan['burst_s']:g} s, then {plan['after_s']:g} s; "
        f"one worker, batch {r['batch_max']:,}"
    )
    table.add(
        "sustained ingest (phase 1, backlog)",
        r["sustained_interactions_per_s"],
        "interactions/s",
        f"{r['sustained']['events']:,} events from the start, same settings",
    )
    for phase, asked in (
        ("steady", plan["rate"]),
        ("burst", plan["rate"] * plan["factor"]),
        ("after", plan["rate"]),
    ):
        rate = math.nan if sent[phase] is None else sent[phase]
        table.add(f"sent, {phase}", rate, "events/s", f"asked {asked:,.0f} + probes")
    behind = r["producer_behind_max"]
    table.add(
        "producer behind schedule, max",
        behind["interactions"],
        "interactions",
        f"at t={behind['t']:.0f} s (in the lag below too)",
    )
    table.add(
        "peak lag",
        r["peak_lag"]["interactions"],
        "interactions",
        f"at t={r['peak_lag']['t']:.0f} s",
    )
    if catch["interactions_per_s"] is None:
        table.add("catch-up rate", "-", "", "the lag never exceeded a batch: the worker kept up")
    else:
        table.add(
            "catch-up rate (lag > 1 batch)",
            catch["interactions_per_s"],
            "interactions/s",
            f"{catch['vs_sustained']:.2f}x sustained (target >= {TARGET_CATCH_UP}x): "
            f"{verdict(catch['met'])}; over {catch['seconds_behind']:.1f} s",
        )
        shares = catch["cpu_share"]
        table.add(
            "  worker CPU while behind",
            round(100 * shares["worker"], 1),
            "% of a core",
            ", ".join(f"{name} {share:.0%}" for name, share in shares.items() if name != "worker"),
        )
        for key, what in (("during_burst_per_s", "during"), ("after_burst_per_s", "after")):
            if catch[key] is not None:
                table.add(f"  catch-up {what} the burst", catch[key], "interactions/s")
    table.add(
        "lag drained after the burst's end",
        math.nan if r["drain_s"] is None else r["drain_s"],
        "s",
        "not drained while sampling"
        if r["drain_s"] is None
        else f"to <= 1 batch, at t={r['drained_at_t']:.0f} s"
        + (
            f", after the traffic ended at t={r['traffic_ended_t']:.0f} s: use a longer --after"
            if r["drained_after_traffic"]
            else ""
        ),
    )
    steady = fresh["steady"]
    table.add(
        "steady freshness p99",
        steady["p99_ms"],
        "ms",
        f"p50 {steady['p50_ms']:.1f} ms, {steady['n']} probes after the warm-up",
    )
    table.add(
        "freshness during the burst, p99",
        fresh["burst"]["p99_ms"],
        "ms",
        f"max {fresh['burst']['max_ms']:,.0f} ms",
    )
    table.add(
        "freshness back to steady after the drain",
        math.nan if fresh["recovery_s"] is None else fresh["recovery_s"],
        "s",
        f"trailing {WINDOW_S:g} s p99 <= {TOLERANCE}x steady = {fresh['threshold_ms']:.1f} ms "
        f"(target <= {TARGET_RECOVERY_S:.0f} s): {verdict(fresh['met'])}"
        + (
            "; not back before the traffic ended"
            if fresh["recovery_s"] is None and not r["drained_after_traffic"]
            else ""
        ),
    )
    if fresh["after_recovery"]:
        after = fresh["after_recovery"]
        table.add("  freshness after that, p99", after["p99_ms"], "ms", f"{after['n']} probes")
    table.add(
        "worker RSS peak",
        rss["peak"],
        "MB",
        f"sampled, at t={rss['peak_t']:.0f} s; VmHWM {rss['peak_vmhwm']:.1f} MB",
    )
    table.add(
        "worker RSS at burst start / middle / end",
        f"{rss['burst_start']:.1f} / {rss['burst_middle']:.1f} / {rss['burst_end']:.1f}",
        "MB",
    )
    table.add(
        "RSS growth, burst's first / second half",
        f"{rss['growth_first_half']:+.1f} / {rss['growth_second_half']:+.1f}",
        "MB",
        f"bounded (second <= max({BOUNDED_NOISE_MB:g} MB, {BOUNDED_SHARE:g}x first)): "
        f"{verdict(rss['bounded'])}",
    )
    table.add(
        "interactions applied",
        r["applied"],
        "",
        f"of {r['interactions_produced']:,} produced (lost {r['lost']:,}): "
        f"{verdict(r['lost'] == 0)}",
    )
    table.add(
        "messages on the events topic",
        r["on_topic"],
        "",
        f"{r['warm_messages']:,} warm-up + {r['background_sent']:,} of "
        f"{r['scheduled_events']:,} background + {r['probes_sent']:,} probes: "
        f"{verdict(r['delivered_all'])}",
    )
    table.add("dead letters", r["dead_letters"], "", verdict(r["dead_letters"] == 0))
    table.add("probes never visible", r["probes_lost"], "", "after the warm-up")
    table.add("worker startup (to first visible)", r["worker_startup_s"], "s")
    table.print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="A sale-day burst against one worker: steady, factor x, steady again; "
        "memory, loss, dead letters, lag drain and freshness recovery, beside the worker's "
        "sustained rate on a backlog (same run).",
        epilog="Writes bench/results/burst.json. Needs the local stack (started if not up).",
    )
    parser.add_argument("--rate", type=float, default=5000, help="steady events/s (5000)")
    parser.add_argument("--steady", type=float, default=30, help="seconds before the burst (30)")
    parser.add_argument("--burst", type=float, default=60, help="seconds of burst (60)")
    parser.add_argument("--factor", type=float, default=10, help="burst rate / steady (10)")
    parser.add_argument("--after", type=float, default=120, help="steady seconds after (120)")
    parser.add_argument(
        "--warmup", type=float, default=5, help="seconds of traffic before probes count (5)"
    )
    parser.add_argument("--users", type=int, default=50_000, help="distinct users (50000)")
    parser.add_argument(
        "--sustained-events",
        type=int,
        default=200_000,
        help="events of the phase 1 backlog (200000)",
    )
    parser.add_argument(
        "--env",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="extra setting for the workers (SIGNALS_ prefix optional)",
    )
    args = parser.parse_args(argv)
    try:
        args.worker_env = parse_env(args.env)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if min(args.rate, args.burst, args.factor, args.after, args.sustained_events) <= 0:
        parser.error("--rate, --burst, --factor, --after and --sustained-events must be positive")
    if not 0 <= args.warmup < args.steady:
        parser.error("--warmup must be at least 0 and shorter than --steady")
    plan = Plan(args.rate, args.steady, args.burst, args.factor, args.after, args.warmup)

    print("local stack ...", flush=True)
    ensure_stack()
    wait_until_quiet()
    base = sustained(args)
    print(f"  sustained: {base.interactions_per_s:,.0f} interactions/s", flush=True)
    wait_until_quiet()  # phase 1's cleanup (Redis freeing keys, a dropped keyspace)
    iso = Isolated.create("burst")
    try:
        run = burst(iso, plan, args)
    finally:
        iso.cleanup()
    result = summarise(plan, base, run, args.worker_env)
    report(result)
    path = write_results("burst", result)
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
