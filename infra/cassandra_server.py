"""Apache Cassandra 5.0 for the local stack: one node on 127.0.0.1, a small heap, JDK 17.

Production runs ScyllaDB; Cassandra 5.0 is the CQL server obtainable here (from Maven
Central, `org.apache.cassandra:cassandra-all`, assembled by `infra/vendor.py`). It speaks
native protocol v5, which scylla-driver negotiates (ScyllaDB speaks v4, which the driver
falls back to). The jar ships no `cassandra.yaml` or `logback.xml`, so both are written
here; the JVM flags are those of Cassandra's `conf/jvm-server.options` and
`conf/jvm17-server.options` (cassandra-5.0 branch), with a smaller heap.

Secured (`StackConfig.secure`): logins with `PasswordAuthenticator` (roles and grants by
`CassandraRoleManager`, `CassandraAuthorizer`), and the native port speaks TLS only
(`client_encryption_options` with the PEM keystore, client certificates not required).
Once it serves, `wait_ready` logs in as the built-in superuser `cassandra` (default
password `cassandra`, created at once: `-Dcassandra.superuser_setup_delay_ms=0`), gives
it a random password from the secrets folder, and creates the app's role `feedsignals`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from infra.credentials import (
    APP_USER,
    CQL_ADMIN,
    CQL_APP,
    CQL_DEFAULT_PASSWORD,
    CQL_SUPERUSER,
    redact,
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

if TYPE_CHECKING:
    from cassandra.cluster import Cluster, Session

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
    settings: dict[str, object] = {
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
    if config.secure:
        settings |= secure_config(config)
    return settings


def secure_config(config: StackConfig) -> dict[str, object]:
    """Password logins and TLS-only clients (PEM key store: key, certificate and CA)."""
    tls = config.tls
    return {
        "authenticator": {"class_name": "org.apache.cassandra.auth.PasswordAuthenticator"},
        "authorizer": {"class_name": "org.apache.cassandra.auth.CassandraAuthorizer"},
        "role_manager": {"class_name": "org.apache.cassandra.auth.CassandraRoleManager"},
        "client_encryption_options": {
            "enabled": True,
            "optional": False,  # TLS only: a plaintext client is refused
            "ssl_context_factory": {
                "class_name": "org.apache.cassandra.security.PEMBasedSslContextFactory"
            },
            "keystore": str(tls.server_keystore),
            "truststore": str(tls.ca_cert),
            "require_client_auth": False,
        },
    }


class CassandraService(JvmServer):
    """Apache Cassandra 5.0 from Maven Central jars, run directly on the machine's JDK."""

    name = "cassandra"
    ready_poll_s = 0.5  # each probe is a whole driver connection

    def __init__(self, config: StackConfig) -> None:
        home = cassandra_dir(config)
        super().__init__(config, cassandra_bundle(), home, home / "cassandra.yaml")
        #: Who the latest successful probe logged in as (the secured stack): the app's
        #: role, or the superuser with the stored or the default password.
        self._login: str | None = None

    def problems(self) -> list[str]:
        setting = self.config.setting
        return (
            java_problem("cassandra", self.config.java, 11, 17)
            + vendor_problem("cassandra", self.config.jars_state_dir, self.is_installed())
            + port_problem("cql", self.config.cql_port, setting("CQL_PORT"))
            + port_problem("cql_storage", self.config.cql_storage_port, setting("CQL_STORAGE_PORT"))
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
            # The default superuser at once rather than after 10 s: `up` logs in with it.
            *(["-Dcassandra.superuser_setup_delay_ms=0"] if self.config.secure else []),
            "-cp",
            self.classpath(),
            "org.apache.cassandra.service.CassandraDaemon",
        ]

    def _logins(self) -> dict[str, dict[str, str]]:
        """The env entries to log in with, in the order tried: the app's role (set up
        already), the superuser with its stored password, then with the default one."""
        entries = self.env()
        if not self.config.secure:
            return {"anonymous": entries}
        superuser = {**entries, "SIGNALS_CQL_USERNAME": CQL_SUPERUSER}
        del superuser["SIGNALS_CQL_PASSWORD_FILE"]
        return {
            "app": entries,
            "admin": {
                **superuser,
                "SIGNALS_CQL_PASSWORD_FILE": str(self.config.secrets.path(CQL_ADMIN)),
            },
            "default": {**superuser, "SIGNALS_CQL_PASSWORD": CQL_DEFAULT_PASSWORD},
        }

    def _session(self, entries: dict[str, str]) -> tuple[Cluster, Session]:
        from infra.migrate import open_session  # noqa: PLC0415

        return open_session(settings_from(entries))

    def serves(self) -> bool:
        from cassandra import AuthenticationFailed  # noqa: PLC0415
        from cassandra.cluster import NoHostAvailable  # noqa: PLC0415

        refused = []
        for login, entries in self._logins().items():
            try:
                cluster, session = self._session(entries)
            except NoHostAvailable as exc:
                errors = list(exc.errors.values())
                if errors and all(isinstance(error, AuthenticationFailed) for error in errors):
                    refused.append(login)
                    continue  # it answers, but not to this login: try the next
                raise
            try:
                row = session.execute("SELECT release_version FROM system.local").one()
            finally:
                cluster.shutdown()
            self._login = login
            return row is not None
        raise StackError(
            f"cql: refused every login ({', '.join(refused)}): role {APP_USER} with "
            f"{self.config.secrets.path(CQL_APP)}, role {CQL_SUPERUSER} with "
            f"{self.config.secrets.path(CQL_ADMIN)} or the default password"
        )

    def wait_ready(self, timeout_s: float) -> None:
        super().wait_ready(timeout_s)
        if self.config.secure and self._login != "app":
            self._set_up_roles()

    def _set_up_roles(self) -> None:
        """The superuser's default password replaced, then the app's role created: in this
        order, so a role `feedsignals` that logs in means both were done."""
        secrets = self.config.secrets
        admin_password, app_password = secrets.read(CQL_ADMIN), secrets.read(CQL_APP)
        login = self._login or "default"
        cluster, session = self._session(self._logins()[login])
        try:
            if login == "default":
                session.execute(f"ALTER ROLE {CQL_SUPERUSER} WITH PASSWORD = %s", (admin_password,))
            # SUPERUSER: the app's migrations, the what-if namespaces and the tests create
            # and drop keyspaces of their own; a narrower role would need a grant per
            # keyspace name. Production grants its role what it needs instead.
            # Created, or (a role left with another password) given the stored one. Not
            # both: Cassandra 5 refuses a second password change within 5 s.
            exists = session.execute(
                "SELECT role FROM system_auth.roles WHERE role = %s", (APP_USER,)
            ).one()
            verb = "ALTER" if exists else "CREATE"
            options = "PASSWORD = %s AND LOGIN = true AND SUPERUSER = true"
            session.execute(f"{verb} ROLE {APP_USER} WITH {options}", (app_password,))
        except Exception as exc:
            reason = redact(f"{type(exc).__name__}: {exc}", admin_password, app_password)
            raise StackError(f"cql: setting up the roles failed: {reason[:300]}") from None
        finally:
            cluster.shutdown()
        self._login = "app"

    def address(self) -> str:
        return f"127.0.0.1:{self.config.cql_port}"

    def env(self) -> dict[str, str]:
        entries = {"SIGNALS_CQL_HOSTS": "127.0.0.1", "SIGNALS_CQL_PORT": str(self.config.cql_port)}
        if self.config.secure:
            entries |= {
                "SIGNALS_CQL_USERNAME": APP_USER,
                "SIGNALS_CQL_PASSWORD_FILE": str(self.config.secrets.path(CQL_APP)),
                "SIGNALS_CQL_TLS": "true",
                "SIGNALS_CQL_TLS_CA_FILE": str(self.config.tls.ca_cert),
            }
        return entries

    def security(self) -> str:
        if not self.config.secure:
            return "plaintext, no authentication"
        return (
            f"TLS only (client certificate not required), password logins, role {APP_USER}; "
            f"the default {CQL_SUPERUSER} password replaced"
        )
