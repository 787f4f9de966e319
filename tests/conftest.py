"""Shared fixtures.

Unit tests need nothing. Tests marked `stack` talk to the real local services; the
session fixture `stack` brings the stack up (idempotent: it reuses a running one) and
fails loudly, never skips, when a service cannot start.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from streams.settings import Settings, stack_cluster_url, stack_env_file

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.fspath).replace(os.sep, "/")
        if "tests/stack/" in path or "tests/secure/" in path:
            item.add_marker(pytest.mark.stack)


@pytest.fixture(scope="session")
def stack() -> None:
    """The local stack is up and its env file written, or the test fails with the reason."""
    from infra.services import StackError  # noqa: PLC0415
    from infra.stack import load_config, up  # noqa: PLC0415

    try:
        up(load_config(), say=lambda _line: None)
    except StackError as exc:
        pytest.fail(f"the local stack could not start: {exc}", pytrace=False)


@pytest.fixture
def isolated_env(stack: None, tmp_path: Path) -> dict[str, str]:
    """SIGNALS_* variables giving this test its own topic, consumer group, Redis keys and
    model folder."""
    tag = uuid.uuid4().hex[:10]
    return {
        "SIGNALS_MODEL_DIR": str(tmp_path / "models"),
        "SIGNALS_EVENTS_TOPIC": f"test.events.{tag}",
        "SIGNALS_DEAD_LETTER_TOPIC": f"test.dlq.{tag}",
        "SIGNALS_TRIGGER_TOPIC": f"test.triggers.{tag}",
        "SIGNALS_EVENTS_PARTITIONS": "4",
        "SIGNALS_APP_ID": f"test-{tag}",
        "SIGNALS_REDIS_KEY_PREFIX": f"t{tag}",
        "SIGNALS_CQL_KEYSPACE": f"test_{tag}",
    }


@pytest.fixture
def isolated_settings(
    isolated_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """The test's settings; afterwards its topics are deleted (Kafka keeps them on disk)."""
    from infra.topics import delete_topics  # noqa: PLC0415

    for key, value in isolated_env.items():
        monkeypatch.setenv(key, value)
    settings = Settings.load()
    yield settings
    delete_topics(settings)
    forget_keys(settings)


def forget_keys(settings: Settings) -> None:
    """Delete a test's Redis keys on the stack's Redis and its cluster: hot keys have no
    TTL, so a long-lived local stack would otherwise keep every test's users."""
    import redis  # noqa: PLC0415

    from sinks.connectivity import redis_options  # noqa: PLC0415

    security = redis_options(settings)  # the secured stack's cluster has the same user
    url = stack_cluster_url()
    clients: list[redis.Redis | redis.RedisCluster] = [
        redis.Redis.from_url(settings.redis_url, **security)
    ]
    if url:
        clients.append(redis.RedisCluster.from_url(url, **security))
    for client in clients:
        try:
            pipe = client.pipeline(transaction=False)
            for key in client.scan_iter(match=f"{settings.redis_key_prefix}:*", count=1000):
                pipe.delete(key)  # one command per key: a cluster's keys are on many slots
            pipe.execute()
        except redis.RedisError:
            pass  # a test that took Redis away: its keys go with the stack's next restart
        finally:
            client.close()


@pytest.fixture
def provisioned(isolated_settings: Settings) -> Iterator[Settings]:
    """Isolated settings whose topics exist on the broker and whose keyspace is migrated
    (the keyspace is dropped afterwards)."""
    from infra.migrate import apply_migrations  # noqa: PLC0415
    from infra.topics import apply_topics  # noqa: PLC0415
    from sinks.cql import connect  # noqa: PLC0415

    apply_topics(isolated_settings)
    cluster, session = connect(isolated_settings)
    try:
        apply_migrations(session, isolated_settings)
        yield isolated_settings
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {isolated_settings.cql_keyspace}")
        cluster.shutdown()


@pytest.fixture
def worker(tmp_path: Path) -> Callable[..., object]:
    """Start `signals worker` (or another long-running command, such as `ranker`) as a
    subprocess with the test's environment."""

    @contextmanager
    def run(extra_env: dict[str, str], command: str = "worker") -> Iterator[WorkerHandle]:
        log = tmp_path / f"{command}-{uuid.uuid4().hex[:6]}.log"
        env = {**os.environ, **extra_env}
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "jobs.cli", command, "--loglevel", "info"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        handle = WorkerHandle(process, log)
        try:
            yield handle
        finally:
            handle.stop()

    return run


class WorkerHandle:
    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_for(
    check: Callable[[], bool], timeout_s: float, what: str, on_fail: Callable[[], str] = str
) -> None:
    """Poll until `check()` holds; fail with `what` and extra context otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}\n{on_fail()}")


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cluster_url() -> str:
    """The stack's Redis Cluster; a real variable wins over the env file, as in Settings."""
    url = stack_cluster_url()
    if not url:
        pytest.fail(f"no SIGNALS_REDIS_CLUSTER_URL in the environment or {stack_env_file()}")
    return url


def on_backend(settings: Settings, backend: str, k: int | None = 5) -> Settings:
    """The test's settings pointed at the single Redis or at the cluster (k per type = `k`)."""
    update: dict[str, Any] = {} if k is None else {"last_k": {t: k for t in settings.last_k}}
    if backend == "cluster":
        update |= {"redis_url": cluster_url(), "redis_cluster": True}
    return settings.model_copy(update=update)


@pytest.fixture(params=["single", "cluster"])
def backend_settings(request: pytest.FixtureRequest, isolated_settings: Settings) -> Settings:
    return on_backend(isolated_settings, request.param)


class TcpProxy:
    """A loopback TCP proxy that a test can cut and restore, to take a service away from
    one client (the worker) without disturbing the shared service or other tests."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._live: list[socket.socket] = []
        self._lock = threading.Lock()
        self._cut = False
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        """Drop every open connection and refuse new ones until `restore`."""
        with self._lock:
            self._cut = True
            for sock in self._live:
                _close(sock)
            self._live.clear()

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        _close(self._listener)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._cut:
                    _close(client)
                    continue
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
                except OSError:
                    _close(client)
                    continue
                self._live += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, target), daemon=True).start()


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            target.sendall(chunk)
    except OSError:
        pass
    finally:
        _close(source)
        _close(target)


def _close(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def readme_blocks(section: str, language: str) -> list[str]:
    """The code blocks in `language` of the README section headed `section` (the tests
    run the README's examples as written)."""
    import re  # noqa: PLC0415

    text = (ROOT / "README.md").read_text()
    start = text.index(section)
    body = text[start : text.index("\n## ", start + len(section))]
    return re.findall(rf"```{language}\n(.*?)```", body, flags=re.DOTALL)


def run_signals(
    env: dict[str, str], *args: str, timeout_s: float = 180
) -> subprocess.CompletedProcess[str]:
    """`signals ARGS` as a user runs it, with this environment over the test's."""
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args],
        check=False,
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def shopper_event(user: str, kind: Any, product: str, at_ms: int, n: int) -> Any:
    """One valid event of `user` (an order gets its order id and quantity)."""
    from schemas.events import Event, EventType  # noqa: PLC0415

    return Event(
        event_id=f"{user}-{n}-{at_ms}",
        user_id=user,
        event_type=kind,
        event_time_ms=at_ms,
        product_id=product,
        category_id="c1",
        order_id=f"o-{n}" if kind is EventType.ORDER else None,
        quantity=1 if kind is EventType.ORDER else None,
    )


def send_events(settings: Settings, events: list[Any]) -> None:
    """Produce with the library and the configured security; all delivered."""
    from sinks.connectivity import kafka_security  # noqa: PLC0415
    from sinks.events_producer import EventProducer  # noqa: PLC0415

    with EventProducer(
        settings.kafka_bootstrap, settings.events_topic, **kafka_security(settings)
    ) as producer:
        for event in events:
            producer.send(event)
    assert producer.delivered == len(events)
