"""Shared pieces of the benchmarks that run against the local stack.

One script per measurement (`bench/*_bench.py`) builds on these:

- `ensure_stack()`            the local stack is up (reused when running, started otherwise)
- `Isolated.create()`         a fresh topic, DLQ topic, consumer group and Redis key prefix,
                              with the production partition count, provisioned on the broker
- `produce()`                 synthetic events onto the isolated topic
- `WorkerProcess`             `signals worker` as a subprocess with the isolated environment,
                              optionally from another source tree (a git ref, for before/after)
- `exported_tree()`           a git ref exported to a temporary folder
- `Table`, `write_results()`  the printed table and bench/results/<name>.json

Benchmarks compare against a baseline measured in the same run: the machine is shared, so
numbers from different runs are not comparable.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from streams.settings import Settings, state_dir  # noqa: E402

RESULTS_DIR = ROOT / "bench" / "results"
LOG_DIR = state_dir() / "logs"


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
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2)
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
    """A benchmark's own topics, consumer group and Redis keys on the shared stack."""

    tag: str
    env: dict[str, str]
    settings: Settings

    @classmethod
    def create(cls, name: str, **overrides: str) -> Isolated:
        """Provision a fresh, uniquely named topic set with the production partition count."""
        from infra.topics import apply_topics  # noqa: PLC0415

        tag = f"{name}-{uuid.uuid4().hex[:8]}"
        env = {
            "SIGNALS_EVENTS_TOPIC": f"bench.events.{tag}",
            "SIGNALS_DEAD_LETTER_TOPIC": f"bench.dlq.{tag}",
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
        apply_topics(settings)
        return cls(tag, env, settings)

    def cleanup_redis(self) -> None:
        """Delete the Redis keys of every prefix starting with the tag (topics: in-memory mock)."""
        import redis  # noqa: PLC0415

        client = redis.Redis.from_url(self.settings.redis_url)
        try:
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"{self.settings.redis_key_prefix}*", count=5000):
                batch.append(key)
                if len(batch) >= 5000:
                    client.unlink(*batch)
                    batch.clear()
            if batch:
                client.unlink(*batch)
        finally:
            client.close()


@dataclass
class Produced:
    events: int
    interactions: int  # events that carry a product: what the hot store counts as applied
    seconds: float


def synthetic_source() -> Callable[..., Iterator[Any]]:
    """`synthetic_events` from jobs.traffic when that package exists, else jobs.synthetic."""
    try:
        from jobs.traffic import synthetic_events  # type: ignore[import-not-found]  # noqa: PLC0415
    except ImportError:
        from jobs.synthetic import synthetic_events  # noqa: PLC0415
    return synthetic_events  # type: ignore[no-any-return]


def produce(
    settings: Settings, count: int, *, users: int = 50_000, products: int = 20_000, seed: int = 7
) -> Produced:
    """Send `count` synthetic events to the events topic; returns once all are delivered."""
    from sinks.events_producer import EventProducer  # noqa: PLC0415
    from streams.logic.lastk import interaction_of  # noqa: PLC0415

    # Recent event times, so the worker's time bounds admit all of them.
    start_ms = int(time.time() * 1000) - count * 2 - 60_000
    events = synthetic_source()(
        users=users, products=products, seed=seed, start_ms=start_ms, step_ms=1
    )
    interactions = 0
    started = time.perf_counter()
    with EventProducer(settings.kafka_bootstrap, settings.events_topic) as producer:
        for event in itertools.islice(events, count):
            if interaction_of(event) is not None:
                interactions += 1
            producer.send(event)
    if producer.delivered != count:
        raise RuntimeError(f"only {producer.delivered} of {count} events were delivered")
    return Produced(count, interactions, time.perf_counter() - started)


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
    """`signals worker` as a subprocess, stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        label: str,
        source: Path = ROOT,
        loglevel: str = "info",
        extra_args: list[str] | None = None,
    ) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log = LOG_DIR / f"bench-{label}-{uuid.uuid4().hex[:6]}.log"
        self._command = [sys.executable, "-m", "jobs.cli", "worker", "--loglevel", loglevel]
        self._command += extra_args or []
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


@dataclass
class Table:
    """Rows of (measurement, value, unit, note), printed aligned."""

    title: str
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)

    def add(self, name: str, value: float | int | str, unit: str = "", note: str = "") -> None:
        if isinstance(value, float):
            text = f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
        elif isinstance(value, int):
            text = f"{value:,}"
        else:
            text = value
        self.rows.append((name, text, unit, note))

    def print(self) -> None:
        widths = [max([len(h), *(len(r[i]) for r in self.rows)]) for i, h in enumerate(_HEAD)]
        print(f"\n{self.title}")
        print("  ".join(h.ljust(w) for h, w in zip(_HEAD, widths, strict=True)).rstrip())
        print("  ".join("-" * w for w in widths))
        for row in self.rows:
            name, value, unit, note = row
            print(
                f"{name.ljust(widths[0])}  {value.rjust(widths[1])}  "
                f"{unit.ljust(widths[2])}  {note}".rstrip()
            )


_HEAD = ("measurement", "value", "unit", "note")


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
