"""`signals-stack`: the local stack of real services, without Docker.

    up       start Redis, a 3-master Redis Cluster, Apache Kafka 4 (KRaft) and Apache
             Cassandra 5.0 (idempotent; the two JVM servers are fetched from Maven Central
             the first time), write the env file, create the declared topics and apply
             the CQL migrations
    down     stop exactly the processes `up` started (by PID)
    status   what is up and where
    topics   apply the topic spec to the configured Kafka (admin API)
    migrate  apply the CQL migrations to the configured CQL server (ScyllaDB or Cassandra)

Everything lives under one folder (SIGNALS_STATE_DIR, default ./.state). Ports can be
moved with SIGNALS_STACK_REDIS_PORT, SIGNALS_STACK_REDIS_CLUSTER_PORTS (comma-separated,
one per master; each also uses port + 10000 for the cluster bus), SIGNALS_STACK_KAFKA_PORT,
SIGNALS_STACK_KAFKA_CONTROLLER_PORT, SIGNALS_STACK_CQL_PORT, SIGNALS_STACK_CQL_STORAGE_PORT.
Heaps: SIGNALS_STACK_KAFKA_HEAP (512m), SIGNALS_STACK_CASSANDRA_HEAP (1g). The JVM, a Java
17: SIGNALS_STACK_JAVA, else $JAVA_HOME/bin/java, else `java` on the PATH. Releases:
SIGNALS_STACK_KAFKA_VERSION (4.4.0), SIGNALS_STACK_CASSANDRA_VERSION (5.0.9).

--secure: the secured stack, beside the plain one (both can run at once): TLS only and
every client authenticated (Kafka SASL_SSL with SCRAM, Redis ACL user, CQL roles), with
certificates and random passwords made once under its folder, <SIGNALS_STATE_DIR>/secure
(tls/, secrets/; its env file names the password files, never a password). Its ports are
the plain ones + 10000 (Redis 26379, cluster 27201-27203, Kafka 29092 and 29093, CQL 29042,
storage 27000), moved with SIGNALS_STACK_SECURE_* (SIGNALS_STACK_SECURE_REDIS_PORT, ...).
A SIGNALS_STATE_DIR that is a secured stack's folder selects it without --secure.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from infra.cassandra_server import CassandraService
from infra.kafka_server import KafkaService
from infra.services import (
    CLUSTER_BUS_OFFSET,
    JvmServer,
    RedisClusterService,
    RedisService,
    Service,
    StackConfig,
    StackError,
)
from infra.vendor import VendorError
from streams.settings import Settings, state_dir

PROG = "signals-stack"

#: The secured stack's folder, under the plain stack's, and the file that marks one.
SECURE_SUBDIR = "secure"
SECURE_MARKER = "secured-stack"


@dataclass(frozen=True)
class Ports:
    redis: int
    redis_cluster: tuple[int, ...]
    kafka: int
    kafka_controller: int
    cql: int
    cql_storage: int


PLAIN_PORTS = Ports(16379, (17101, 17102, 17103), 19092, 19093, 19042, 17000)
#: The plain ports + 10000, but for the cluster: 27101-27103 are the plain cluster's bus
#: ports, so it takes 27201-27203 (its bus: 37201-37203).
SECURE_PORTS = Ports(26379, (27201, 27202, 27203), 29092, 29093, 29042, 27000)


def is_secure_dir(path: Path) -> bool:
    return (path / SECURE_MARKER).is_file()


def load_config(secure: bool = False) -> StackConfig:
    """The plain stack's config, or (`secure`, or SIGNALS_STATE_DIR is a secured stack's
    folder) the secured stack's: its own folder, ports and SIGNALS_STACK_SECURE_* variables."""
    base = state_dir()
    if is_secure_dir(base):
        secure, folder = True, base
    elif secure:
        folder = base / SECURE_SUBDIR
    else:
        folder = base
    defaults = SECURE_PORTS if secure else PLAIN_PORTS
    prefix = "SIGNALS_STACK_SECURE_" if secure else "SIGNALS_STACK_"

    def env_int(name: str, default: int) -> int:
        raw = os.environ.get(prefix + name)
        if raw is None:
            return default
        return _port(prefix + name, raw)

    cluster_ports = os.environ.get(prefix + "REDIS_CLUSTER_PORTS")
    return StackConfig(
        state_dir=folder,
        redis_port=env_int("REDIS_PORT", defaults.redis),
        redis_cluster_ports=(
            defaults.redis_cluster
            if cluster_ports is None
            else parse_cluster_ports(prefix + "REDIS_CLUSTER_PORTS", cluster_ports)
        ),
        kafka_port=env_int("KAFKA_PORT", defaults.kafka),
        kafka_controller_port=env_int("KAFKA_CONTROLLER_PORT", defaults.kafka_controller),
        kafka_heap=os.environ.get("SIGNALS_STACK_KAFKA_HEAP", "512m"),
        cql_port=env_int("CQL_PORT", defaults.cql),
        cql_storage_port=env_int("CQL_STORAGE_PORT", defaults.cql_storage),
        cassandra_heap=os.environ.get("SIGNALS_STACK_CASSANDRA_HEAP", "1g"),
        java=default_java(),
        ready_timeout_s=float(os.environ.get("SIGNALS_STACK_READY_TIMEOUT_S", "120")),
        secure=secure,
        # The same jars as the plain stack's, assembled once, in the folder above.
        vendor_state_dir=folder.parent if secure else None,
    )


def default_java() -> str:
    """SIGNALS_STACK_JAVA, else $JAVA_HOME/bin/java, else `java` on the PATH."""
    if os.environ.get("SIGNALS_STACK_JAVA"):
        return os.environ["SIGNALS_STACK_JAVA"]
    if os.environ.get("JAVA_HOME"):
        return os.path.join(os.environ["JAVA_HOME"], "bin", "java")
    return "java"


#: Processes an earlier build of this stack started under the same PID-file names: the
#: librdkafka mock broker and Cassandra 2.1. `up` and `down` stop them, so upgrading a
#: checkout with its stack running leaves nothing orphaned.
STAND_INS = (("kafka", "infra.kafka_mock"), ("cassandra", "apache-cassandra-2.1.0"))


def stop_stand_ins(config: StackConfig, say: Callable[[str], None]) -> None:
    for name, marker in STAND_INS:
        proc = config.process(name, marker)
        pid = proc.runs_with(marker)
        if pid is not None and proc.stop():
            say(f"{name}: stopped the stand-in an earlier version started (pid {pid})")


def _port(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise StackError(f"{name} must be a whole number, got {raw!r}") from None
    if not 0 < value < 65536:
        raise StackError(f"{name} must be a TCP port (1-65535), got {value}")
    return value


def parse_cluster_ports(name: str, raw: str) -> tuple[int, ...]:
    """`17001,17002,17003`: distinct ports, each leaving room for its bus port (+10000)."""
    ports = tuple(_port(name, part.strip()) for part in raw.split(",") if part.strip())
    if not ports:
        raise StackError(f"{name} must list at least one port, got {raw!r}")
    if len(set(ports)) != len(ports):
        raise StackError(f"{name} must not repeat a port, got {raw!r}")
    highest = 65535 - CLUSTER_BUS_OFFSET
    if max(ports) > highest:
        raise StackError(
            f"{name} ports must be at most {highest} (the cluster bus uses port + "
            f"{CLUSTER_BUS_OFFSET}), got {max(ports)}"
        )
    return ports


def services(config: StackConfig) -> list[Service]:
    # Cassandra first: it is the slowest to become ready, so it starts while the others do.
    return [
        CassandraService(config),
        KafkaService(config),
        RedisService(config),
        RedisClusterService(config),
    ]


def install_servers(stack: list[Service], say: Callable[[str], None]) -> None:
    """Fetch the JVM servers from Maven Central into the state folder, once each."""
    for service in stack:
        if isinstance(service, JvmServer) and not service.is_installed():
            say(
                f"{service.name}: fetching {service.bundle.name} from Maven Central "
                "(once; cached under the state folder)"
            )
            size, seconds = service.install()
            say(f"{service.name}: {size / 1e6:.0f} MB of jars in {seconds:.0f}s")


def refusals(stack: Sequence[Service], to_start: Sequence[Service]) -> list[str]:
    """Why `up` cannot go on: what keeps a stopped service from starting, and a running
    one started with other settings (one about to start writes its config afresh, so a
    config file left by an earlier run is no reason to refuse)."""
    problems = [line for service in to_start for line in service.problems()]
    return problems + [
        line
        for service in stack
        if service not in to_start and (line := service.drift()) is not None
    ]


def prepare_secure(config: StackConfig, say: Callable[[str], None]) -> None:
    """The secured stack's folder, certificates, passwords and Redis ACL file (each made
    once; messages name files, never a password)."""
    from infra.tls import ensure_tls  # noqa: PLC0415

    config.state_dir.mkdir(parents=True, exist_ok=True)
    (config.state_dir / SECURE_MARKER).write_text(
        "This folder is a secured signals-stack's (`signals-stack up --secure`).\n"
    )
    tls, made = ensure_tls(config.tls.dir)
    if made:
        say(f"tls: made a CA, the servers' and a client certificate in {tls.dir}")
    made_passwords = config.secrets.ensure()
    if made_passwords:
        say(f"secrets: made {len(made_passwords)} passwords in {config.secrets.dir}")
    config.secrets.write_redis_acl()


def up(config: StackConfig, say: Callable[[str], None] = print) -> None:
    stop_stand_ins(config, say)
    if config.secure:
        prepare_secure(config, say)
    stack = services(config)
    to_start = [service for service in stack if not service.is_running()]
    problems = refusals(stack, to_start)
    if problems:
        raise StackError("\n".join(problems))

    started: list[Service] = []
    try:
        try:
            install_servers(to_start, say)
        except VendorError as exc:
            raise StackError(str(exc)) from None
        for service in to_start:
            service.start()
            started.append(service)
        for service in stack:
            if service in started:
                began = time.monotonic()
                service.wait_ready(config.ready_timeout_s)
                say(
                    f"{service.name}: started at {service.address()} "
                    f"(pid {service.pid()}, ready in {time.monotonic() - began:.1f}s)"
                )
            else:
                # Already running, perhaps still starting (another `up` at the same time).
                service.wait_ready(config.ready_timeout_s)
                say(f"{service.name}: already up at {service.address()} (pid {service.pid()})")
        _write_env_file(config, stack, say)
        provision(env_file_settings(config), say)
    except BaseException:
        for service in reversed(started):
            service.stop()
        if started:
            say("stopped what this run had started: " + ", ".join(s.name for s in started))
        raise


def provision(settings: Settings, say: Callable[[str], None] = print) -> None:
    """Topics and CQL schema: idempotent, shared by `up`, `topics` and `migrate`."""
    apply_topic_spec(settings, say)
    apply_cql_migrations(settings, say)


def apply_topic_spec(settings: Settings, say: Callable[[str], None] = print) -> None:
    from infra.topics import apply_topics  # noqa: PLC0415

    for result in apply_topics(settings):
        line = f"topic {result.spec.name}: {result.outcome} ({result.spec.partitions} partitions)"
        say(line + (f" -- {result.detail}" if result.detail else ""))
        if result.outcome == "mismatch":
            raise StackError(f"topic {result.spec.name} {result.detail}; fix the topic or the spec")


def apply_cql_migrations(settings: Settings, say: Callable[[str], None] = print) -> None:
    from infra.migrate import migrate  # noqa: PLC0415

    applied = migrate(settings)
    if applied:
        say(f"cql schema: applied {', '.join(applied)} to keyspace {settings.cql_keyspace}")
    else:
        say(f"cql schema: keyspace {settings.cql_keyspace} is up to date")


def env_file_settings(config: StackConfig) -> Settings:
    """The settings the stack's env file gives (real environment variables win, as always)."""
    # `_env_file` is pydantic-settings' documented per-instance override; mypy cannot see it.
    return Settings(_env_file=config.env_file if config.env_file.exists() else None)  # type: ignore[call-arg]


def env_entries(config: StackConfig, stack: Sequence[Service]) -> dict[str, str]:
    """What the env file says: every service's settings, and for the secured stack the
    files tests of mTLS and refusals need (which the application does not read)."""
    entries: dict[str, str] = {}
    for service in stack:
        entries.update(service.env())
    if config.secure:
        tls = config.tls
        entries |= {
            "SIGNALS_STACK_TLS_CLIENT_CERT_FILE": str(tls.client_cert),
            "SIGNALS_STACK_TLS_CLIENT_KEY_FILE": str(tls.client_key),
            "SIGNALS_STACK_TLS_OTHER_CA_FILE": str(tls.other_ca_cert),
        }
    return entries


def _write_env_file(config: StackConfig, stack: list[Service], say: Callable[[str], None]) -> None:
    entries = env_entries(config, stack)
    body = "# written by `signals-stack up`; real environment variables override these\n"
    body += "".join(f"{key}={value}\n" for key, value in sorted(entries.items()))
    current = config.env_file.read_text() if config.env_file.exists() else None
    if current != body:
        config.env_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = config.env_file.with_suffix(".tmp")
        tmp.write_text(body)
        tmp.replace(config.env_file)
        say(f"env file: wrote {config.env_file}")
    else:
        say(f"env file: {config.env_file} unchanged")


def down(config: StackConfig, say: Callable[[str], None] = print) -> None:
    stop_stand_ins(config, say)
    for service in reversed(services(config)):
        pid = service.pid()
        if service.stop():
            say(f"{service.name}: stopped (pid {pid})")
        else:
            say(f"{service.name}: was not running")
    config.env_file.unlink(missing_ok=True)


def status(config: StackConfig, say: Callable[[str], None] = print) -> bool:
    """One line per service (and, secured, how clients must connect); never a secret."""
    all_up = True
    for service in services(config):
        pid = service.pid()
        security = f"  {service.security()}" if config.secure else ""
        if pid is None:
            all_up = False
            say(f"{service.name:<13} down")
        else:
            say(f"{service.name:<13} up    {service.address():<22} pid {pid}{security}")
    if config.secure:
        tls = config.tls
        say(
            f"{'tls':<13} {tls.dir} (clients trust {tls.ca_cert.name}; client certificate "
            f"{tls.client_cert.name}; {tls.other_ca_cert.name} signed nothing)"
        )
        say(f"{'secrets':<13} {config.secrets.dir} (password files, mode 0600)")
    env_file = config.env_file if config.env_file.exists() else "(none: the stack is not up)"
    say(f"{'env file':<13} {env_file}")
    return all_up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("up", "start the local stack (idempotent) and provision it"),
        ("down", "stop the processes the stack started"),
        ("status", "what is up and where (exit 1 if anything is down)"),
        ("topics", "apply the topic spec to the configured broker"),
        ("migrate", "apply CQL migrations to the configured CQL server"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument(
            "--secure",
            action="store_true",
            help="the secured stack (TLS, authentication), in <SIGNALS_STATE_DIR>/secure",
        )
    args = parser.parse_args(argv)
    try:
        if args.command in ("topics", "migrate"):
            settings = (
                env_file_settings(load_config(secure=True)) if args.secure else Settings.load()
            )
            (apply_topic_spec if args.command == "topics" else apply_cql_migrations)(settings)
            return 0
        config = load_config(secure=args.secure)
        if args.command == "up":
            up(config)
        elif args.command == "down":
            down(config)
        else:
            return 0 if status(config) else 1
        return 0
    except StackError as exc:
        for line in str(exc).splitlines():
            print(f"{PROG}: error: {line}", file=sys.stderr)
    except Exception as exc:  # one clear line, not a traceback, for anything a service throws
        print(f"{PROG}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
