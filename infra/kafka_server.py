"""Apache Kafka 4 (KRaft) for the local stack: one node that is both broker and controller.

The server is assembled from Maven Central jars (`infra/vendor.py`), its storage formatted
once (a fresh cluster id, `kafka.tools.StorageTool format`), and started as `kafka.Kafka
server.properties` on 127.0.0.1 with the JVM flags Kafka's own `kafka-run-class.sh` uses.
Data lives under `<state dir>/kafka/data` and survives `down`/`up`, as on a real broker.
Topics are never created automatically (`auto.create.topics.enable=false`, as in
production): `infra/topics.py` creates them with the admin API.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from infra.services import (
    JvmServer,
    StackConfig,
    StackError,
    java_problem,
    port_problem,
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


def server_properties(config: StackConfig, data_dir: Path) -> str:
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{config.kafka_controller_port}",
        "listeners": (
            f"PLAINTEXT://127.0.0.1:{config.kafka_port},"
            f"CONTROLLER://127.0.0.1:{config.kafka_controller_port}"
        ),
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{config.kafka_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
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
    return "".join(f"{key}={value}\n" for key, value in props.items())


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

    def problems(self) -> list[str]:
        return (
            java_problem("kafka", self.config.java, 17, 25)
            + vendor_problem("kafka", self.config.state_dir, self.is_installed())
            + port_problem("kafka", self.config.kafka_port)
            + port_problem(
                "kafka", self.config.kafka_controller_port, "SIGNALS_STACK_KAFKA_CONTROLLER_PORT"
            )
        )

    def rendered_config(self) -> str:
        return server_properties(self.config, self.data_dir)

    def prepare(self) -> None:
        self.log4j.write_text(_LOG4J2)
        if not (self.data_dir / "meta.properties").exists():
            # meta.properties is written last: without it, whatever is there is the
            # remainder of an interrupted format, with nothing of value in it.
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self._format()

    def launch(self, tmp_dir: Path) -> list[str]:
        return [
            self.config.java,
            *jvm_flags(self.config.kafka_heap, tmp_dir),
            f"-Dlog4j2.configurationFile={self.log4j}",
            f"-Dkafka.logs.dir={self.config.state_dir / 'logs'}",
            "-cp",
            self.bundle.classpath(self.config.state_dir),
            "kafka.Kafka",
            str(self.config_file),
        ]

    def _format(self) -> None:
        """Format the storage once: a new cluster id, this node's meta.properties."""
        command = [
            self.config.java,
            "-Xmx256m",
            f"-Dlog4j2.configurationFile={self.log4j}",
            "-cp",
            self.bundle.classpath(self.config.state_dir),
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            new_cluster_id(),
            "--config",
            str(self.config_file),
        ]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, check=False, timeout=120
            )
        except subprocess.TimeoutExpired:
            raise StackError(f"kafka: formatting {self.data_dir} took over 120s") from None
        if result.returncode != 0:
            lines = (result.stderr + result.stdout).strip().splitlines()
            reason = next(
                (line.strip() for line in lines if "Exception" in line or "Error" in line),
                lines[-1].strip() if lines else "no output",
            )
            raise StackError(f"kafka: formatting {self.data_dir} failed: {reason[:400]}")

    def serves(self) -> bool:
        from confluent_kafka.admin import AdminClient  # noqa: PLC0415

        admin = AdminClient({"bootstrap.servers": self.address(), "log_level": 0})
        metadata = admin.list_topics(timeout=5)
        return bool(metadata.brokers) and metadata.controller_id >= 0

    def address(self) -> str:
        return f"127.0.0.1:{self.config.kafka_port}"

    def env(self) -> dict[str, str]:
        return {"SIGNALS_KAFKA_BOOTSTRAP": self.address()}
