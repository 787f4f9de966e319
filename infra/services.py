"""The stack's shared pieces (config, the Service protocol, errors) and its Redis services.

Each service knows how to check its prerequisites, start detached, tell when it is ready,
stop by PID, and which settings (env file entries) point the app at it. The JVM servers,
Apache Kafka and Apache Cassandra, live in `kafka_server.py` and `cassandra_server.py`.
"""

from __future__ import annotations

import abc
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from infra.process import ManagedProcess, port_free, wait_until
from infra.vendor import Bundle, java_major

CLUSTER_SLOTS = 16384
#: Redis Cluster's node-to-node bus listens on the client port + this (Redis' default).
CLUSTER_BUS_OFFSET = 10000


class StackError(RuntimeError):
    """A problem the user can act on; the message is one clear line."""


@dataclass(frozen=True)
class StackConfig:
    """Where the stack lives, which ports it uses and how big its JVMs are."""

    state_dir: Path
    redis_port: int = 16379
    # One per master; clear of the CQL storage port (17000); bus ports at +10000.
    redis_cluster_ports: tuple[int, ...] = (17101, 17102, 17103)
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    kafka_heap: str = "512m"
    cql_port: int = 19042
    cql_storage_port: int = 17000
    cassandra_heap: str = "1g"
    #: The `java` both servers run on (Kafka 4 needs 17+, Cassandra 5.0 runs on 11 or 17).
    java: str = "java"
    ready_timeout_s: float = 120.0

    @property
    def env_file(self) -> Path:
        return self.state_dir / "stack.env"

    def process(self, name: str, marker: str) -> ManagedProcess:
        return ManagedProcess(
            name=name,
            pid_file=self.state_dir / "pids" / f"{name}.pid",
            log_file=self.state_dir / "logs" / f"{name}.log",
            marker=marker,
        )


class Service(Protocol):
    name: str

    def problems(self) -> list[str]: ...
    def drift(self) -> str | None: ...
    def is_running(self) -> bool: ...
    def start(self) -> None: ...
    def wait_ready(self, timeout_s: float) -> None: ...
    def stop(self) -> bool: ...
    def pid(self) -> int | None: ...
    def address(self) -> str: ...
    def env(self) -> dict[str, str]: ...


def port_problem(service: str, port: int, setting: str | None = None) -> list[str]:
    if port_free(port):
        return []
    return [
        f"{service}: port 127.0.0.1:{port} is already in use by another process "
        f"(set {setting or f'SIGNALS_STACK_{service.upper()}_PORT'} to use another)"
    ]


class RedisService:
    name = "redis"

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.port = config.redis_port
        self.proc = config.process("redis", marker=f"127.0.0.1:{self.port}")

    def problems(self) -> list[str]:
        found = []
        if shutil.which("redis-server") is None:
            found.append(
                "redis: redis-server not found; install it with "
                "`apt-get install -y redis-server` (./dev setup does this)"
            )
        return found + port_problem("redis", self.port)

    def is_running(self) -> bool:
        return self.proc.pid() is not None

    def drift(self) -> str | None:
        return None  # the port is in the marker: another port is another process

    def pid(self) -> int | None:
        return self.proc.pid()

    def start(self) -> None:
        data_dir = self.config.state_dir / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.proc.start(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--protected-mode",
                "yes",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(data_dir),
                "--daemonize",
                "no",
            ]
        )

    def wait_ready(self, timeout_s: float) -> None:
        import redis  # noqa: PLC0415

        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            ready = wait_until(lambda: bool(client.ping()) or self.proc.exited_early(), timeout_s)
        finally:
            client.close()
        if not ready or self.proc.exited_early():
            raise StackError(
                f"redis: not ready on 127.0.0.1:{self.port} after {timeout_s:.0f}s; "
                f"log: {self.proc.log_tail()}"
            )

    def stop(self) -> bool:
        return self.proc.stop()

    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {"SIGNALS_REDIS_URL": f"redis://127.0.0.1:{self.port}/0"}


class RedisClusterService:
    """A Redis Cluster of masters only (three by default, no replicas, so it is cheap).

    The hot tier must work on one Redis and on a cluster; this gives the tests a real one.
    Each node is its own redis-server (own PID file, folder, client port and cluster bus
    port at +10000). Formed here rather than with `redis-cli --cluster create`: nothing
    more to install, and every failure is one clear line.
    """

    name = "redis-cluster"
    setting = "SIGNALS_STACK_REDIS_CLUSTER_PORTS"

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.ports = config.redis_cluster_ports
        self.dir = config.state_dir / "redis-cluster"
        self.procs = [
            config.process(f"redis-cluster-{port}", marker=f"127.0.0.1:{port}")
            for port in self.ports
        ]

    def problems(self) -> list[str]:
        found = []
        if shutil.which("redis-server") is None:
            found.append(
                "redis-cluster: redis-server not found; install it with "
                "`apt-get install -y redis-server` (./dev setup does this)"
            )
        for port, proc in zip(self.ports, self.procs, strict=True):
            if proc.pid() is None:  # a node of ours still running is restarted, not a conflict
                for taken in (port, port + CLUSTER_BUS_OFFSET):
                    found += port_problem(self.name, taken, self.setting)
        return found

    def drift(self) -> str | None:
        return None  # ports are in the markers: other ports are other processes

    def is_running(self) -> bool:
        """Every node up and serving every slot; anything less is started over by `up`."""
        return all(proc.pid() is not None for proc in self.procs) and self._serving()

    def pid(self) -> int | None:
        """The first node's PID while every node runs (status shows one PID per service)."""
        pids = [proc.pid() for proc in self.procs]
        return None if None in pids else pids[0]

    def start(self) -> None:
        # Leftovers of a broken cluster (ours by PID file and marker) start over: the
        # cluster keeps no data, and a fresh nodes.conf means no stale node ids.
        for proc in self.procs:
            proc.stop()
        started: list[ManagedProcess] = []
        try:
            for port, proc in zip(self.ports, self.procs, strict=True):
                node_dir = self.dir / str(port)
                node_dir.mkdir(parents=True, exist_ok=True)
                (node_dir / "nodes.conf").unlink(missing_ok=True)
                proc.start(
                    [
                        "redis-server",
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--protected-mode",
                        "yes",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(node_dir),
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--daemonize",
                        "no",
                    ],
                    cwd=node_dir,
                )
                started.append(proc)
        except BaseException:
            for proc in started:  # `up` only stops services whose start() returned
                proc.stop()
            raise

    def wait_ready(self, timeout_s: float) -> None:
        import redis  # noqa: PLC0415

        if self._serving():  # formed already (a running cluster): nothing to do
            return
        deadline = time.monotonic() + timeout_s
        clients: list[Any] = [
            redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=1)
            for port in self.ports
        ]
        try:
            for port, proc, client in zip(self.ports, self.procs, clients, strict=True):
                answered = wait_until(
                    partial(_pings_or_exited, client, proc), deadline - time.monotonic()
                )
                if not answered or proc.exited_early():
                    raise StackError(
                        f"redis-cluster: node 127.0.0.1:{port} not ready after "
                        f"{timeout_s:.0f}s; log: {proc.log_tail()}"
                    )
            self._form(clients)
            if not wait_until(self._serving, deadline - time.monotonic()):
                raise StackError(
                    f"redis-cluster: not serving every slot after {timeout_s:.0f}s "
                    f"({self._state_summary()}); logs: {self.dir}, {self.procs[0].log_file}"
                )
        finally:
            for client in clients:
                client.close()

    def _form(self, clients: list[Any]) -> None:
        """Slots split evenly, one distinct config epoch each (as redis-cli does), then MEET."""
        for epoch, (first, last) in enumerate(slot_ranges(len(clients)), 1):
            client = clients[epoch - 1]
            client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
            client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
        for port in self.ports[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)

    def _cluster_infos(self) -> list[dict[str, str]]:
        import redis  # noqa: PLC0415

        infos = []
        for port in self.ports:
            client: Any = redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=1)
            try:
                infos.append(parse_cluster_info(client.execute_command("CLUSTER", "INFO")))
            finally:
                client.close()
        return infos

    def _serving(self) -> bool:
        """Every node sees every node and every slot served: cluster_state:ok everywhere."""
        try:
            infos = self._cluster_infos()
        except Exception:  # a node not answering is simply not serving
            return False
        return all(
            info.get("cluster_state") == "ok"
            and info.get("cluster_known_nodes") == str(len(self.ports))
            and info.get("cluster_slots_ok") == str(CLUSTER_SLOTS)
            for info in infos
        )

    def _state_summary(self) -> str:
        try:
            infos = self._cluster_infos()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return ", ".join(
            f"{port}: state {info.get('cluster_state')}, knows {info.get('cluster_known_nodes')}"
            for port, info in zip(self.ports, infos, strict=True)
        )

    def stop(self) -> bool:
        return any([proc.stop() for proc in self.procs])  # a list: stop every node

    def address(self) -> str:
        return "127.0.0.1:" + ",".join(str(port) for port in self.ports)

    def env(self) -> dict[str, str]:
        # Not SIGNALS_REDIS_URL: the worker keeps the single Redis unless told otherwise.
        return {"SIGNALS_REDIS_CLUSTER_URL": f"redis://127.0.0.1:{self.ports[0]}/0"}


def _pings_or_exited(client: Any, proc: ManagedProcess) -> bool:
    return bool(client.ping()) or proc.exited_early()


def slot_ranges(masters: int) -> list[tuple[int, int]]:
    """The 16384 hash slots split into `masters` contiguous, inclusive ranges."""
    if masters < 1:
        raise ValueError("a cluster needs at least one master")
    bounds = [CLUSTER_SLOTS * i // masters for i in range(masters + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


def parse_cluster_info(raw: bytes | str | dict[str, Any]) -> dict[str, str]:
    """CLUSTER INFO's `field:value` lines as a dict (redis-py may hand back any of the three)."""
    if isinstance(raw, dict):
        return {str(key): str(value) for key, value in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else raw
    return dict(line.strip().split(":", 1) for line in text.splitlines() if ":" in line)


def java_problem(service: str, java: str, oldest: int, newest: int) -> list[str]:
    """One line if `java` is missing or a version the server does not run on."""
    if shutil.which(java) is None:
        return [
            f"{service}: java not found ({java}); install a JDK 17 runtime with "
            "`apt-get install -y openjdk-17-jre-headless` (./dev setup does this), "
            "or point SIGNALS_STACK_JAVA at one"
        ]
    major = java_major(java)
    if major is None or not oldest <= major <= newest:
        wanted = str(oldest) if oldest == newest else f"{oldest} to {newest}"
        return [
            f"{service}: {java} is Java {major or 'of an unknown version'}; it runs on Java "
            f"{wanted} (set SIGNALS_STACK_JAVA to such a `java`)"
        ]
    return []


def vendor_problem(service: str, state_dir: Path, assembled: bool) -> list[str]:
    """One line if the server still has to be fetched and Maven is not there to do it."""
    if assembled or shutil.which("mvn") is not None:
        return []
    return [
        f"{service}: mvn (Maven) not found, needed once to fetch the server from Maven "
        f"Central into {state_dir / 'vendor'}; install it with `apt-get install -y maven` "
        "(./dev setup does this)"
    ]


class JvmServer(abc.ABC):
    """What the stack's two JVM servers (Kafka, Cassandra) share: jars from a Maven bundle
    (`infra/vendor.py`), one process identified by its config file, a config that must
    match the running one, and a start that is reported by its first error line."""

    name: str
    #: Seconds between readiness probes while the server starts.
    ready_poll_s: float = 0.25

    def __init__(self, config: StackConfig, bundle: Bundle, home: Path, config_file: Path) -> None:
        self.config = config
        self.bundle = bundle
        self.dir = home
        self.config_file = config_file
        self.proc = config.process(self.name, marker=str(config_file))
        self._log_from = 0

    @abc.abstractmethod
    def rendered_config(self) -> str:
        """The config file's content for the current settings."""

    @abc.abstractmethod
    def launch(self, tmp_dir: Path) -> list[str]:
        """The server's command line (config written, storage ready)."""

    @abc.abstractmethod
    def serves(self) -> bool:
        """One readiness probe against the running server."""

    def prepare(self) -> None:  # noqa: B027  (a hook: most servers need nothing)
        """Anything to do after the config is written and before the JVM starts."""

    def is_installed(self) -> bool:
        return self.bundle.is_assembled(self.config.state_dir)

    def install(self) -> tuple[int, float]:
        return self.bundle.assemble(
            self.config.state_dir, self.config.state_dir / "logs" / f"maven-{self.name}.log"
        )

    def is_running(self) -> bool:
        return self.proc.pid() is not None

    def pid(self) -> int | None:
        return self.proc.pid()

    def drift(self) -> str | None:
        """Set when the running server was started with other settings than these."""
        try:
            running = self.config_file.read_text()
        except FileNotFoundError:
            return None
        if running == self.rendered_config():
            return None
        return (
            f"{self.name}: running (pid {self.pid()}) with other settings than the current "
            f"ones ({self.config_file}); `signals-stack down` then `up` applies them"
        )

    def start(self) -> None:
        self.install()
        # Native libraries (JNA, lz4, snappy, zstd) unpack here, not in a maybe-noexec /tmp.
        tmp_dir = self.dir / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self.rendered_config())
        self.prepare()
        self._log_from = self.proc.log_size()
        self.proc.start(self.launch(tmp_dir), cwd=self.dir)

    def wait_ready(self, timeout_s: float) -> None:
        ready = wait_until(self._probe, timeout_s, interval_s=self.ready_poll_s)
        if self.proc.exited_early():
            raise StackError(
                f"{self.name}: exited while starting: "
                f"{self.proc.startup_error(self._log_from)} (log: {self.proc.log_file})"
            )
        if not ready:
            raise StackError(
                f"{self.name}: not serving on {self.address()} after {timeout_s:.0f}s; "
                f"log: {self.proc.log_tail()}"
            )

    def _probe(self) -> bool:
        if self.proc.exited_early():
            return True  # stop polling; wait_ready reports the exit
        host, _, port = self.address().rpartition(":")
        return not port_free(int(port), host) and self.serves()

    def stop(self) -> bool:
        return self.proc.stop(timeout_s=60)

    @abc.abstractmethod
    def address(self) -> str: ...
