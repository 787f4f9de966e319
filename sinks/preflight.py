"""Can this process reach its servers as configured? One line per server that says which
server and why not, before anything is read or written.

The long-running processes (worker, ranker, API) check at start: a refused login, an
untrusted certificate or a plaintext client on a TLS port is a configuration error that
no retry will fix, so they exit with those lines instead of retrying forever (and, for
the worker, before it has consumed or committed anything). A server that is merely down
is left to the usual retries with backoff. `signals check` prints the same lines.

The causes come from each client library's own words: librdkafka's log (its exceptions
only say "transport failure"), redis-py's and scylla-driver's exceptions.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sinks.connectivity import cql_options, kafka_config, redis_options, redis_uses_tls

if TYPE_CHECKING:
    from streams.settings import Settings


class Trouble(StrEnum):
    NONE = "ok"
    AUTH = "authentication failed"
    TLS = "certificate not trusted"
    NOT_TLS = "the server does not speak TLS"
    PLAINTEXT = "the server expects TLS"
    UNREACHABLE = "unreachable"
    OTHER = "failed"

    @property
    def fatal(self) -> bool:
        """A configuration problem: retrying will not help."""
        return self in (Trouble.AUTH, Trouble.TLS, Trouble.NOT_TLS, Trouble.PLAINTEXT)


@dataclass(frozen=True)
class Reach:
    """The outcome of reaching one server."""

    server: str  # e.g. "kafka 127.0.0.1:9092"
    trouble: Trouble
    detail: str = ""  # the cause in the client's words, and what to check

    @property
    def ok(self) -> bool:
        return self.trouble is Trouble.NONE

    def line(self) -> str:
        if self.ok:
            return f"{self.server}: ok{f' ({self.detail})' if self.detail else ''}"
        return f"{self.server}: {self.trouble.value}: {self.detail}"


_AUTH = re.compile(
    r"SASL authentication error|invalid username-password|WRONGPASS|NOAUTH|"
    r"Authentication required|Bad credentials|AuthenticationFailed|authentication failed",
    re.IGNORECASE,
)
_TLS = re.compile(
    r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|could not be verified|"
    r"hostname mismatch|doesn't match|IP address mismatch",
    re.IGNORECASE,
)
_NOT_TLS = re.compile(r"WRONG_VERSION_NUMBER|wrong version number|record layer failure", re.I)
_CLOSED = re.compile(
    r"connection closed by peer|Connection reset by peer|Connection closed by server|"
    r"ConnectionResetError|ConnectionShutdown|EOF occurred",
    re.IGNORECASE,
)
_UNREACHABLE = re.compile(
    r"Connection refused|timed out|Timeout|No route to host|Name or service not known", re.I
)


def classify(text: str, client_uses_tls: bool) -> Trouble:
    """What a client's error text says went wrong (`client_uses_tls`: whether this client
    tried TLS, which tells a plaintext client on a TLS port from other resets)."""
    if _AUTH.search(text):
        return Trouble.AUTH
    if _TLS.search(text):
        return Trouble.TLS
    if _NOT_TLS.search(text):
        return Trouble.NOT_TLS
    if _CLOSED.search(text):
        return Trouble.OTHER if client_uses_tls else Trouble.PLAINTEXT
    if _UNREACHABLE.search(text):
        return Trouble.UNREACHABLE
    return Trouble.OTHER


def _hint(trouble: Trouble, server: str, settings: Settings) -> str:
    """What to check, by server and trouble (names settings, never their values)."""
    names = {
        ("kafka", Trouble.AUTH): (
            f"SASL {settings.kafka_sasl_mechanism} as {settings.kafka_sasl_username!r} "
            "was refused: check SIGNALS_KAFKA_SASL_USERNAME and SIGNALS_KAFKA_SASL_PASSWORD"
        ),
        ("kafka", Trouble.TLS): "check SIGNALS_KAFKA_SSL_CA_FILE (unset: the system's CAs)",
        ("kafka", Trouble.PLAINTEXT): (
            "set SIGNALS_KAFKA_SECURITY_PROTOCOL to SSL or SASL_SSL for this listener"
        ),
        (
            "kafka",
            Trouble.NOT_TLS,
        ): "this listener is plaintext: check SIGNALS_KAFKA_SECURITY_PROTOCOL",
        ("redis", Trouble.AUTH): (
            f"as {settings.redis_username or 'default'!r}: check SIGNALS_REDIS_USERNAME and "
            "SIGNALS_REDIS_PASSWORD"
        ),
        ("redis", Trouble.TLS): "check SIGNALS_REDIS_TLS_CA_FILE (unset: the system's CAs)",
        ("redis", Trouble.PLAINTEXT): "use a rediss:// SIGNALS_REDIS_URL for a TLS port",
        ("redis", Trouble.NOT_TLS): "this port is plaintext: use redis:// in SIGNALS_REDIS_URL",
        ("cql", Trouble.AUTH): (
            f"as {settings.cql_username!r}: check SIGNALS_CQL_USERNAME and SIGNALS_CQL_PASSWORD"
            if settings.cql_username
            else "the server requires a login: set SIGNALS_CQL_USERNAME and SIGNALS_CQL_PASSWORD"
        ),
        ("cql", Trouble.TLS): "check SIGNALS_CQL_TLS_CA_FILE (unset: the system's CAs)",
        (
            "cql",
            Trouble.PLAINTEXT,
        ): "the server requires client encryption: set SIGNALS_CQL_TLS=true",
        ("cql", Trouble.NOT_TLS): "this port is plaintext: set SIGNALS_CQL_TLS=false",
    }
    return names.get((server, trouble), "")


def _reach(server: str, address: str, settings: Settings, text: str, tls: bool) -> Reach:
    trouble = classify(text, tls)
    cause = " ".join(text.split())[:240]
    hint = _hint(trouble, server, settings)
    return Reach(f"{server} {address}", trouble, f"{cause}{f' ({hint})' if hint else ''}")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def check_kafka(settings: Settings, timeout_s: float = 10.0) -> Reach:
    """A metadata request with the configured security (librdkafka)."""
    from confluent_kafka.admin import AdminClient  # noqa: PLC0415

    address = settings.kafka_bootstrap
    collect = _Collect()
    logger = logging.getLogger(f"{__name__}.librdkafka")
    logger.propagate = False  # its lines are summed up in the one returned
    logger.setLevel(logging.DEBUG)  # a disconnect is logged below WARNING
    logger.addHandler(collect)
    try:
        config: dict[str, Any] = {**kafka_config(settings), "logger": logger}
        admin = AdminClient(config)
        tls = settings.kafka_security_protocol in ("SSL", "SASL_SSL")
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                admin.list_topics(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
                return Reach(f"kafka {address}", Trouble.NONE, settings.kafka_security_protocol)
            except Exception as exc:
                admin.poll(0)  # serve the log lines queued so far
                failures = [m.split(": ", 2)[-1] for m in collect.messages if "FAIL" in m]
                text = failures[0] if failures else str(exc)
                # A refusal is final at once; anything else may be a broker starting up.
                if classify(text, tls).fatal or time.monotonic() >= deadline:
                    return _reach("kafka", address, settings, text, tls)
    finally:
        logger.removeHandler(collect)


def check_redis(settings: Settings, timeout_s: float = 5.0) -> Reach:
    """A PING with the configured user, password and TLS (one node of a cluster)."""
    import redis  # noqa: PLC0415

    address = _url_address(settings.redis_url)
    client = redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        **redis_options(settings),
    )
    try:
        client.ping()
        mode = "TLS" if redis_uses_tls(settings) else "plaintext"
        return Reach(f"redis {address}", Trouble.NONE, mode)
    except redis.RedisError as exc:
        return _reach(
            "redis", address, settings, f"{type(exc).__name__}: {exc}", redis_uses_tls(settings)
        )
    finally:
        client.close()


def check_cql(settings: Settings) -> Reach:
    """A connection (login, TLS handshake) to the contact points, then a system query."""
    from sinks.cql import connect_cluster  # noqa: PLC0415

    address = f"{settings.cql_hosts}:{settings.cql_port}"
    cluster = connect_cluster(
        settings.cql_contact_points,
        settings.cql_port,
        protocol_version=settings.cql_protocol_version,
        **cql_options(settings),
    )
    try:
        session = cluster.connect()
        session.execute("SELECT release_version FROM system.local")
        return Reach(f"cql {address}", Trouble.NONE, "TLS" if settings.cql_tls else "plaintext")
    except Exception as exc:
        errors = getattr(exc, "errors", None)
        text = repr(next(iter(errors.values()))) if errors else f"{type(exc).__name__}: {exc}"
        return _reach("cql", address, settings, text, settings.cql_tls)
    finally:
        cluster.shutdown()


def check_all(settings: Settings, *, cql: bool = True) -> list[Reach]:
    """Kafka, Redis and (unless `cql` is False) the CQL cold tier, in that order."""
    found = [check_kafka(settings), check_redis(settings)]
    if cql:
        found.append(check_cql(settings))
    return found


def _url_address(url: str) -> str:
    from urllib.parse import urlsplit  # noqa: PLC0415

    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}"
