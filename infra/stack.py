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
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence

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


def load_config() -> StackConfig:
    def env_int(name: str, default: int) -> int:
        raw = os.environ.get(name)
        if raw is None:
            return default
        return _port(name, raw)

    cluster_ports = os.environ.get("SIGNALS_STACK_REDIS_CLUSTER_PORTS")
    return StackConfig(
        state_dir=state_dir(),
        redis_port=env_int("SIGNALS_STACK_REDIS_PORT", 16379),
        redis_cluster_ports=(
            StackConfig.redis_cluster_ports
            if cluster_ports is None
            else parse_cluster_ports("SIGNALS_STACK_REDIS_CLUSTER_PORTS", cluster_ports)
        ),
        kafka_port=env_int("SIGNALS_STACK_KAFKA_PORT", 19092),
        kafka_controller_port=env_int("SIGNALS_STACK_KAFKA_CONTROLLER_PORT", 19093),
        kafka_heap=os.environ.get("SIGNALS_STACK_KAFKA_HEAP", "512m"),
        cql_port=env_int("SIGNALS_STACK_CQL_PORT", 19042),
        cql_storage_port=env_int("SIGNALS_STACK_CQL_STORAGE_PORT", 17000),
        cassandra_heap=os.environ.get("SIGNALS_STACK_CASSANDRA_HEAP", "1g"),
        java=default_java(),
        ready_timeout_s=float(os.environ.get("SIGNALS_STACK_READY_TIMEOUT_S", "120")),
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


def up(config: StackConfig, say: Callable[[str], None] = print) -> None:
    stop_stand_ins(config, say)
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
        settings = Settings.load()
        provision(settings, say)
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
    from infra.migrate import apply_migrations  # noqa: PLC0415
    from sinks.cql import connect  # noqa: PLC0415

    cluster, session = connect(settings)
    try:
        applied = apply_migrations(session, settings)
    finally:
        cluster.shutdown()
    if applied:
        say(f"cql schema: applied {', '.join(applied)} to keyspace {settings.cql_keyspace}")
    else:
        say(f"cql schema: keyspace {settings.cql_keyspace} is up to date")


def _write_env_file(config: StackConfig, stack: list[Service], say: Callable[[str], None]) -> None:
    entries: dict[str, str] = {}
    for service in stack:
        entries.update(service.env())
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
    all_up = True
    for service in services(config):
        pid = service.pid()
        if pid is None:
            all_up = False
            say(f"{service.name:<13} down")
        else:
            say(f"{service.name:<13} up    {service.address():<22} pid {pid}")
    env_file = config.env_file if config.env_file.exists() else "(none: the stack is not up)"
    say(f"{'env file':<13} {env_file}")
    return all_up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("up", help="start the local stack (idempotent) and provision it")
    commands.add_parser("down", help="stop the processes the stack started")
    commands.add_parser("status", help="what is up and where (exit 1 if anything is down)")
    commands.add_parser("topics", help="apply the topic spec to the configured broker")
    commands.add_parser("migrate", help="apply CQL migrations to the configured CQL server")
    args = parser.parse_args(argv)
    try:
        if args.command in ("topics", "migrate"):
            settings = Settings.load()
            (apply_topic_spec if args.command == "topics" else apply_cql_migrations)(settings)
            return 0
        config = load_config()
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
