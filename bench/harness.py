"""Shared pieces of the benchmarks that run against the local stack.

One script per measurement (`bench/*_bench.py`) builds on these:

- `ensure_stack()`            the local stack is up (reused when running, started otherwise)
- `Isolated.create()`         a fresh topic, DLQ topic, consumer group, Redis key prefix and
                              CQL keyspace (migrated: the worker's cold tier needs it), with
                              the production partition count; `cleanup()` removes them all
- `produce()`                 synthetic events onto the isolated topic
- `live_traffic()`, `retime()` synthetic events generated up front, then shifted to start
                              now, for benches that send each event when its time comes
- `percentiles()`             p50/p95/p99/max of latency samples
- `cpu_seconds()`, `broker_pid()` CPU time of a process; the local Kafka broker's pid
- `raw_aiokafka_consume()`, `raw_confluent_consume()` the client libraries' ceilings
- `end_offsets()`            messages on a topic (its partitions' end offsets)
- `WorkerProcess`             `signals worker` as a subprocess with the isolated environment,
                              optionally from another source tree (a git ref, for before/after)
- `exported_tree()`           a git ref exported to a temporary folder
- `Table`, `write_results()`  the printed table and bench/results/<name>.json
- `read_results()`            a result written by another bench (for the combined summary)

Benchmarks compare against a baseline measured in the same run: the machine is shared, so
numbers from different runs are not comparable.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import itertools
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sinks.connectivity import aiokafka_options, kafka_config, redis_options  # noqa: E402
from streams.settings import Settings, state_dir  # noqa: E402

RESULTS_DIR = ROOT / "bench" / "results"
LOG_DIR = state_dir() / "logs"


def wait_until_quiet(
    idle_share: float = 0.75, timeout_s: float = 90.0, say: Callable[[str], None] = print
) -> float:
    """Wait until the machine is mostly idle (CPU idle >= `idle_share` over two 1 s samples
    in a row), so a benchmark does not measure the tail of the previous one's background
    work (Cassandra compacting, Redis freeing a deleted keyspace). Returns seconds waited;
    gives up after `timeout_s` and says so."""

    def cpu_times() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total

    started = time.monotonic()
    quiet_samples = 0
    idle, total = cpu_times()
    while quiet_samples < 2:
        if time.monotonic() - started > timeout_s:
            say(f"machine still busy after {timeout_s:.0f} s; measuring anyway")
            break
        time.sleep(1.0)
        idle2, total2 = cpu_times()
        share = (idle2 - idle) / max(total2 - total, 1)
        idle, total = idle2, total2
        quiet_samples = quiet_samples + 1 if share >= idle_share else 0
    waited = time.monotonic() - started
    if waited > 3:
        say(f"waited {waited:.0f} s for the machine to go quiet")
    return waited


def ensure_stack(say: Callable[[str], None] = lambda _line: None) -> None:
    """Reuse the running local stack (Redis and the broker answer), or start it (`./dev up`)."""
    if _stack_answers():
        return
    from infra.stack import load_config, up  # noqa: PLC0415

    up(load_config(), say=say)


def _stack_answers() -> bool:
    import socket  # noqa: PLC0415

    import redis  # noqa: PLC0415

    settings = Settings.load()
    try:
        client = redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=2, **redis_options(settings)
        )
        try:
            client.ping()
        finally:
            client.close()
        for server in settings.kafka_servers:
            host, _, port = server.rpartition(":")
            socket.create_connection((host, int(port)), timeout=2).close()
    except (OSError, redis.RedisError):
        return False
    return True


@dataclass(frozen=True)
class Isolated:
    """A benchmark's own topics, consumer group, Redis keys and keyspace on the shared stack.

    `cleanup()` deletes the Redis keys, the keyspace and the topics; it also runs at interpreter
    exit for anything a bench did not clean up (a failed run leaves nothing behind).
    """

    tag: str
    env: dict[str, str]
    settings: Settings

    @classmethod
    def create(
        cls, name: str, *, topics: bool = True, keyspace: bool = True, **overrides: str
    ) -> Isolated:
        """Provision a fresh, uniquely named topic set with the production partition count,
        and a migrated keyspace (a worker cannot start without one)."""
        from infra.topics import apply_topics  # noqa: PLC0415

        tag = f"{name}-{uuid.uuid4().hex[:8]}"
        env = {
            "SIGNALS_EVENTS_TOPIC": f"bench.events.{tag}",
            "SIGNALS_DEAD_LETTER_TOPIC": f"bench.dlq.{tag}",
            "SIGNALS_TRIGGER_TOPIC": f"bench.triggers.{tag}",
            "SIGNALS_APP_ID": f"bench-{tag}",
            "SIGNALS_REDIS_KEY_PREFIX": f"b{tag}",
            "SIGNALS_CQL_KEYSPACE": f"bench_{tag.replace('-', '_')}",
            # Absolute, so a worker started from another source tree finds the stack too.
            "SIGNALS_STATE_DIR": str(state_dir()),
            **overrides,
        }
        settings = Settings.load(
            **{key.removeprefix("SIGNALS_").lower(): value for key, value in env.items()}
        )
        iso = cls(tag, env, settings)
        atexit.register(iso.cleanup_in_subprocess)
        if topics:
            apply_topics(settings)
        if keyspace:
            iso.migrate()
        return iso

    def migrate(self) -> None:
        """Create the keyspace and apply the CQL migrations (as `signals-stack migrate`)."""
        from infra.migrate import apply_migrations  # noqa: PLC0415
        from sinks.cql import connect  # noqa: PLC0415

        cluster, session = connect(self.settings)
        try:
            apply_migrations(session, self.settings)
        finally:
            cluster.shutdown()

    def cleanup(self) -> None:
        """Delete the Redis keys, drop the keyspace and delete the topics. Removes the exit
        hook that would otherwise do it."""
        from infra.topics import delete_topics  # noqa: PLC0415

        self.cleanup_redis()
        self.drop_keyspace()
        delete_topics(self.settings)
        atexit.unregister(self.cleanup_in_subprocess)

    def cleanup_in_subprocess(self) -> None:
        """The exit hook: `cleanup()` in a fresh interpreter, because at exit the CQL
        driver can no longer start its threads (no new futures after shutdown begins)."""
        print(f"cleaning up {self.tag} (Redis keys, keyspace, topics) ...", flush=True)
        subprocess.run(
            [sys.executable, __file__, "cleanup"],
            cwd=ROOT,
            env={**os.environ, **self.env},
            check=False,
            timeout=120,
        )

    @classmethod
    def from_env(cls) -> Isolated:
        """The Isolated whose SIGNALS_* variables are in this process's environment."""
        settings = Settings.load()
        return cls(settings.redis_key_prefix, {}, settings)

    def drop_keyspace(self) -> None:
        from infra.namespace import drop_keyspace  # noqa: PLC0415

        drop_keyspace(self.settings)

    def cleanup_redis(self) -> None:
        """Delete the Redis keys of every prefix starting with the tag's prefix."""
        from infra.namespace import delete_redis_keys  # noqa: PLC0415

        delete_redis_keys(self.settings, pattern=f"{self.settings.redis_key_prefix}*")


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def broker_pid() -> int | None:
    """The local stack's Kafka broker's process id; None when it is not ours (a remote
    cluster, or a stack some other way)."""
    from infra.kafka_server import KafkaService  # noqa: PLC0415
    from infra.stack import load_config  # noqa: PLC0415

    return KafkaService(load_config()).pid()


@dataclass
class Produced:
    events: int
    interactions: int  # events that carry a product: what the hot store counts as applied
    seconds: float


def synthetic_source() -> Callable[..., Iterator[Any]]:
    """`synthetic_events` from jobs.traffic when that package exists, else jobs.synthetic."""
    try:
        from jobs.traffic import synthetic_events  # noqa: PLC0415
    except ImportError:
        from jobs.synthetic import synthetic_events  # type: ignore[no-redef]  # noqa: PLC0415
    return synthetic_events


def live_traffic(rate: float, count: int, *, users: int = 50_000, seed: int = 7) -> list[Any]:
    """`count` synthetic Events, about `rate` per second of event time, generated up front.

    For benches that send each event when its time comes, with event time = send time:
    `retime()` shifts them to start now. Generating them before the clock runs keeps the
    generator's CPU out of the measurement (the machine has two cores). The session
    simulation (`jobs.traffic.simulate`) when present, else independent events.
    """
    start_ms = int(time.time() * 1000)
    try:
        from jobs.traffic import TrafficParams, simulate  # noqa: PLC0415
    except ImportError:
        stream = _simple_traffic(rate, users, seed, start_ms)
    else:
        stream = simulate(TrafficParams(rate=rate, users=users, seed=seed), start_ms)
    return list(itertools.islice(stream, count))


def retime(events: list[Any], start_ms: int) -> None:
    """Shift event times (in place) so that the first event happens at `start_ms`."""
    shift = start_ms - events[0].event_time_ms
    # A duplicate delivery is the same object emitted again: shift each object once.
    for event in {id(event): event for event in events}.values():
        event.event_time_ms += shift


def _simple_traffic(rate: float, users: int, seed: int, start_ms: int) -> Iterator[Any]:
    from schemas.events import Event, EventType  # noqa: PLC0415

    rnd = random.Random(seed)
    kinds = [EventType.VIEW] * 16 + [EventType.CLICK] * 3 + [EventType.ADD_TO_CART]
    for n in itertools.count():
        kind = rnd.choice(kinds)
        yield Event(
            event_id=uuid.UUID(int=rnd.getrandbits(128), version=4).hex,
            user_id=f"u{rnd.randrange(users):07d}",
            event_type=kind,
            event_time_ms=start_ms + int(n * 1000 / rate),
            product_id=f"p{rnd.randrange(20_000):06d}",
        )


#: Bad messages for `produce(bad_share=...)`, one per dead-letter reason family: not our
#: framing, an unknown schema id, truncated Avro, and (built per event) a time far ahead.
BAD_PAYLOADS = (
    b'{"event_id": "json?"}',
    b"\x00\x00\x00\x00\x63\x02xx",
    b"\x00\x00\x00\x00\x01\x02",
)


def produce(
    settings: Settings,
    count: int,
    *,
    users: int = 50_000,
    products: int = 20_000,
    seed: int = 7,
    bad_share: float = 0.0,
) -> Produced:
    """Send `count` messages to the events topic; returns once all are delivered.

    With `bad_share`, that share of them (evenly spread) are messages the worker must
    dead-letter; they are not counted as interactions.
    """
    from confluent_kafka import KafkaError, Message, Producer  # noqa: PLC0415

    from schemas.codec import encode_event  # noqa: PLC0415
    from schemas.hot_layout import interaction_of  # noqa: PLC0415
    from sinks.events_producer import BATCHING, GUARANTEES  # noqa: PLC0415

    # Recent event times, so the worker's time bounds admit all of them.
    start_ms = int(time.time() * 1000) - count * 2 - 60_000
    events = synthetic_source()(
        users=users, products=products, seed=seed, start_ms=start_ms, step_ms=1
    )
    interactions = 0
    bad_every = round(1 / bad_share) if bad_share > 0 else 0
    # One producer with the library's settings for good and bad messages alike, so that a
    # topic with bad messages is laid out (record batches, compression) like a clean one.
    producer = Producer({**kafka_config(settings), **BATCHING, **GUARANTEES})
    failed: list[KafkaError] = []

    def on_delivery(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failed.append(error)

    bad = 0
    started = time.perf_counter()
    for index, event in enumerate(itertools.islice(events, count)):
        if bad_every and index % bad_every == bad_every - 1:
            kind = bad % (len(BAD_PAYLOADS) + 1)
            if kind < len(BAD_PAYLOADS):
                value = BAD_PAYLOADS[kind]
            else:  # well-formed, but a week in the future: rejected by the time check
                ahead = int(time.time() * 1000) + 7 * 86_400_000
                value = encode_event(dataclasses.replace(event, event_time_ms=ahead))
            bad += 1
        else:
            value = encode_event(event)  # validates, as the producer library does
            if interaction_of(event) is not None:
                interactions += 1
        while True:
            try:
                producer.produce(
                    settings.events_topic,
                    key=event.user_id.encode(),
                    value=value,
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                producer.poll(0.05)
        if index % 64 == 0:
            producer.poll(0)
    if producer.flush(60) or failed:
        raise RuntimeError(f"not every message was delivered ({failed[:3]})")
    return Produced(count, interactions, time.perf_counter() - started)


@dataclass
class ConsumerRun:
    messages: int
    seconds: float  # first message to last

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else float("nan")


async def raw_aiokafka_consume(settings: Settings, expected: int, decode: bool) -> ConsumerRun:
    """Read every partition from the beginning, no consumer group: the broker/client ceiling."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: PLC0415

    from schemas.codec import decode_event  # noqa: PLC0415

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        group_id=None,
        **aiokafka_options(settings),
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(settings.events_topic, p) for p in range(settings.events_partitions)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        seen = 0
        first = last = 0.0
        deadline = time.monotonic() + 120
        while seen < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batches.values():
                if not first:
                    first = time.perf_counter()
                if decode:
                    for record in records:
                        decode_event(record.value)
                seen += len(records)
            last = time.perf_counter()
        return ConsumerRun(seen, last - first)
    finally:
        await consumer.stop()


def raw_confluent_consume(settings: Settings, expected: int, batch: int = 10_000) -> ConsumerRun:
    """The same ceiling through confluent-kafka (librdkafka): `consume(batch)` over every
    partition from the beginning, no consumer group, nothing done with the messages."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition  # noqa: PLC0415

    consumer = Consumer(
        {
            **kafka_config(settings),
            "group.id": f"raw-{uuid.uuid4().hex[:8]}",  # required, never joined (assign)
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign(
            [
                TopicPartition(settings.events_topic, p, OFFSET_BEGINNING)
                for p in range(settings.events_partitions)
            ]
        )
        seen = 0
        first = last = 0.0
        deadline = time.monotonic() + 120
        while seen < expected and time.monotonic() < deadline:
            messages = consumer.consume(batch, timeout=0.5)
            if messages and not first:
                first = time.perf_counter()
            seen += sum(1 for m in messages if m.error() is None)
            last = time.perf_counter()
        return ConsumerRun(seen, last - first)
    finally:
        consumer.close()


def end_offsets(settings: Settings, topic: str) -> int:
    """Messages on a topic: its partitions' end offsets, summed (nothing is deleted in a
    run, and the idempotent producers write no transaction markers)."""
    from confluent_kafka import Consumer, TopicPartition  # noqa: PLC0415

    consumer = Consumer({**kafka_config(settings), "group.id": "bench-count"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        )
    finally:
        consumer.close()


def group_lag(settings: Settings, group: str, topic: str) -> int:
    """Messages on `topic` that consumer group `group` has not committed yet, summed over
    the partitions (a partition it never committed counts from its start)."""
    from confluent_kafka import Consumer, TopicPartition  # noqa: PLC0415

    consumer = Consumer({**kafka_config(settings), "group.id": group})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        lag = 0
        for tp in committed:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            lag += high - (tp.offset if tp.offset >= 0 else low)
        return lag
    finally:
        consumer.close()


def wait_until_drained(
    settings: Settings, groups: Sequence[tuple[str, str]], timeout_s: float
) -> float:
    """Wait until every (group, topic) has committed all of its topic; the seconds it
    took. Raises TimeoutError with the lags left after `timeout_s`."""
    began = time.monotonic()
    while True:
        lags = {group: group_lag(settings, group, topic) for group, topic in groups}
        if not any(lags.values()):
            return time.monotonic() - began
        if time.monotonic() - began > timeout_s:
            raise TimeoutError(f"not drained after {timeout_s:.0f} s: {lags}")
        time.sleep(0.5)


def exported_tree(ref: str) -> contextlib.AbstractContextManager[Path]:
    """The source tree at git `ref`, exported to a temporary folder (removed on exit)."""

    @contextlib.contextmanager
    def export() -> Iterator[Path]:
        folder = Path(tempfile.mkdtemp(prefix="bench-tree-"))
        try:
            archive = subprocess.run(
                ["git", "archive", "--format=tar", ref],
                cwd=ROOT,
                check=True,
                capture_output=True,
            ).stdout
            with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
                tar.extractall(folder, filter="data")
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    return export()


class WorkerProcess:
    """`signals worker` (or `command`, e.g. `ranker`, or any `argv`) as a subprocess,
    stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        label: str,
        source: Path = ROOT,
        loglevel: str = "info",
        extra_args: list[str] | None = None,
        command: str = "worker",
        argv: list[str] | None = None,
    ) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log = LOG_DIR / f"bench-{label}-{uuid.uuid4().hex[:6]}.log"
        self._command = [sys.executable, "-m", "jobs.cli", command, "--loglevel", loglevel]
        self._command += extra_args or []
        if argv is not None:  # another program entirely (the peers of bench/peers_bench.py)
            self._command = argv
        # `-m` puts the working directory first on sys.path, so `source` is what runs.
        self._source = source
        self._env = {**os.environ, **env}
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> WorkerProcess:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                self._command,
                cwd=self._source,
                env=self._env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    """p50/p95/p99/max (nearest rank) of latency samples in ms; NaN when there are none."""
    ordered = sorted(samples_ms)
    if not ordered:
        return {"n": 0, **dict.fromkeys(("p50_ms", "p95_ms", "p99_ms", "max_ms"), math.nan)}

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3)

    return {
        "n": len(ordered),
        "p50_ms": rank(0.50),
        "p95_ms": rank(0.95),
        "p99_ms": rank(0.99),
        "max_ms": round(ordered[-1], 3),
    }


def format_value(value: float | int | str) -> str:
    """Numbers as the tables print them: thousands separators, 2 decimals below 100."""
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return value


@dataclass
class Table:
    """Rows of cells printed aligned; by default (measurement, value, unit, note).

    `align` has one letter per column: `l` pads right, `r` pads left.
    """

    title: str
    rows: list[tuple[str, ...]] = field(default_factory=list)
    head: tuple[str, ...] = ("measurement", "value", "unit", "note")
    align: str = "lrll"

    def add(self, name: str, value: float | int | str, unit: str = "", note: str = "") -> None:
        self.rows.append((name, format_value(value), unit, note))

    def add_row(self, *cells: float | int | str) -> None:
        self.rows.append(tuple(format_value(cell) for cell in cells))

    def print(self) -> None:
        widths = [max([len(h), *(len(r[i]) for r in self.rows)]) for i, h in enumerate(self.head)]
        print(f"\n{self.title}")
        print("  ".join(h.ljust(w) for h, w in zip(self.head, widths, strict=True)).rstrip())
        print("  ".join("-" * w for w in widths))
        for row in self.rows:
            cells = (
                cell.rjust(width) if how == "r" else cell.ljust(width)
                for cell, width, how in zip(row, widths, self.align, strict=True)
            )
            print("  ".join(cells).rstrip())


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "git_head": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            check=False,
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_results(name: str, result: dict[str, Any]) -> Path:
    """bench/results/<name>.json (git-ignored), with the environment it was measured in."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(
        json.dumps({**result, "environment": environment()}, indent=2) + "\n", encoding="utf-8"
    )
    return path


def read_results(name: str) -> dict[str, Any]:
    """bench/results/<name>.json as written by `write_results` (or the older benches)."""
    result: dict[str, Any] = json.loads((RESULTS_DIR / f"{name}.json").read_text("utf-8"))
    return result


if __name__ == "__main__":
    # `python bench/harness.py cleanup`: run by `Isolated`'s exit hook, with its variables.
    if sys.argv[1:] != ["cleanup"]:
        raise SystemExit("usage: harness.py cleanup  (internal: the exit hook of Isolated)")
    Isolated.from_env().cleanup()


def parse_env(pairs: list[str]) -> dict[str, str]:
    """`--env KEY=VALUE` pairs as worker settings (the SIGNALS_ prefix is optional)."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--env expects KEY=VALUE, got {pair!r}")
        env[key if key.startswith("SIGNALS_") else f"SIGNALS_{key.upper()}"] = value
    return env
