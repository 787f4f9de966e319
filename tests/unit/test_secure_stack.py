"""The secured local stack's pure parts: rendered configs, ports, certificates, passwords,
the env file and `status` (no server is started here)."""

from __future__ import annotations

import json
import os
import ssl
import stat
from pathlib import Path

import pytest

from infra.cassandra_server import CassandraService, cassandra_config
from infra.credentials import PASSWORDS, REDIS_APP, StackSecrets, redact, redis_acl
from infra.kafka_server import (
    KafkaService,
    scram_arguments,
    scram_fingerprint,
    server_properties,
)
from infra.process import ManagedProcess
from infra.services import (
    CLUSTER_BUS_OFFSET,
    RedisClusterService,
    StackConfig,
    StackError,
    redis_server_args,
    settings_from,
)
from infra.stack import (
    PLAIN_PORTS,
    SECURE_MARKER,
    SECURE_PORTS,
    Ports,
    env_entries,
    load_config,
    services,
    status,
)
from infra.tls import TlsFiles, ensure_tls
from sinks.connectivity import kafka_config, redis_options, tls_context

BROKER_PASSWORD = "broker-secret-xyz"

#: The env file's settings the application reads (streams/settings.py), and the three
#: the tests of mTLS and refusals read.
APP_SETTINGS = {
    "SIGNALS_KAFKA_BOOTSTRAP",
    "SIGNALS_KAFKA_SECURITY_PROTOCOL",
    "SIGNALS_KAFKA_SASL_MECHANISM",
    "SIGNALS_KAFKA_SASL_USERNAME",
    "SIGNALS_KAFKA_SASL_PASSWORD_FILE",
    "SIGNALS_KAFKA_SSL_CA_FILE",
    "SIGNALS_REDIS_URL",
    "SIGNALS_REDIS_USERNAME",
    "SIGNALS_REDIS_PASSWORD_FILE",
    "SIGNALS_REDIS_TLS_CA_FILE",
    "SIGNALS_REDIS_CLUSTER_URL",
    "SIGNALS_CQL_HOSTS",
    "SIGNALS_CQL_PORT",
    "SIGNALS_CQL_USERNAME",
    "SIGNALS_CQL_PASSWORD_FILE",
    "SIGNALS_CQL_TLS",
    "SIGNALS_CQL_TLS_CA_FILE",
}
TEST_SETTINGS = {
    "SIGNALS_STACK_TLS_CLIENT_CERT_FILE",
    "SIGNALS_STACK_TLS_CLIENT_KEY_FILE",
    "SIGNALS_STACK_TLS_OTHER_CA_FILE",
}


def secure_config(tmp_path: Path) -> StackConfig:
    return StackConfig(
        state_dir=tmp_path / "secure",
        redis_port=SECURE_PORTS.redis,
        redis_cluster_ports=SECURE_PORTS.redis_cluster,
        kafka_port=SECURE_PORTS.kafka,
        kafka_controller_port=SECURE_PORTS.kafka_controller,
        cql_port=SECURE_PORTS.cql,
        cql_storage_port=SECURE_PORTS.cql_storage,
        secure=True,
        vendor_state_dir=tmp_path,
    )


def with_passwords(config: StackConfig) -> dict[str, str]:
    config.secrets.ensure()
    return {name: config.secrets.read(name) for name in PASSWORDS}


def properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


# --- Kafka -------------------------------------------------------------------------------


def test_secured_kafka_has_one_sasl_ssl_listener_for_clients_and_brokers(tmp_path: Path) -> None:
    config = secure_config(tmp_path)
    props = properties(server_properties(config, tmp_path / "data", BROKER_PASSWORD))
    assert props["listeners"] == "SASL_SSL://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["advertised.listeners"] == "SASL_SSL://127.0.0.1:29092"
    assert "PLAINTEXT://" not in props["listeners"]  # only the loopback controller is plain
    assert props["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL"
    assert props["inter.broker.listener.name"] == "SASL_SSL"
    assert props["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512,SCRAM-SHA-256"
    for mechanism in ("scram-sha-512", "scram-sha-256"):
        jaas = props[f"listener.name.sasl_ssl.{mechanism}.sasl.jaas.config"]
        assert jaas.startswith("org.apache.kafka.common.security.scram.ScramLoginModule required")
        assert f'password="{BROKER_PASSWORD}";' in jaas
    tls = config.tls
    assert props["ssl.keystore.type"] == props["ssl.truststore.type"] == "PEM"
    assert props["ssl.keystore.location"] == str(tls.server_keystore)
    assert props["ssl.truststore.location"] == str(tls.ca_cert)
    # The bare ssl.client.auth applies to SSL listeners only: SASL_SSL needs the prefix.
    assert props["listener.name.sasl_ssl.ssl.client.auth"] == "requested"
    assert "ssl.client.auth" not in props
    assert props["auto.create.topics.enable"] == "false"


def test_the_plain_kafka_config_has_no_security_settings(tmp_path: Path) -> None:
    props = properties(server_properties(StackConfig(state_dir=tmp_path), tmp_path / "data"))
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert not [key for key in props if "sasl" in key or "ssl" in key]


def test_the_secured_broker_needs_its_own_password(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SCRAM password"):
        server_properties(secure_config(tmp_path), tmp_path / "data")


def test_scram_users_are_added_with_both_mechanisms() -> None:
    args = scram_arguments({"feedsignals": "a", "feedsignals-broker": "b"})
    assert args == [
        "--add-scram",
        "SCRAM-SHA-512=[name=feedsignals,password=a]",
        "--add-scram",
        "SCRAM-SHA-256=[name=feedsignals,password=a]",
        "--add-scram",
        "SCRAM-SHA-512=[name=feedsignals-broker,password=b]",
        "--add-scram",
        "SCRAM-SHA-256=[name=feedsignals-broker,password=b]",
    ]
    assert scram_arguments({}) == []


def test_the_scram_fingerprint_tells_other_passwords_apart_and_shows_none() -> None:
    users = {"feedsignals": "pw-one", "feedsignals-broker": "pw-two"}
    fingerprint = scram_fingerprint(users)
    assert fingerprint == scram_fingerprint(dict(reversed(users.items())))
    assert fingerprint != scram_fingerprint({**users, "feedsignals": "pw-three"})
    assert "pw-one" not in fingerprint and "pw-two" not in fingerprint


def test_the_secured_kafka_env_and_the_probe_connect_as_the_app(tmp_path: Path) -> None:
    config = secure_config(tmp_path)
    passwords = with_passwords(config)
    kafka = KafkaService(config)
    assert "SIGNALS_KAFKA_SASL_PASSWORD" not in kafka.env()
    librdkafka = kafka_config(settings_from(kafka.env()))
    assert librdkafka["security.protocol"] == "sasl_ssl"
    assert librdkafka["sasl.mechanism"] == "SCRAM-SHA-512"
    assert librdkafka["sasl.username"] == "feedsignals"
    assert librdkafka["sasl.password"] == passwords["kafka-feedsignals"]
    assert librdkafka["ssl.ca.location"] == str(config.tls.ca_cert)
    assert librdkafka["ssl.endpoint.identification.algorithm"] == "https"


# --- Cassandra ---------------------------------------------------------------------------


def test_secured_cassandra_wants_passwords_and_tls_only(tmp_path: Path) -> None:
    config = secure_config(tmp_path)
    conf = cassandra_config(config)
    assert conf["authenticator"] == {
        "class_name": "org.apache.cassandra.auth.PasswordAuthenticator"
    }
    assert conf["authorizer"] == {"class_name": "org.apache.cassandra.auth.CassandraAuthorizer"}
    assert conf["role_manager"] == {"class_name": "org.apache.cassandra.auth.CassandraRoleManager"}
    encryption = conf["client_encryption_options"]
    assert isinstance(encryption, dict)
    assert encryption["enabled"] is True and encryption["optional"] is False
    assert encryption["require_client_auth"] is False
    assert encryption["ssl_context_factory"] == {
        "class_name": "org.apache.cassandra.security.PEMBasedSslContextFactory"
    }
    assert encryption["keystore"] == str(config.tls.server_keystore)
    assert encryption["truststore"] == str(config.tls.ca_cert)
    assert conf["native_transport_port"] == 29042 and conf["storage_port"] == 27000
    json.dumps(conf)


def test_the_plain_cassandra_config_has_no_security_settings(tmp_path: Path) -> None:
    conf = cassandra_config(StackConfig(state_dir=tmp_path))
    assert not {"authenticator", "authorizer", "role_manager", "client_encryption_options"} & set(
        conf
    )


def test_secured_cassandra_sets_the_superuser_up_at_once_and_logs_in_three_ways(
    tmp_path: Path,
) -> None:
    config = secure_config(tmp_path)
    with_passwords(config)
    cassandra = CassandraService(config)
    assert "-Dcassandra.superuser_setup_delay_ms=0" in cassandra.launch(tmp_path)
    logins = cassandra._logins()
    assert list(logins) == ["app", "admin", "default"]
    assert logins["app"]["SIGNALS_CQL_USERNAME"] == "feedsignals"
    assert logins["admin"]["SIGNALS_CQL_USERNAME"] == logins["default"]["SIGNALS_CQL_USERNAME"]
    assert logins["admin"]["SIGNALS_CQL_PASSWORD_FILE"].endswith("cql-cassandra.password")
    assert "SIGNALS_CQL_PASSWORD_FILE" not in logins["default"]
    plain = CassandraService(StackConfig(state_dir=tmp_path / "plain"))
    assert not any("superuser" in arg for arg in plain.launch(tmp_path))


# --- Redis -------------------------------------------------------------------------------


def test_the_acl_file_disables_default_and_holds_no_password() -> None:
    acl = redis_acl("s3cret-value")
    lines = acl.splitlines()
    assert lines[0] == "user default off"
    assert lines[1].startswith("user feedsignals on #") and lines[1].endswith(" ~* &* +@all")
    assert "s3cret-value" not in acl


def test_secured_redis_listens_on_tls_only_with_the_acl_file(tmp_path: Path) -> None:
    config = secure_config(tmp_path)
    passwords = with_passwords(config)
    args = redis_server_args(config, 26379, tmp_path)
    assert args[args.index("--port") + 1] == "0"
    assert args[args.index("--tls-port") + 1] == "26379"
    assert args[args.index("--tls-auth-clients") + 1] == "optional"
    assert args[args.index("--aclfile") + 1] == str(config.secrets.redis_acl_file)
    assert args[args.index("--tls-ca-cert-file") + 1] == str(config.tls.ca_cert)
    assert not any(password in arg for arg in args for password in passwords.values())
    plain = redis_server_args(StackConfig(state_dir=tmp_path), 16379, tmp_path)
    assert plain[plain.index("--port") + 1] == "16379"
    assert not any(arg.startswith("--tls") for arg in plain)


def test_the_secured_cluster_runs_its_bus_over_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[list[str]] = []
    monkeypatch.setattr(
        ManagedProcess, "start", lambda self, argv, cwd=None, env=None: started.append(argv)
    )
    RedisClusterService(secure_config(tmp_path)).start()
    assert len(started) == 3
    for argv in started:
        assert argv[argv.index("--tls-cluster") + 1] == "yes"
        assert argv[argv.index("--port") + 1] == "0"
    started.clear()
    RedisClusterService(StackConfig(state_dir=tmp_path / "plain")).start()
    assert not any("--tls-cluster" in argv for argv in started)


def test_secured_redis_clients_use_tls_and_the_acl_user(tmp_path: Path) -> None:
    config = secure_config(tmp_path)
    passwords = with_passwords(config)
    settings = settings_from(env_entries(config, services(config)))
    assert settings.redis_url == "rediss://127.0.0.1:26379/0"
    assert redis_options(settings) == {
        "password": passwords[REDIS_APP],
        "username": "feedsignals",
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": str(config.tls.ca_cert),
    }


# --- Ports, folders, the env file, status ------------------------------------------------


def all_ports(ports: Ports) -> set[int]:
    cluster = set(ports.redis_cluster)
    buses = {port + CLUSTER_BUS_OFFSET for port in cluster}
    singles = {ports.redis, ports.kafka, ports.kafka_controller, ports.cql, ports.cql_storage}
    assert len(singles | cluster | buses) == 5 + 2 * len(cluster)  # distinct within a stack
    return singles | cluster | buses


def test_the_two_stacks_share_no_port_bus_ports_included() -> None:
    assert not all_ports(PLAIN_PORTS) & all_ports(SECURE_PORTS)


def test_the_secured_stack_has_its_own_folder_ports_and_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIGNALS_STATE_DIR", str(tmp_path))
    for name in ("SIGNALS_STACK_REDIS_PORT", "SIGNALS_STACK_SECURE_REDIS_PORT"):
        monkeypatch.delenv(name, raising=False)
    plain = load_config()
    assert (plain.state_dir, plain.secure, plain.redis_port) == (tmp_path, False, 16379)
    secure = load_config(secure=True)
    assert (secure.state_dir, secure.secure) == (tmp_path / "secure", True)
    assert secure.jars_state_dir == tmp_path  # the plain stack's jars, fetched once
    assert (secure.redis_port, secure.redis_cluster_ports) == (26379, (27201, 27202, 27203))
    assert (secure.kafka_port, secure.cql_port, secure.cql_storage_port) == (29092, 29042, 27000)
    monkeypatch.setenv("SIGNALS_STACK_REDIS_PORT", "16380")  # the plain stack's only
    monkeypatch.setenv("SIGNALS_STACK_SECURE_REDIS_PORT", "26380")
    assert load_config().redis_port == 16380
    assert load_config(secure=True).redis_port == 26380
    assert load_config(secure=True).setting("CQL_PORT") == "SIGNALS_STACK_SECURE_CQL_PORT"
    assert load_config(secure=True).command("down") == "signals-stack down --secure"


def test_a_secured_stacks_folder_selects_the_secured_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "secure"
    folder.mkdir()
    (folder / SECURE_MARKER).write_text("")
    monkeypatch.setenv("SIGNALS_STATE_DIR", str(folder))
    for flag in (False, True):  # with or without --secure: that folder, not secure/secure
        config = load_config(secure=flag)
        assert (config.state_dir, config.secure, config.kafka_port) == (folder, True, 29092)
        assert config.jars_state_dir == tmp_path


def test_the_secured_env_file_names_files_never_passwords(tmp_path: Path) -> None:
    config = secure_config(tmp_path)
    passwords = with_passwords(config)
    entries = env_entries(config, services(config))
    assert set(entries) == APP_SETTINGS | TEST_SETTINGS
    assert entries["SIGNALS_KAFKA_BOOTSTRAP"] == "127.0.0.1:29092"
    assert entries["SIGNALS_REDIS_CLUSTER_URL"] == "rediss://127.0.0.1:27201/0"
    assert entries["SIGNALS_CQL_TLS"] == "true"
    for key, value in entries.items():
        if key.endswith("_FILE"):
            assert Path(value).is_absolute() and Path(value).is_relative_to(config.state_dir)
        assert not any(password in value for password in passwords.values())
    settings = settings_from(entries)  # what the app gets: every secret read from its file
    assert settings.kafka_sasl_password is not None and settings.cql_password is not None
    assert settings.kafka_sasl_password.get_secret_value() == passwords["kafka-feedsignals"]
    assert settings.cql_password.get_secret_value() == passwords["cql-feedsignals"]


def test_the_plain_env_file_is_unchanged(tmp_path: Path) -> None:
    config = StackConfig(state_dir=tmp_path)
    assert env_entries(config, services(config)) == {
        "SIGNALS_CQL_HOSTS": "127.0.0.1",
        "SIGNALS_CQL_PORT": "19042",
        "SIGNALS_KAFKA_BOOTSTRAP": "127.0.0.1:19092",
        "SIGNALS_REDIS_CLUSTER_URL": "redis://127.0.0.1:17101/0",
        "SIGNALS_REDIS_URL": "redis://127.0.0.1:16379/0",
    }


def test_probe_settings_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGNALS_KAFKA_BOOTSTRAP", "elsewhere:9092")
    monkeypatch.setenv("SIGNALS_REDIS_PASSWORD", "from-the-environment")
    settings = settings_from({"SIGNALS_REDIS_URL": "redis://127.0.0.1:16379/0"})
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.redis_password is None


def test_status_shows_how_to_connect_and_no_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = secure_config(tmp_path)
    passwords = with_passwords(config)
    monkeypatch.setattr(ManagedProcess, "pid", lambda self: 4242)
    lines: list[str] = []
    assert status(config, lines.append)
    text = "\n".join(lines)
    assert not any(password in text for password in passwords.values())
    by_service = {line.split()[0]: line for line in lines}
    assert "127.0.0.1:29092" in by_service["kafka"] and "SASL SCRAM-SHA-512" in by_service["kafka"]
    assert "SASL_SSL" in by_service["kafka"]
    assert "TLS" in by_service["redis"] and "ACL user feedsignals" in by_service["redis"]
    assert "TLS" in by_service["redis-cluster"] and "bus" in by_service["redis-cluster"]
    assert "TLS" in by_service["cassandra"] and "127.0.0.1:29042" in by_service["cassandra"]
    assert str(config.tls.dir) in by_service["tls"]
    plain: list[str] = []
    status(StackConfig(state_dir=tmp_path / "plain"), plain.append)
    assert not any("TLS" in line for line in plain)  # the plain status is as it was


# --- Passwords ---------------------------------------------------------------------------


def test_passwords_are_made_once_private_and_random(tmp_path: Path) -> None:
    secrets = StackSecrets(tmp_path / "secrets")
    assert secrets.ensure() == list(PASSWORDS)
    values = {name: secrets.path(name).read_text() for name in PASSWORDS}
    assert len(set(values.values())) == len(PASSWORDS)
    assert all(len(value) >= 40 and "\n" not in value for value in values.values())
    assert stat.S_IMODE(secrets.dir.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(secrets.path(name).stat().st_mode) == 0o600 for name in PASSWORDS)
    assert secrets.ensure() == []
    assert {name: secrets.read(name) for name in PASSWORDS} == values
    secrets.write_redis_acl()
    assert stat.S_IMODE(secrets.redis_acl_file.stat().st_mode) == 0o600


def test_redact_hides_every_secret() -> None:
    assert redact("bad pw1 and pw2", "pw1", "pw2", "") == "bad *** and ***"


# --- Certificates ------------------------------------------------------------------------


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, host: str = "127.0.0.1") -> None:
    """A TLS handshake between two in-memory ends (no socket, no port)."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_end = server.wrap_bio(to_server, to_client, server_side=True)
    client_end = client.wrap_bio(to_client, to_server, server_hostname=host)
    for _ in range(10):
        done = 0
        for end in (client_end, server_end):
            try:
                end.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        if done == 2:
            return
    raise AssertionError("handshake did not finish")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    files, made = ensure_tls(tmp_path_factory.mktemp("stack") / "tls")
    assert made
    return files


def server_context(files: TlsFiles, require_client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.server_cert, files.server_key)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(files.ca_cert)
    return context


def test_certificates_are_made_once_with_private_pkcs8_keys(tls_files: TlsFiles) -> None:
    assert tls_files.missing() == []
    assert ensure_tls(tls_files.dir) == (tls_files, False)
    for path in tls_files.all():
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o600 if path in tls_files.key_files() else 0o644), path
    for key in (tls_files.ca_key, tls_files.server_key, tls_files.client_key):
        assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8, clear
    keystore = tls_files.server_keystore.read_text()
    assert keystore.startswith("-----BEGIN PRIVATE KEY-----")
    assert keystore.count("-----BEGIN CERTIFICATE-----") == 2  # the server's, then the CA


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_the_server_certificate_is_trusted_for_both_names(tls_files: TlsFiles, host: str) -> None:
    client = tls_context(tls_files.ca_cert, None, None)
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    handshake(server_context(tls_files), client, host)


def test_the_server_certificate_names_nothing_else(tls_files: TlsFiles) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(server_context(tls_files), tls_context(tls_files.ca_cert, None, None), "10.0.0.1")


def test_a_client_trusting_the_other_ca_refuses_the_servers(tls_files: TlsFiles) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server_context(tls_files), tls_context(tls_files.other_ca_cert, None, None))


def test_the_client_certificate_passes_mtls(tls_files: TlsFiles) -> None:
    client = tls_context(tls_files.ca_cert, tls_files.client_cert, tls_files.client_key)
    handshake(server_context(tls_files, require_client_cert=True), client)


def test_an_incomplete_tls_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    folder.mkdir()
    (folder / "ca.pem").write_text("")
    with pytest.raises(StackError, match="incomplete"):
        ensure_tls(folder)


def test_no_openssl_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("infra.tls.shutil.which", lambda _name: None)
    with pytest.raises(StackError, match="openssl not found") as caught:
        ensure_tls(tmp_path / "tls")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "tls").exists()


def test_a_failing_openssl_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = tmp_path / "openssl"
    failing.write_text("#!/bin/sh\necho 'unable to load things' >&2\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setattr("infra.tls.shutil.which", lambda _name: str(failing))
    with pytest.raises(StackError, match="tls: openssl failed making a key: unable to load"):
        ensure_tls(tmp_path / "tls")
    assert not (tmp_path / "tls").exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".tls-")] == []
    assert os.access(failing, os.X_OK)
