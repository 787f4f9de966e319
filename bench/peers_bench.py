"""Ingest against the peers: the same topic, the same last-k sorted sets, one program at a time.

Every program consumes one pre-produced events topic (production partition count) from
the beginning in its own consumer group and keeps each user's last k products per event
type in Redis under the hot tier's layout (ZADD GT, trim to k, one pipeline or script
call per batch, offsets committed after the write). The programs:

  - this project's worker, with the interaction store alone, and with features and
    triggers on (`signals worker`);
  - a hand-written loop: confluent-kafka `consume()`, fastavro, a redis-py pipeline
    (`bench/peers/loop_peer.py`);
  - a Faust agent, `stream.take()` and a redis.asyncio pipeline (`bench/peers/faust_peer.py`);
  - Quix Streams with a BatchingSink (`bench/peers/quix_peer.py`; installed for the
    benchmark only, in `.venv-peers`).

They run one at a time, in alternating order over `--rounds` rounds (the machine's drift
does not land on one side). Each run's rate is sustained (first applied batch to the
last, so startup and group join are excluded), with the CPU the program and the Redis
server spent between those two points, per event. Afterwards a sample of users' sorted
sets are compared with the oracle (`schemas.hot_layout.reference_last_k` over the
topic's events): a program that is fast but wrong shows up as such. The raw ceilings of
both Kafka client libraries are measured on the same topic.

    .venv/bin/python bench/peers_bench.py [--events 200000] [--rounds 2] [--only NAME ...]
        [--compare REF ...]

Prints a table and writes bench/results/peers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    RESULTS_DIR,
    ROOT,
    Isolated,
    Table,
    WorkerProcess,
    cpu_seconds,
    ensure_stack,
    exported_tree,
    parse_env,
    produce,
    raw_aiokafka_consume,
    raw_confluent_consume,
    wait_until_quiet,
    write_results,
)

from schemas.events import Event, EventType
from schemas.hot_layout import Item, hot_key, reference_last_k
from streams.settings import Settings

POLL_S = 0.02
PEERS_DIR = ROOT / "bench" / "peers"
OURS = "our worker, interaction store only"
OURS_FULL = "our worker + features + triggers"
LOOP = "hand-written confluent-kafka loop"
FAUST = "Faust agent"
QUIX = "Quix Streams"
BARE_PEERS = (LOOP, FAUST, QUIX)


@dataclass
class Run:
    program: str
    round: int
    events: int  # events consumed between the first applied batch and the last
    seconds: float
    program_cpu_s: float
    redis_cpu_s: float
    startup_s: float
    keys_checked: int
    keys_wrong: int
    redis_commands: dict[str, dict[str, float]]

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("nan")

    @property
    def program_us_per_event(self) -> float:
        return self.program_cpu_s / self.events * 1e6

    @property
    def redis_us_per_event(self) -> float:
        return self.redis_cpu_s / self.events * 1e6

    def summary(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "events_per_s": round(self.events_per_s),
            "program_us_per_event": round(self.program_us_per_event, 2),
            "redis_us_per_event": round(self.redis_us_per_event, 2),
        }


@dataclass(frozen=True)
class Program:
    """How to start one program against a run's consumer group and key prefix."""

    name: str
    #: (group, prefix) -> (argv or None for `signals worker`, extra environment)
    start: Callable[[str, str], tuple[list[str] | None, dict[str, str]]]
    #: The source tree `signals worker` runs from (another commit's for `--compare`).
    source: Path = ROOT


def programs(
    settings: Settings,
    peers_python: Path | None,
    worker_env: dict[str, str],
    compared: Mapping[str, Path] | None = None,
) -> list[Program]:
    """Every program; `compared` (git ref -> its exported tree) adds our worker at those
    commits, interaction store only, for a before/after in the same run."""
    last_k = json.dumps({kind.value: k for kind, k in settings.last_k.items()})

    def peer(script: str, python: str) -> Callable[[str, str], tuple[list[str], dict[str, str]]]:
        def start(group: str, prefix: str) -> tuple[list[str], dict[str, str]]:
            return [
                python,
                str(PEERS_DIR / script),
                "--bootstrap",
                settings.kafka_bootstrap,
                "--topic",
                settings.events_topic,
                "--group",
                group,
                "--redis-url",
                settings.redis_url,
                "--prefix",
                prefix,
                "--last-k",
                last_k,
            ], {}

        return start

    def ours(features: bool) -> Callable[[str, str], tuple[None, dict[str, str]]]:
        flag = "true" if features else "false"

        def start(group: str, prefix: str) -> tuple[None, dict[str, str]]:
            return None, {
                "SIGNALS_APP_ID": group,
                "SIGNALS_REDIS_KEY_PREFIX": prefix,
                "SIGNALS_TRIGGER_TOPIC": f"{settings.trigger_topic}-{group}",
                "SIGNALS_FEATURES_ENABLED": flag,
                "SIGNALS_TRIGGERS_ENABLED": flag,
                **worker_env,
            }

        return start

    found = [
        *(
            Program(f"{name} @{ref}", ours(features=name == OURS_FULL), source=tree)
            for ref, tree in (compared or {}).items()
            for name in (OURS, OURS_FULL)
        ),
        Program(OURS, ours(features=False)),
        Program(OURS_FULL, ours(features=True)),
        Program(LOOP, peer("loop_peer.py", sys.executable)),
        Program(FAUST, peer("faust_peer.py", sys.executable)),
    ]
    if peers_python is not None:
        found.append(Program(QUIX, peer("quix_peer.py", str(peers_python))))
    return found


def redis_cpu_seconds(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def command_stats(client: Any) -> dict[str, tuple[int, int]]:
    """Redis's per-command totals so far: command -> (calls, microseconds)."""
    return {
        name.removeprefix("cmdstat_"): (int(stats["calls"]), int(stats["usec"]))
        for name, stats in client.info("commandstats").items()
    }


def command_time(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], events: int
) -> dict[str, dict[str, float]]:
    """What each command cost Redis between two readings, per event, busiest first (a
    script's commands count both under their own names and within EVALSHA)."""
    spent = {
        name: (calls - before.get(name, (0, 0))[0], usec - before.get(name, (0, 0))[1])
        for name, (calls, usec) in after.items()
    }
    busy = sorted(((n, c, u) for n, (c, u) in spent.items() if u > 0), key=lambda r: -r[2])
    return {
        name: {
            "calls_per_1000_events": round(1000 * calls / events, 1),
            "us_per_event": round(usec / events, 3),
        }
        for name, calls, usec in busy
    }


def topic_events(settings: Settings) -> list[Event]:
    """Every event on the topic, read back (the oracle's input: what the programs read)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition  # noqa: PLC0415

    from schemas.codec import decode_event  # noqa: PLC0415

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "oracle"})
    try:
        partitions = range(settings.events_partitions)
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(settings.events_topic, p))[1]
            for p in partitions
        }
        consumer.assign(
            [TopicPartition(settings.events_topic, p, OFFSET_BEGINNING) for p in partitions]
        )
        events: list[Event] = []
        remaining = sum(ends.values())
        while remaining > 0:
            for message in consumer.consume(10_000, timeout=1.0):
                if message.error() is None:
                    events.append(decode_event(message.value()))
                    remaining -= 1
        return events
    finally:
        consumer.close()


Oracle = dict[tuple[str, EventType], list[Item]]


def sample_oracle(events: list[Event], settings: Settings, users: int, seed: int = 1) -> Oracle:
    everyone = sorted({event.user_id for event in events})
    chosen = set(random.Random(seed).sample(everyone, min(users, len(everyone))))
    expected = reference_last_k((e for e in events if e.user_id in chosen), settings.last_k)
    # Every sampled user's every type: a list that must be empty is checked too.
    return {
        (user, kind): expected.get((user, kind), []) for user in chosen for kind in settings.last_k
    }


def wrong_keys(client: Any, prefix: str, oracle: Oracle) -> int:
    """How many of the oracle's sorted sets this program's Redis state gets wrong."""
    pipe = client.pipeline(transaction=False)
    keys = list(oracle)
    for user, kind in keys:
        pipe.zrevrange(hot_key(prefix, user, kind), 0, -1, withscores=True)
    wrong = 0
    for key, rows in zip(keys, pipe.execute(), strict=True):
        got = [(member.decode(), int(score)) for member, score in rows]
        wrong += got != oracle[key]
    return wrong


def run_program(
    program: Program,
    iso: Isolated,
    *,
    events: int,
    interactions: int,
    oracle: Oracle,
    round_number: int,
    timeout_s: float,
    profile: bool = False,
) -> Run:
    import redis  # noqa: PLC0415

    from infra.namespace import delete_redis_keys  # noqa: PLC0415
    from infra.topics import apply_topics, declared_topics, delete_topics  # noqa: PLC0415

    base = iso.settings
    # Names may share their first 24 characters (`--compare`): the digest keeps groups apart.
    digest = hashlib.sha1(program.name.encode(), usedforsecurity=False).hexdigest()[:6]
    suffix = re.sub(r"[^a-z0-9]+", "-", program.name.lower()).strip("-")[:24] + "-" + digest
    group = f"{base.app_id}-{suffix}-{round_number}"
    prefix = f"{base.redis_key_prefix}-{suffix}-{round_number}"
    argv, extra_env = program.start(group, prefix)
    env = {**iso.env, **extra_env}
    settings = Settings.load(
        **{k.removeprefix("SIGNALS_").lower(): v for k, v in env.items() if k != "SIGNALS_LAST_K"}
    )
    if argv is None:
        apply_topics(settings)  # the run's trigger topic and Faust leader topic
    client = redis.Redis.from_url(base.redis_url)
    stats_key = f"{prefix}:stats:applied"
    try:
        with (
            WorkerProcess(
                env, label=suffix, argv=argv, loglevel="warning", source=program.source
            ) as process,
            profiled(process.pid, suffix, enabled=profile),
        ):
            started = time.perf_counter()
            deadline = started + timeout_s
            first_t = 0.0
            first_count = 0
            cpu_first = redis_first = 0.0
            stats_first: dict[str, tuple[int, int]] = {}
            while True:
                now = time.perf_counter()
                count = int(client.get(stats_key) or 0)
                if count and not first_t:
                    first_t, first_count = now, count
                    cpu_first, redis_first = cpu_seconds(process.pid), redis_cpu_seconds(client)
                    stats_first = command_stats(client)
                if count >= interactions:
                    cpu_last, redis_last = cpu_seconds(process.pid), redis_cpu_seconds(client)
                    stats_last = command_stats(client)
                    break
                if not process.alive():
                    raise RuntimeError(f"{program.name} exited; log:\n{process.tail()}")
                if now > deadline:
                    raise RuntimeError(
                        f"{program.name}: {count}/{interactions} applied after "
                        f"{timeout_s:.0f}s; log:\n{process.tail()}"
                    )
                time.sleep(POLL_S)
            wrong = wrong_keys(client, prefix, oracle)
        remaining = interactions - first_count
        counted = round(events * remaining / interactions)
        return Run(
            program=program.name,
            round=round_number,
            events=counted,
            seconds=now - first_t,
            program_cpu_s=cpu_last - cpu_first,
            redis_cpu_s=redis_last - redis_first,
            startup_s=first_t - started,
            keys_checked=len(oracle),
            keys_wrong=wrong,
            redis_commands=command_time(stats_first, stats_last, counted),
        )
    finally:
        client.close()
        delete_redis_keys(base, pattern=f"{prefix}*")
        if argv is None:
            delete_topics(
                settings,
                [s for s in declared_topics(settings) if s.name == settings.trigger_topic],
            )


@contextlib.contextmanager
def profiled(pid: int, name: str, *, enabled: bool) -> Iterator[None]:
    """With `enabled`, py-spy samples the process while the block runs, into
    bench/results/profile-<name>.txt (collapsed stacks: one line per stack and its count),
    and the functions that spent the most time themselves are printed."""
    if not enabled:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out = RESULTS_DIR / f"profile-{name}.txt"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    command = [spy, "record", "--pid", str(pid), "--rate", "200", "--gil"]
    sampler = subprocess.Popen(
        [*command, "--format", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        sampler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        sampler.wait(timeout=60)
    if out.exists():
        print_top_frames(out)


def print_top_frames(collapsed: Path, top: int = 15) -> None:
    """The frames with the most samples at the top of their stack (self time)."""
    own: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        total += samples
        leaf = stack.rsplit(";", 1)[-1]
        own[leaf] = own.get(leaf, 0) + samples
    print(f"  profile ({total} samples, {collapsed.relative_to(ROOT)}): self time")
    for frame, samples in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {100 * samples / total:5.1f}%  {frame}")


def median_of(runs: list[Run], name: str, measure: Callable[[Run], float]) -> float:
    values = [measure(run) for run in runs if run.program == name]
    return statistics.median(values) if values else float("nan")


def ratios_of(
    rate: Mapping[str, float], redis_cpu: Mapping[str, float], compared: list[str]
) -> dict[str, float]:
    """The issue's ratios (and each `--compare` ref's) from the medians by program."""
    ratios: dict[str, float] = {}
    if OURS in rate and LOOP in rate:
        ratios["ours_vs_loop"] = rate[OURS] / rate[LOOP]
        ratios["ours_redis_cpu_vs_loop"] = redis_cpu[OURS] / redis_cpu[LOOP]
    bare = [rate[name] for name in BARE_PEERS if name in rate]
    if OURS_FULL in rate and bare:
        ratios["ours_full_vs_best_bare_peer"] = rate[OURS_FULL] / max(bare)
    if OURS_FULL in rate and OURS in rate:  # the features issue's ratio
        ratios["ours_full_vs_ours"] = rate[OURS_FULL] / rate[OURS]
    for ref in compared:
        for name, label in ((OURS, "ours"), (OURS_FULL, "ours_full")):
            before = f"{name} @{ref}"
            if name in rate and before in rate:
                ratios[f"{label}_vs_{ref}"] = rate[name] / rate[before]
                ratios[f"{label}_redis_cpu_vs_{ref}"] = redis_cpu[name] / redis_cpu[before]
    return ratios


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915  (a flat script)
    parser = argparse.ArgumentParser(
        description="Our worker against Faust, Quix Streams and a hand-written loop: "
        "the same topic, the same last-k sorted sets, one program at a time.",
        epilog="Writes bench/results/peers.json. Needs the local stack (started if not up).",
    )
    parser.add_argument("--events", type=int, default=200_000, help="events (default 200000)")
    parser.add_argument("--users", type=int, default=50_000, help="distinct users (default 50000)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, alternating order (2)")
    parser.add_argument("--sample", type=int, default=500, help="users checked per run (500)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run only programs whose name contains this (repeatable): our, loop, faust, quix",
    )
    parser.add_argument(
        "--compare",
        metavar="REF",
        action="append",
        default=[],
        help="also run our worker (store only, and with features and triggers) from this "
        "git ref, e.g. HEAD, for a before/after in the same run (repeatable; --only picks)",
    )
    parser.add_argument("--no-quix", action="store_true", help="skip Quix Streams (no install)")
    parser.add_argument(
        "--env",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="extra setting for our worker (SIGNALS_ prefix optional)",
    )
    parser.add_argument("--timeout", type=float, default=600, help="per run, seconds")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample each program with py-spy while it runs (bench/results/profile-*.txt)",
    )
    args = parser.parse_args(argv)
    if args.events <= 0 or args.rounds <= 0 or args.sample <= 0:
        parser.error("--events, --rounds and --sample must be positive")
    try:
        worker_env = parse_env(args.env)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))

    peers_python = None
    if not args.no_quix and (not args.only or any("quix" in o.lower() for o in args.only)):
        from peers.venv import ensure_peers_venv  # noqa: PLC0415

        peers_python = ensure_peers_venv()

    print("local stack ...", flush=True)
    ensure_stack()
    wait_until_quiet()
    iso = Isolated.create("peers")
    settings = iso.settings
    trees = contextlib.ExitStack()
    try:
        print(
            f"topic {settings.events_topic} ({settings.events_partitions} partitions); "
            f"producing {args.events:,} events ...",
            flush=True,
        )
        produced = produce(settings, args.events, users=args.users)
        print("reading the topic back for the oracle ...", flush=True)
        oracle = sample_oracle(topic_events(settings), settings, args.sample)

        print("raw ceilings ...", flush=True)
        raw_aio = asyncio.run(raw_aiokafka_consume(settings, produced.events, decode=False))
        raw_ck = raw_confluent_consume(settings, produced.events)

        compared = {ref: trees.enter_context(exported_tree(ref)) for ref in args.compare}
        chosen = [
            p
            for p in programs(settings, peers_python, worker_env, compared)
            if not args.only or any(o.lower() in p.name.lower() for o in args.only)
        ]
        runs: list[Run] = []
        for round_number in range(1, args.rounds + 1):
            order = chosen if round_number % 2 else list(reversed(chosen))
            for program in order:
                print(f"{program.name} (round {round_number}) ...", flush=True)
                run = run_program(
                    program,
                    iso,
                    events=produced.events,
                    interactions=produced.interactions,
                    oracle=oracle,
                    round_number=round_number,
                    timeout_s=args.timeout,
                    profile=args.profile,
                )
                runs.append(run)
                print(
                    f"  {run.events_per_s:,.0f} events/s, {run.program_us_per_event:.1f} us "
                    f"program + {run.redis_us_per_event:.1f} us Redis CPU per event, "
                    f"{run.keys_wrong}/{run.keys_checked} sorted sets wrong",
                    flush=True,
                )
                busiest = list(run.redis_commands.items())[:4]
                print(
                    "  Redis: "
                    + ", ".join(f"{name} {cost['us_per_event']:.2f} us" for name, cost in busiest),
                    flush=True,
                )
    finally:
        trees.close()
        iso.cleanup()

    table = Table(
        f"peers: {produced.events:,} events ({produced.interactions:,} with a product), "
        f"{settings.events_partitions} partitions, one program at a time, "
        f"medians of {args.rounds} rounds",
        head=("program", "events/s", "program CPU/event", "Redis CPU/event", "state", "rounds"),
        align="lrrrll",
    )
    names = [p.name for p in chosen]
    for name in names:
        mine = [r for r in runs if r.program == name]
        wrong = sum(r.keys_wrong for r in mine)
        table.add_row(
            name,
            round(median_of(runs, name, lambda r: r.events_per_s)),
            f"{median_of(runs, name, lambda r: r.program_us_per_event):.1f} us",
            f"{median_of(runs, name, lambda r: r.redis_us_per_event):.1f} us",
            "equal to the oracle" if wrong == 0 else f"{wrong} sorted sets wrong",
            ", ".join(f"{r.events_per_s:,.0f}" for r in mine),
        )
    table.add_row("raw aiokafka getmany(10000)", round(raw_aio.rate), "", "", "ceiling", "msg/s")
    table.add_row("raw confluent-kafka consume(10000)", round(raw_ck.rate), "", "", "ceiling", "")

    rate = {name: median_of(runs, name, lambda r: r.events_per_s) for name in names}
    redis_cpu = {name: median_of(runs, name, lambda r: r.redis_us_per_event) for name in names}
    ratios = ratios_of(rate, redis_cpu, args.compare)
    table.print()
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}x")
    path = write_results(
        "peers",
        {
            "events": produced.events,
            "interactions": produced.interactions,
            "partitions": settings.events_partitions,
            "rounds": args.rounds,
            "worker_env": worker_env,
            "users_checked": args.sample,
            "raw_aiokafka_msgs_per_s": round(raw_aio.rate),
            "raw_confluent_msgs_per_s": round(raw_ck.rate),
            "median_events_per_s": {k: round(v) for k, v in rate.items()},
            "ratios": {k: round(v, 3) for k, v in ratios.items()},
            "runs": [run.summary() for run in runs],
        },
    )
    print(f"wrote {path.relative_to(ROOT)}")
    wrong_total = sum(r.keys_wrong for r in runs)
    if wrong_total:
        print(f"{wrong_total} sorted sets differ from the oracle", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
