"""Apache Kafka 4 (KRaft) for the local stack: one node that is both broker and controller.

The server is assembled from Maven Central jars (`infra/vendor.py`), its storage formatted
once (a fresh cluster id, `kafka.tools.StorageTool format`), and started as `kafka.Kafka
server.properties` on 127.0.0.1 with the JVM flags Kafka's own `kafka-run-class.sh` uses.
Data lives under `<state dir>/kafka/data` and survives `down`/`up`, as on a real broker.
Topics are never created automatically (`auto.create.topics.enable=false`, as in
production): `infra/topics.py` creates them with the admin API.

Secured (`StackConfig.secure`), its one client listener is SASL_SSL: TLS with the stack's
PEM certificate (client certificates asked for, not required) and SCRAM-SHA-512 or -256
logins. It is also the inter-broker listener, as the broker's own user; the controller
listener stays PLAINTEXT on loopback. KRaft keeps SCRAM credentials in the metadata log,
so the users are added when the storage is formatted (`StorageTool format --add-scram`).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from infra.credentials import (
    APP_USER,
    KAFKA_APP,
    KAFKA_BROKER,
    KAFKA_BROKER_USER,
    redact,
    write_private,
)
from infra.services import (
    JvmServer,
    StackConfig,
    StackError,
    java_problem,
    port_problem,
    settings_from,
    vendor_problem,
)
from infra.vendor import Artifact, Bundle

KAFKA_VERSION = os.environ.get("SIGNALS_STACK_KAFKA_VERSION", "4.4.0")
#: Kafka's POM leaves logging out (log4j is compile-only in its build); without an SLF4J
#: binding the server logs nothing. kafka-clients is on SLF4J 1.7, hence the 1.x binding.
LOG4J_VERSION = "2.26.1"


def kafka_bundle(version: str = KAFKA_VERSION) -> Bundle:
    return Bundle(
        name=f"kafka-{version}",
        title="kafka",
        artifacts=(
            Artifact("org.apache.kafka", "kafka_2.13", version),
            Artifact("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
            Artifact("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
        ),
    )


#: Warnings and errors only, but for the lines that say the server started or stopped: at
#: INFO every topic a test creates or deletes is a dozen lines.
_LOG4J2 = """Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.server.KafkaRaftServer
        level: INFO
      - name: kafka.server.BrokerServer
        level: INFO
"""


#: The SASL mechanisms the secured broker accepts; clients use the first (the env file's).
SCRAM_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")


def server_properties(
    config: StackConfig, data_dir: Path, broker_password: str | None = None
) -> str:
    """server.properties; the secured broker's needs its own SCRAM password (it logs in to
    its inter-broker listener like any client)."""
    listener = "SASL_SSL" if config.secure else "PLAINTEXT"
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{config.kafka_controller_port}",
        "listeners": (
            f"{listener}://127.0.0.1:{config.kafka_port},"
            f"CONTROLLER://127.0.0.1:{config.kafka_controller_port}"
        ),
        "advertised.listeners": f"{listener}://127.0.0.1:{config.kafka_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": listener,
        "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{listener}:{listener}",
        "log.dirs": str(data_dir),
        # One node: every internal topic has a single replica.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # Local workers join a group at once instead of after 3 s.
        "group.initial.rebalance.delay.ms": "0",
        # As in production: topics come from the topic spec, never from a client's request.
        "auto.create.topics.enable": "false",
        # Retention is enforced every 5 s rather than every 5 min, so a short retention
        # shows locally (the tests check that records really go).
        "log.retention.check.interval.ms": "5000",
        "num.partitions": "1",
    }
    if config.secure:
        if broker_password is None:
            raise ValueError("the secured broker needs its own SCRAM password")
        props.update(secure_properties(config, broker_password))
    return "".join(f"{key}={value}\n" for key, value in props.items())


def secure_properties(config: StackConfig, broker_password: str) -> dict[str, str]:
    """The SASL_SSL listener: PEM key store and trust store, SCRAM, the broker's login."""
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{KAFKA_BROKER_USER}" password="{broker_password}";'
    )
    tls = config.tls
    return {
        "sasl.enabled.mechanisms": ",".join(SCRAM_MECHANISMS),
        "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISMS[0],
        **{
            f"listener.name.sasl_ssl.{mechanism.lower()}.sasl.jaas.config": jaas
            for mechanism in SCRAM_MECHANISMS
        },
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(tls.server_keystore),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(tls.ca_cert),
        # Client certificates are asked for and checked when sent, not required. Only the
        # listener-prefixed form applies to a SASL_SSL listener (the bare one: SSL only).
        "listener.name.sasl_ssl.ssl.client.auth": "requested",
        # The broker's own connections check the certificate names 127.0.0.1 (it does).
        "ssl.endpoint.identification.algorithm": "https",
    }


def scram_arguments(users: dict[str, str]) -> list[str]:
    """StorageTool's `--add-scram` arguments: every user with every mechanism."""
    return [
        arg
        for user, password in users.items()
        for mechanism in SCRAM_MECHANISMS
        for arg in ("--add-scram", f"{mechanism}=[name={user},password={password}]")
    ]


def scram_fingerprint(users: dict[str, str]) -> str:
    """What the storage was formatted with (passwords are random: a hash gives none away)."""
    text = "".join(f"{user}\n{users[user]}\n" for user in sorted(users))
    return hashlib.sha256(text.encode()).hexdigest() + "\n"


def new_cluster_id() -> str:
    """A KRaft cluster id as Kafka makes them: 16 random bytes, URL-safe base64, no padding
    (and, as Kafka's Uuid does, never one that starts with '-')."""
    while True:
        raw = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not raw.startswith("-"):
            return raw


def jvm_flags(heap: str, tmp_dir: Path) -> list[str]:
    """kafka-run-class.sh's defaults for the server, with a smaller fixed heap; native
    libraries (lz4, snappy, zstd) unpack under the state folder, not a maybe-noexec /tmp."""
    return [
        f"-Xms{heap}",
        f"-Xmx{heap}",
        "-server",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:+ExplicitGCInvokesConcurrent",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Djava.io.tmpdir={tmp_dir}",
    ]


class KafkaService(JvmServer):
    name = "kafka"

    def __init__(self, config: StackConfig) -> None:
        home = config.state_dir / "kafka"
        super().__init__(config, kafka_bundle(), home, home / "server.properties")
        self.data_dir = self.dir / "data"
        self.log4j = self.dir / "log4j2.yaml"
        #: The SCRAM users' fingerprint the secured storage was formatted with.
        self.scram_file = self.dir / "scram-users.sha256"

    def problems(self) -> list[str]:
        return (
            java_problem("kafka", self.config.java, 17, 25)
            + vendor_problem("kafka", self.config.jars_state_dir, self.is_installed())
            + port_problem("kafka", self.config.kafka_port, self.config.setting("KAFKA_PORT"))
            + port_problem(
                "kafka",
                self.config.kafka_controller_port,
                self.config.setting("KAFKA_CONTROLLER_PORT"),
            )
        )

    def scram_users(self) -> dict[str, str]:
        """The secured broker's SCRAM users and their passwords."""
        secrets = self.config.secrets
        return {
            APP_USER: secrets.read(KAFKA_APP),
            KAFKA_BROKER_USER: secrets.read(KAFKA_BROKER),
        }

    def rendered_config(self) -> str:
        if not self.config.secure:
            return server_properties(self.config, self.data_dir)
        return server_properties(self.config, self.data_dir, self.config.secrets.read(KAFKA_BROKER))

    def prepare(self) -> None:
        self.log4j.write_text(_LOG4J2)
        if not (self.data_dir / "meta.properties").exists():
            # meta.properties is written last: without it, whatever is there is the
            # remainder of an interrupted format, with nothing of value in it.
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self._format()
        elif self.config.secure:
            self._check_scram_users()

    def _check_scram_users(self) -> None:
        """The stored passwords are the ones the storage knows, or no client can log in."""
        try:
            formatted_with = self.scram_file.read_text()
        except FileNotFoundError:
            formatted_with = None
        if formatted_with != scram_fingerprint(self.scram_users()):
            raise StackError(
                f"kafka: {self.data_dir} was formatted with other SCRAM passwords than "
                f"{self.config.secrets.dir} holds; `{self.config.command('down')}`, delete "
                f"{self.data_dir}, then `{self.config.command('up')}` (its topics go with it)"
            )

    def launch(self, tmp_dir: Path) -> list[str]:
        return [
            self.config.java,
            *jvm_flags(self.config.kafka_heap, tmp_dir),
            f"-Dlog4j2.configurationFile={self.log4j}",
            f"-Dkafka.logs.dir={self.config.state_dir / 'logs'}",
            "-cp",
            self.classpath(),
            "kafka.Kafka",
            str(self.config_file),
        ]

    def _format(self) -> None:
        """Format the storage once: a new cluster id, this node's meta.properties, and in
        the secured stack the SCRAM users. Their passwords go in a java argument file
        (`java @file`, deleted after), not on a command line anyone can see in `ps`."""
        users = self.scram_users() if self.config.secure else {}
        arguments = [
            "-Xmx256m",
            f"-Dlog4j2.configurationFile={self.log4j}",
            "-cp",
            self.classpath(),
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            new_cluster_id(),
            "--config",
            str(self.config_file),
            *scram_arguments(users),
        ]
        arg_file = self.dir / "format.args"
        write_private(arg_file, "".join(f'"{arg}"\n' for arg in arguments))
        try:
            result = subprocess.run(
                [self.config.java, f"@{arg_file}"],
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
            )
        except subprocess.TimeoutExpired:
            raise StackError(f"kafka: formatting {self.data_dir} took over 120s") from None
        finally:
            arg_file.unlink(missing_ok=True)
        if result.returncode != 0:
            lines = (result.stderr + result.stdout).strip().splitlines()
            reason = next(
                (line.strip() for line in lines if "Exception" in line or "Error" in line),
                lines[-1].strip() if lines else "no output",
            )
            reason = redact(reason, *users.values())
            raise StackError(f"kafka: formatting {self.data_dir} failed: {reason[:400]}")
        if users:
            self.scram_file.write_text(scram_fingerprint(users))

    def serves(self) -> bool:
        from confluent_kafka.admin import AdminClient  # noqa: PLC0415

        from sinks.connectivity import kafka_config  # noqa: PLC0415

        admin = AdminClient({**kafka_config(settings_from(self.env())), "log_level": 0})
        metadata = admin.list_topics(timeout=5)
        return bool(metadata.brokers) and metadata.controller_id >= 0

    def address(self) -> str:
        return f"127.0.0.1:{self.config.kafka_port}"

    def env(self) -> dict[str, str]:
        entries = {"SIGNALS_KAFKA_BOOTSTRAP": self.address()}
        if self.config.secure:
            entries |= {
                "SIGNALS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "SIGNALS_KAFKA_SASL_MECHANISM": SCRAM_MECHANISMS[0],
                "SIGNALS_KAFKA_SASL_USERNAME": APP_USER,
                "SIGNALS_KAFKA_SASL_PASSWORD_FILE": str(self.config.secrets.path(KAFKA_APP)),
                "SIGNALS_KAFKA_SSL_CA_FILE": str(self.config.tls.ca_cert),
            }
        return entries

    def security(self) -> str:
        if not self.config.secure:
            return "PLAINTEXT, no authentication"
        return (
            "SASL_SSL only: TLS (client certificate optional), SASL SCRAM-SHA-512 "
            "(or -256), user feedsignals; controller PLAINTEXT on loopback"
        )
