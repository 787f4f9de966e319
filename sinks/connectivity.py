"""How every client reaches a secured server: Settings turned into each library's options.

One set of settings (`SIGNALS_KAFKA_SECURITY_PROTOCOL`, `SIGNALS_KAFKA_SASL_*`,
`SIGNALS_KAFKA_SSL_*`, `SIGNALS_REDIS_USERNAME`/`_PASSWORD`/`_TLS_*`,
`SIGNALS_CQL_USERNAME`/`_PASSWORD`/`_TLS*`) serves every client the project has, so the
worker, the producer library, the CLIs, the ranker's Faust app and replay cannot disagree
about how to connect:

- `kafka_config`: librdkafka (confluent-kafka) configuration: producers, replay, admin;
- `aiokafka_options`: the worker's ingest consumer and its producer (aiokafka);
- `faust_credentials`: the Faust apps (the worker's and the ranker's), which pass them on
  to aiokafka;
- `redis_options`: redis-py, one Redis or a Cluster, asyncio or not;
- `cql_options`: scylla-driver's Cluster (authentication provider and TLS context).

Nothing here connects. Secrets leave their `SecretStr` only in the dictionaries handed to
a client library, never in a string that could be logged: `redacted` is for log lines.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from pathlib import Path

    from pydantic import SecretStr

    from streams.settings import Settings


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


def _path(value: Path | None) -> str | None:
    return None if value is None else str(value)


def kafka_uses_tls(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


def kafka_uses_sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol.startswith("SASL_")


def kafka_config(settings: Settings, bootstrap: str | None = None) -> dict[str, Any]:
    """librdkafka settings: the bootstrap servers plus security (`bootstrap` overrides the
    servers, for example a replay's target cluster that shares the credentials)."""
    return {"bootstrap.servers": bootstrap or settings.kafka_bootstrap, **kafka_security(settings)}


def kafka_security(settings: Settings) -> dict[str, Any]:
    """The librdkafka security settings alone (for clients given their servers apart)."""
    config: dict[str, Any] = {"security.protocol": settings.kafka_security_protocol.lower()}
    if kafka_uses_sasl(settings):
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
        config["sasl.username"] = settings.kafka_sasl_username
        config["sasl.password"] = _secret(settings.kafka_sasl_password)
    if kafka_uses_tls(settings):
        # "probe": the system's CA bundle (the wheel's OpenSSL does not know where it is).
        config["ssl.ca.location"] = _path(settings.kafka_ssl_ca_file) or "probe"
        config["ssl.endpoint.identification.algorithm"] = (
            "https" if settings.kafka_ssl_check_hostname else "none"
        )
        if settings.kafka_ssl_cert_file is not None:
            config["ssl.certificate.location"] = str(settings.kafka_ssl_cert_file)
            config["ssl.key.location"] = _path(settings.kafka_ssl_key_file)
            if settings.kafka_ssl_key_password is not None:
                config["ssl.key.password"] = _secret(settings.kafka_ssl_key_password)
    return config


def tls_context(
    ca_file: Path | None,
    cert_file: Path | None,
    key_file: Path | None,
    *,
    key_password: SecretStr | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A client TLS context that verifies the server (against `ca_file`, else the system's
    trust store), optionally presents a client certificate, and checks the host name."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=_path(ca_file))
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), _path(key_file), _secret(key_password))
    return context


def kafka_tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not kafka_uses_tls(settings):
        return None
    return tls_context(
        settings.kafka_ssl_ca_file,
        settings.kafka_ssl_cert_file,
        settings.kafka_ssl_key_file,
        key_password=settings.kafka_ssl_key_password,
        check_hostname=settings.kafka_ssl_check_hostname,
    )


def aiokafka_options(settings: Settings) -> dict[str, Any]:
    """aiokafka consumer/producer keyword arguments for the configured security."""
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    context = kafka_tls_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if kafka_uses_sasl(settings):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = _secret(settings.kafka_sasl_password)
    return options


def faust_credentials(settings: Settings) -> Any:
    """Faust's `broker_credentials` (None for PLAINTEXT): Faust hands them to aiokafka."""
    import faust  # noqa: PLC0415

    context = kafka_tls_context(settings)
    if kafka_uses_sasl(settings):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=_secret(settings.kafka_sasl_password),
            ssl_context=context,
            mechanism=settings.kafka_sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def redis_uses_tls(settings: Settings) -> bool:
    return settings.redis_url.startswith("rediss://")


def redis_options(settings: Settings) -> dict[str, Any]:
    """redis-py keyword arguments beside the URL (`from_url(url, **redis_options(s))`):
    the ACL user and password, and for rediss:// the CA, client certificate and host
    check. Works for `Redis` and `RedisCluster`, sync and asyncio alike."""
    options: dict[str, Any] = {}
    if settings.redis_password is not None:
        options["password"] = _secret(settings.redis_password)
        if settings.redis_username:
            options["username"] = settings.redis_username
    if redis_uses_tls(settings):
        options["ssl_cert_reqs"] = "required"
        options["ssl_check_hostname"] = settings.redis_tls_check_hostname
        if settings.redis_tls_ca_file is not None:
            options["ssl_ca_certs"] = str(settings.redis_tls_ca_file)
        if settings.redis_tls_cert_file is not None:
            options["ssl_certfile"] = str(settings.redis_tls_cert_file)
            options["ssl_keyfile"] = _path(settings.redis_tls_key_file)
    return options


def cql_options(settings: Settings) -> dict[str, Any]:
    """scylla-driver `Cluster` keyword arguments: a PasswordAuthenticator login and TLS.

    With host checking on, the driver checks each node's certificate against the address
    it connects to (contact points and discovered peers alike), so the certificates must
    name those addresses (IP SANs when nodes are reached by IP).
    """
    options: dict[str, Any] = {}
    if settings.cql_username and settings.cql_password is not None:
        from cassandra.auth import PlainTextAuthProvider  # noqa: PLC0415

        options["auth_provider"] = PlainTextAuthProvider(
            username=settings.cql_username, password=_secret(settings.cql_password)
        )
    if settings.cql_tls:
        options["ssl_context"] = tls_context(
            settings.cql_tls_ca_file,
            settings.cql_tls_cert_file,
            settings.cql_tls_key_file,
            check_hostname=settings.cql_tls_check_hostname,
        )
    return options


def redacted(url: str) -> str:
    """A URL fit for a log line: any password it carries replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}"))


#: Where a librdkafka client goes: bootstrap servers alone (a plaintext cluster, as in
#: tests), or a base configuration from `kafka_config` (servers plus security).
KafkaTarget = str | Mapping[str, Any]


def librdkafka_base(target: KafkaTarget) -> dict[str, Any]:
    """The librdkafka configuration a `KafkaTarget` stands for."""
    if isinstance(target, str):
        return {"bootstrap.servers": target}
    return dict(target)


def with_servers(target: KafkaTarget, bootstrap: str | None) -> dict[str, Any]:
    """`target`'s configuration (its security too) pointed at other servers, if given."""
    base = librdkafka_base(target)
    if bootstrap:
        base["bootstrap.servers"] = bootstrap
    return base
