"""The stack's shared pieces (config, the Service protocol, errors) and its Redis services.

Each service knows how to check its prerequisites, start detached, tell when it is ready,
stop by PID, and which settings (env file entries) point the app at it. The JVM servers,
Apache Kafka and Apache Cassandra, live in `kafka_server.py` and `cassandra_server.py`.

The stack runs plain (no TLS, no passwords) or secured (`StackConfig.secure`: TLS only,
every client authenticated; certificates from `infra/tls.py`, passwords from
`infra/credentials.py`). The stack's own probes connect exactly as the application does:
through `sinks/connectivity.py`, from the settings the service writes to the env file.
"""

from __future__ import annotations

import abc
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from infra.process import ManagedProcess, port_free, wait_until
from infra.vendor import Bundle, java_major
from streams.settings import Settings

if TYPE_CHECKING:
    from infra.credentials import StackSecrets
    from infra.tls import TlsFiles

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
    #: TLS only, every client authenticated (`signals-stack up --secure`).
    secure: bool = False
    #: The state folder whose `vendor/` holds the servers' jars, when not this one (the
    #: secured stack shares the plain stack's: the same jars, assembled once).
    vendor_state_dir: Path | None = None

    @property
    def env_file(self) -> Path:
        return self.state_dir / "stack.env"

    @property
    def jars_state_dir(self) -> Path:
        return self.vendor_state_dir or self.state_dir

    @property
    def tls(self) -> TlsFiles:
        from infra.tls import TlsFiles  # noqa: PLC0415  (infra.tls imports this module)

        return TlsFiles(self.state_dir / "tls")

    @property
    def secrets(self) -> StackSecrets:
        from infra.credentials import StackSecrets  # noqa: PLC0415

        return StackSecrets(self.state_dir / "secrets")

    def command(self, name: str) -> str:
        """How to run `signals-stack <name>` for this stack (in messages)."""
        return f"signals-stack {name}{' --secure' if self.secure else ''}"

    def setting(self, name: str) -> str:
        """The variable that sets `name` (`REDIS_PORT`) for this stack."""
        return f"SIGNALS_STACK_{'SECURE_' if self.secure else ''}{name}"

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
    def security(self) -> str: ...


class _OnlyTheseSettings(Settings):
    """Settings from the arguments alone: no environment variables, no env file."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def settings_from(entries: dict[str, str]) -> Settings:
    """The Settings that exactly these env file entries (`SIGNALS_*`) give, whatever the
    environment says: what the stack's own probes connect with, so they connect as the
    application will."""
    fields: dict[str, Any] = {
        key.removeprefix("SIGNALS_").lower(): value
        for key, value in entries.items()
        if key.startswith("SIGNALS_") and not key.startswith("SIGNALS_STACK_")
    }
    return _OnlyTheseSettings(**fields)


def redis_env(
    config: StackConfig, port: int, url_setting: str = "SIGNALS_REDIS_URL"
) -> dict[str, str]:
    """Env file entries reaching the Redis on `port`: its URL, and for the secured stack
    TLS (rediss://, the stack's CA) and the ACL user."""
    if not config.secure:
        return {url_setting: f"redis://127.0.0.1:{port}/0"}
    from infra.credentials import APP_USER, REDIS_APP  # noqa: PLC0415

    return {
        url_setting: f"rediss://127.0.0.1:{port}/0",
        "SIGNALS_REDIS_USERNAME": APP_USER,
        "SIGNALS_REDIS_PASSWORD_FILE": str(config.secrets.path(REDIS_APP)),
        "SIGNALS_REDIS_TLS_CA_FILE": str(config.tls.ca_cert),
    }


def redis_client(config: StackConfig, port: int, timeout_s: float = 1.0) -> Any:
    """A redis-py client of the stack's Redis on `port`, connecting as the app would."""
    import redis  # noqa: PLC0415

    from sinks.connectivity import redis_options  # noqa: PLC0415

    settings = settings_from(redis_env(config, port))
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=timeout_s,
        socket_connect_timeout=1,
        **redis_options(settings),
    )


def redis_server_args(config: StackConfig, port: int, data_dir: Path) -> list[str]:
    """redis-server's command line: plain, or TLS only (no plaintext port) with the ACL
    file (so no password is on the command line) and client certificates optional."""
    listen = ["--port", str(port)]
    if config.secure:
        tls = config.tls
        listen = [
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(tls.server_cert),
            "--tls-key-file",
            str(tls.server_key),
            "--tls-ca-cert-file",
            str(tls.ca_cert),
            "--tls-auth-clients",
            "optional",
            "--aclfile",
            str(config.secrets.redis_acl_file),
        ]
    return [
        "redis-server",
        *listen,
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
    ]


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
        return found + port_problem("redis", self.port, self.config.setting("REDIS_PORT"))

    def is_running(self) -> bool:
        return self.proc.pid() is not None

    def drift(self) -> str | None:
        return None  # the port is in the marker: another port is another process

    def pid(self) -> int | None:
        return self.proc.pid()

    def start(self) -> None:
        data_dir = self.config.state_dir / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.proc.start([*redis_server_args(self.config, self.port, data_dir), "--daemonize", "no"])

    def wait_ready(self, timeout_s: float) -> None:
        client = redis_client(self.config, self.port)
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
        return redis_env(self.config, self.port)

    def security(self) -> str:
        if not self.config.secure:
            return "plaintext, no authentication"
        return "TLS only (client certificate optional), ACL user feedsignals; default user off"


class RedisClusterService:
    """A Redis Cluster of masters only (three by default, no replicas, so it is cheap).

    The hot tier must work on one Redis and on a cluster; this gives the tests a real one.
    Each node is its own redis-server (own PID file, folder, client port and cluster bus
    port at +10000). Formed here rather than with `redis-cli --cluster create`: nothing
    more to install, and every failure is one clear line.
    """

    name = "redis-cluster"

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.setting = config.setting("REDIS_CLUSTER_PORTS")
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
                        *redis_server_args(self.config, port, node_dir),
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        # The cluster bus (port + 10000) is TLS too in the secured stack.
                        *(["--tls-cluster", "yes"] if self.config.secure else []),
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
        if self._serving():  # formed already (a running cluster): nothing to do
            return
        deadline = time.monotonic() + timeout_s
        clients: list[Any] = [redis_client(self.config, port, timeout_s=2) for port in self.ports]
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
        infos = []
        for port in self.ports:
            client = redis_client(self.config, port, timeout_s=2)
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
        # The secured cluster has the single Redis' user, password and CA.
        return redis_env(self.config, self.ports[0], "SIGNALS_REDIS_CLUSTER_URL")

    def security(self) -> str:
        if not self.config.secure:
            return "plaintext, no authentication"
        return "TLS only, cluster bus TLS too, ACL user feedsignals; default user off"


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
        #: Why the latest readiness probe failed, for the message if it never succeeds.
        self._last_probe_error: str | None = None

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
        return self.bundle.is_assembled(self.config.jars_state_dir)

    def install(self) -> tuple[int, float]:
        return self.bundle.assemble(
            self.config.jars_state_dir, self.config.state_dir / "logs" / f"maven-{self.name}.log"
        )

    def classpath(self) -> str:
        return self.bundle.classpath(self.config.jars_state_dir)

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
            f"ones ({self.config_file}); `{self.config.command('down')}` then "
            f"`{self.config.command('up')}` applies them"
        )

    def start(self) -> None:
        self.install()
        # Native libraries (JNA, lz4, snappy, zstd) unpack here, not in a maybe-noexec /tmp.
        tmp_dir = self.dir / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        # Private: the secured Kafka's holds its broker's own SCRAM password.
        self.config_file.touch(mode=0o600)
        self.config_file.chmod(0o600)
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
            last = f" (last probe: {self._last_probe_error})" if self._last_probe_error else ""
            raise StackError(
                f"{self.name}: not serving on {self.address()} after {timeout_s:.0f}s{last}; "
                f"log: {self.proc.log_tail()}"
            )

    def _probe(self) -> bool:
        if self.proc.exited_early():
            return True  # stop polling; wait_ready reports the exit
        host, _, port = self.address().rpartition(":")
        if port_free(int(port), host):
            self._last_probe_error = "nothing listening yet"
            return False
        try:
            served = self.serves()
        except Exception as exc:  # no secret in it: clients do not put passwords in errors
            self._last_probe_error = f"{type(exc).__name__}: {str(exc)[:300]}"
            raise
        self._last_probe_error = None if served else "not ready yet"
        return served

    def stop(self) -> bool:
        return self.proc.stop(timeout_s=60)

    @abc.abstractmethod
    def address(self) -> str: ...
