"""Apache Cassandra 5.0 for the local stack: one node on 127.0.0.1, a small heap, JDK 17.

Production runs ScyllaDB; Cassandra 5.0 is the CQL server obtainable here (from Maven
Central, `org.apache.cassandra:cassandra-all`, assembled by `infra/vendor.py`). It speaks
native protocol v5, which scylla-driver negotiates (ScyllaDB speaks v4, which the driver
falls back to). The jar ships no `cassandra.yaml` or `logback.xml`, so both are written
here; the JVM flags are those of Cassandra's `conf/jvm-server.options` and
`conf/jvm17-server.options` (cassandra-5.0 branch), with a smaller heap.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from infra.services import JvmServer, StackConfig, java_problem, port_problem, vendor_problem
from infra.vendor import Artifact, Bundle

CASSANDRA_VERSION = os.environ.get("SIGNALS_STACK_CASSANDRA_VERSION", "5.0.9")


def cassandra_dir(config: StackConfig, version: str = CASSANDRA_VERSION) -> Path:
    """The node's folder (config, data, commit log), one per release line: `cassandra-5.0`.
    A release line's data is not readable by an older one, and an earlier build's 2.1 data
    (in `cassandra/`) is not readable by 5.0, so they never share a folder."""
    return config.state_dir / ("cassandra-" + ".".join(version.split(".")[:2]))


def cassandra_bundle(version: str = CASSANDRA_VERSION) -> Bundle:
    return Bundle(
        name=f"cassandra-{version}",
        title="cassandra",
        artifacts=(Artifact("org.apache.cassandra", "cassandra-all", version),),
    )


_LOGBACK = """<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level %d{HH:mm:ss.SSS} [%thread] %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT" /></root>
</configuration>
"""

#: conf/jvm17-server.options (JPMS opens and exports, netty), plus the three that
#: bin/cassandra.in.sh adds on a JDK 17 (CASSANDRA-19001), which a JRE merely warns about.
_JDK17_FLAGS = [
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-exports=java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports=jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
]


def jvm_flags(heap: str, tmp_dir: Path) -> list[str]:
    return [
        f"-Xms{heap}",
        f"-Xmx{heap}",
        "-Xss256k",
        "-XX:+UseG1GC",
        "-XX:+ParallelRefProcEnabled",
        "-XX:MaxTenuringThreshold=1",
        "-XX:G1RSetUpdatingPauseTimePercent=5",
        "-XX:MaxGCPauseMillis=300",
        "-XX:InitiatingHeapOccupancyPercent=70",
        "-XX:+UseThreadPriorities",
        "-XX:+ExitOnOutOfMemoryError",
        "-XX:+PerfDisableSharedMem",
        "-Djava.net.preferIPv4Stack=true",
        # Native libraries (JNA, lz4, snappy, zstd) unpack here; /tmp may be noexec.
        f"-Djava.io.tmpdir={tmp_dir}",
        f"-Djna.tmpdir={tmp_dir}",
        *_JDK17_FLAGS,
    ]


def cassandra_config(config: StackConfig) -> dict[str, object]:
    """A one-node cassandra.yaml bound to loopback and our ports, state under our folder."""
    base = cassandra_dir(config)
    return {
        "cluster_name": "feedsignals-local",
        "num_tokens": 1,
        "partitioner": "org.apache.cassandra.dht.Murmur3Partitioner",
        "endpoint_snitch": "SimpleSnitch",
        "commitlog_sync": "periodic",
        "commitlog_sync_period": "10000ms",
        "seed_provider": [
            {
                "class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
                "parameters": [{"seeds": f"127.0.0.1:{config.cql_storage_port}"}],
            }
        ],
        "listen_address": "127.0.0.1",
        "rpc_address": "127.0.0.1",
        "storage_port": config.cql_storage_port,
        "native_transport_port": config.cql_port,
        "start_native_transport": True,
        "data_file_directories": [str(base / "data")],
        "commitlog_directory": str(base / "commitlog"),
        "saved_caches_directory": str(base / "saved_caches"),
        "hints_directory": str(base / "hints"),
        "cdc_raw_directory": str(base / "cdc_raw"),
        "concurrent_compactors": 1,
        "auto_snapshot": False,
        # The flush writes modest multi-row unlogged batches (~3-16 KiB) spanning many
        # users (sinks/cold_store.py says why). Failure threshold: Cassandra 5's default
        # (50 KiB), the strictest of the two production servers (ScyllaDB fails at 1 MiB),
        # so every test and benchmark shows the flush fits it; the warning is raised from
        # 5 KiB to just below it, or each flush batch would log one. Cassandra also warns
        # on every unlogged batch over 10 partitions, which would fill the log.
        "batch_size_warn_threshold": "40KiB",
        "batch_size_fail_threshold": "50KiB",
        "unlogged_batch_across_partitions_warn_threshold": 1000,
    }


class CassandraService(JvmServer):
    """Apache Cassandra 5.0 from Maven Central jars, run directly on the machine's JDK."""

    name = "cassandra"
    ready_poll_s = 0.5  # each probe is a whole driver connection

    def __init__(self, config: StackConfig) -> None:
        home = cassandra_dir(config)
        super().__init__(config, cassandra_bundle(), home, home / "cassandra.yaml")

    def problems(self) -> list[str]:
        return (
            java_problem("cassandra", self.config.java, 11, 17)
            + vendor_problem("cassandra", self.config.state_dir, self.is_installed())
            + port_problem("cql", self.config.cql_port)
            + port_problem("cql_storage", self.config.cql_storage_port)
        )

    def rendered_config(self) -> str:
        # JSON is valid YAML, so the config needs no YAML library.
        return json.dumps(cassandra_config(self.config), indent=1)

    def prepare(self) -> None:
        settings = cassandra_config(self.config)
        for key in ("commitlog_directory", "saved_caches_directory", "hints_directory"):
            os.makedirs(str(settings[key]), exist_ok=True)
        (self.dir / "logback.xml").write_text(_LOGBACK)

    def launch(self, tmp_dir: Path) -> list[str]:
        return [
            self.config.java,
            *jvm_flags(self.config.cassandra_heap, tmp_dir),
            "-Dcassandra-foreground=yes",
            f"-Dcassandra.config=file://{self.config_file}",
            f"-Dcassandra.logdir={self.config.state_dir / 'logs'}",
            f"-Dcassandra.storagedir={self.dir}",
            f"-Dlogback.configurationFile={self.dir / 'logback.xml'}",
            "-cp",
            self.bundle.classpath(self.config.state_dir),
            "org.apache.cassandra.service.CassandraDaemon",
        ]

    def serves(self) -> bool:
        from sinks.cql import connect_cluster  # noqa: PLC0415

        cluster = connect_cluster(["127.0.0.1"], self.config.cql_port)
        try:
            session = cluster.connect()
            return session.execute("SELECT release_version FROM system.local").one() is not None
        finally:
            cluster.shutdown()

    def address(self) -> str:
        return f"127.0.0.1:{self.config.cql_port}"

    def env(self) -> dict[str, str]:
        return {"SIGNALS_CQL_HOSTS": "127.0.0.1", "SIGNALS_CQL_PORT": str(self.config.cql_port)}
