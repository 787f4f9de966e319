"""All configuration, read from environment variables (prefix `SIGNALS_`).

`infra` writes the local stack's addresses to `<state dir>/stack.env`; settings read that
file too, and real environment variables win over it. Reading settings never connects.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.events import PRODUCT_EVENT_TYPES, EventType
from schemas.features import DEFAULT_WEIGHTS, FeatureConfig
from schemas.hot_layout import ColdIndexShape
from streams.logic.admission import Limits

#: Last-k per type, in the spirit of the seeds: many views, fewer high-intent actions.
DEFAULT_LAST_K: dict[EventType, int] = {
    EventType.VIEW: 100,
    EventType.CLICK: 50,
    EventType.ADD_TO_CART: 50,
    EventType.REMOVE_FROM_CART: 50,
    EventType.WISHLIST: 50,
    EventType.ORDER: 50,
}

#: Largest k per type. With printable product ids of at most 256 bytes (the event
#: contract; at most 512 in JSON), one user's snapshot rows stay under ~3.2 MB: one CQL
#: mutation, far below the servers' limit (half a commit log segment: 16 MiB on
#: Cassandra and ScyllaDB by default).
MAX_LAST_K = 1000

#: Secrets that may instead be read from a file named by `SIGNALS_<NAME>_FILE`.
SECRET_FILE_SETTINGS = (
    "kafka_sasl_password",
    "kafka_ssl_key_password",
    "redis_password",
    "cql_password",
)
#: Optional security settings: an empty value means unset.
OPTIONAL_SECURITY_SETTINGS = (
    *SECRET_FILE_SETTINGS,
    *(f"{name}_file" for name in SECRET_FILE_SETTINGS),
    "kafka_sasl_username",
    "kafka_ssl_ca_file",
    "kafka_ssl_cert_file",
    "kafka_ssl_key_file",
    "redis_username",
    "redis_tls_ca_file",
    "redis_tls_cert_file",
    "redis_tls_key_file",
    "cql_username",
    "cql_tls_ca_file",
    "cql_tls_cert_file",
    "cql_tls_key_file",
)

STATE_DIR_ENV = "SIGNALS_STATE_DIR"


def state_dir() -> Path:
    """Where the local stack keeps everything; `.state` under the working directory by default."""
    return Path(os.environ.get(STATE_DIR_ENV, ".state")).resolve()


def stack_env_file() -> Path:
    return state_dir() / "stack.env"


def stack_cluster_url() -> str | None:
    """The local stack's Redis Cluster (tests, benchmarks); a real variable wins over the
    env file, as in Settings. None when neither has one."""
    env_file = stack_env_file()
    from_file = (
        dotenv_values(env_file).get("SIGNALS_REDIS_CLUSTER_URL") if env_file.exists() else None
    )
    return os.environ.get("SIGNALS_REDIS_CLUSTER_URL") or from_file


class Settings(BaseSettings):
    # hide_input_in_errors: a validation error must not print the inputs (secrets among them).
    model_config = SettingsConfigDict(
        env_prefix="SIGNALS_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    # Kafka
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="comma-separated host:port list")
    kafka_replication_factor: int = Field(1, ge=1, description="for topics created on real Kafka")
    events_topic: str = "signals.events"
    events_partitions: int = Field(8, ge=1)
    dead_letter_topic: str = Field("signals.events.dlq", description="rejected events + reason")
    max_payload_bytes: int = Field(16384, ge=64, description="larger messages are dead-lettered")
    # A dead letter carries the rejected bytes as they were, up to this many; a larger
    # value goes as its first bytes plus a `dlq.truncated.from.bytes` header. Well under
    # the worker producer's request limit (1,000,000) and the topic's message limit.
    dead_letter_max_bytes: int = Field(
        256 * 1024, ge=1024, le=900_000, description="longest value a dead letter carries"
    )
    max_future_skew_s: int = Field(300, ge=0, description="how far ahead of now event time may be")
    min_event_time_ms: int = Field(
        1_500_000_000_000, description="events before this (2017-07-14) are dead-lettered"
    )

    # Kafka security (every Kafka client: the worker, producers, CLIs, the ranker, replay;
    # `streams.connectivity` turns these into each client library's options)
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how clients talk to the brokers"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism (SASL_* protocols)"
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user (SASL_* protocols)")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (secret)")
    kafka_sasl_password_file: Path | None = Field(
        None, description="file holding the SASL password (instead of the variable)"
    )
    kafka_ssl_ca_file: Path | None = Field(
        None,
        description="PEM CA bundle the brokers' certificates are checked against "
        "(unset: the system's trust store)",
    )
    kafka_ssl_cert_file: Path | None = Field(None, description="PEM client certificate (mTLS)")
    kafka_ssl_key_file: Path | None = Field(None, description="PEM key of the client certificate")
    kafka_ssl_key_password: SecretStr | None = Field(
        None, description="password of an encrypted client key (secret)"
    )
    kafka_ssl_key_password_file: Path | None = Field(
        None, description="file holding the client key's password"
    )
    kafka_ssl_check_hostname: bool = Field(
        True, description="the broker certificate must name the host connected to"
    )

    # Faust worker and its ingest consumer
    app_id: str = Field("feedsignals", description="Faust app id = consumer group id")
    # Events per batch (one getmany, one Redis script call, one commit). The per-batch
    # costs (Redis round trip, commit round trip) stop mattering past ~1000; larger
    # batches only lengthen the time one batch holds Redis and the redo after a crash.
    batch_max: int = Field(2000, ge=1, description="events applied per Redis round trip at most")
    # How long an empty poll waits. A batch is whatever has been prefetched, up to
    # batch_max, so this adds no latency under load; it only paces an idle loop.
    batch_within_s: float = Field(0.05, gt=0, description="longest wait for a batch when idle")
    # With the features off, later batches are planned and sent while Redis runs the
    # earlier ones' scripts (`streams.app.RecordInteractions._apply`): on traffic where
    # most users are new, 2 at once gave 42k events/s and 4 gave 82k on the peers bench.
    # With the features on, at most 2: the later batch reads and advances its users while
    # the earlier one writes (`streams.app._FeatureTurn`).
    apply_depth: int = Field(
        4, ge=1, le=16, description="batches applied at once (with the features on: at most 2)"
    )
    # Applied offsets are committed at most this often (and when the topic goes quiet), not
    # after every batch: a crash re-reads at most this much of applied, idempotent work.
    commit_interval_s: float = Field(
        0.5, ge=0, description="seconds between offset commits of applied batches"
    )
    # aiokafka fetch settings, its defaults (and Kafka's): 500 ms wait, 1 MiB per partition,
    # 50 MiB per fetch. Kafka answers a fetch as soon as there is data, so the wait only
    # paces fetches of an idle topic: on the local Kafka 4.4, 20 ms and 500 ms gave no clear
    # difference in freshness at 5k events/s (README, Benchmarks), and an idle worker cost
    # its broker 2.6% of a core at 20 ms, 1.3% at 500 ms (the worker itself: 2.9% and 1%).
    # At ~80 B per event, 1 MiB per partition is ~13k events, well above a batch.
    fetch_max_wait_ms: int = Field(
        500, ge=0, description="longest the broker holds a fetch that finds no data"
    )
    # A fetch that waits for this many bytes (up to the wait above) answers less often
    # with more: at 1.9k events/s, 65536 and a 25 ms wait took the worker from ~38% to
    # ~31% of a core (the closed loop, one run), at up to 25 ms more per event.
    fetch_min_bytes: int = Field(
        1, ge=1, description="bytes a fetch waits for (up to the fetch wait) before answering"
    )
    fetch_max_bytes: int = Field(50 * 1024 * 1024, ge=1024, description="per fetch request")
    max_partition_fetch_bytes: int = Field(
        1024 * 1024, ge=1024, description="per partition per fetch; larger messages still pass"
    )
    faust_datadir: Path = Field(
        default_factory=lambda: state_dir() / "faust", description="Faust's local data folder"
    )

    # Redis hot tier
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = Field(False, description="redis_url is a node of a Redis Cluster")
    redis_key_prefix: str = Field("ix", pattern=r"^[A-Za-z0-9_.-]+$")
    # Redis security: TLS is on when redis_url is rediss://; an ACL user and password
    # here rather than in the URL (which then carries no secret)
    redis_username: str | None = Field(None, description="Redis ACL user (AUTH username)")
    redis_password: SecretStr | None = Field(None, description="Redis password (secret)")
    redis_password_file: Path | None = Field(
        None, description="file holding the Redis password (instead of the variable)"
    )
    redis_tls_ca_file: Path | None = Field(
        None, description="PEM CA bundle for rediss:// (unset: the system's trust store)"
    )
    redis_tls_cert_file: Path | None = Field(None, description="PEM client certificate")
    redis_tls_key_file: Path | None = Field(None, description="PEM key of the client certificate")
    redis_tls_check_hostname: bool = Field(
        True, description="the server certificate must name the host connected to"
    )
    last_k: dict[EventType, int] = Field(default_factory=lambda: dict(DEFAULT_LAST_K))
    # Only to refuse it, from the environment, an env file or an argument alike.
    hot_ttl_s: int | None = Field(None, description="refused: hot keys never expire")
    inactivity_gap_s: float = Field(1800, gt=0, description="quiet time that ends a session")
    # A partition with no new events for this long has its event-time clock advanced by the
    # wall clock, so its sessions still end (no dummy events needed). Longer than the usual
    # gap between two batches of a busy partition, short next to the inactivity gap.
    session_idle_grace_s: float = Field(
        5.0, ge=0, description="quiet partition: clock follows wall"
    )
    flush_interval_s: float = Field(1.0, gt=0, description="how often ended sessions are flushed")
    flush_batch: int = Field(500, ge=1, description="users moved to the cold tier per round trip")
    # The worker remembers what the cold tier holds for hot users (so a flush skips the
    # history already stored): ~5 KB per realistic user, ~54 KB with every type full.
    stored_cache_mb: int = Field(
        256, ge=0, description="memory for snapshots the worker remembers as stored"
    )
    # The cold-tier index (`schemas.hot_layout.ColdIndexShape`): re-hydration skips the CQL
    # read of users the cold tier has never stored. ~1.2 bytes of Redis per user at 1%.
    cold_index_enabled: bool = Field(True, description="skip cold reads of never-stored users")
    cold_index_users: int = Field(
        20_000_000, ge=1000, description="users the cold-tier index is sized for"
    )
    cold_index_false_positive: float = Field(
        0.01, gt=0, lt=0.5, description="share of never-stored users read anyway, at that size"
    )

    # Rolling features (`schemas.features`) and rank-refresh triggers (`streams.logic.triggers`)
    # Off by default while they cost most of the ingest rate (README, Features: 0.25x of
    # the interaction store alone on the benchmark machine; issue 12's target is 0.75x).
    features_enabled: bool = Field(False, description="compute features in the ingest worker")
    allowed_lateness_s: float = Field(
        60, ge=0, description="events this far behind their partition still land in tiles"
    )
    affinity_half_life_h: float = Field(168, gt=0, description="user x category decay")
    trending_half_life_h: float = Field(6, gt=0, description="trending products' decay")
    # Partial overrides keep the other defaults; a type left out adds nothing.
    feature_weights: dict[EventType, float] = Field(
        default_factory=lambda: dict(DEFAULT_WEIGHTS), description="per type, for decayed scores"
    )
    rate_prior_views: float = Field(
        20, gt=0, description="product rates smoothed as if this many views showed the global rate"
    )
    # The worker keeps the user shares it wrote last, decoded (`sinks.feature_store`): their
    # next batch skips a read and a decode. ~1-2 KB of memory each on the bench's traffic
    # (36 MB with 16k users in process, shares and the bench's own copy together; the
    # freshness bench's worker grew 192 -> 310 MB with 50,000 of them).
    feature_cached_users: int = Field(
        20_000, ge=0, description="user shares kept decoded by the worker (0: none)"
    )
    triggers_enabled: bool = Field(
        False, description="publish rank-refresh triggers (needs features_enabled)"
    )
    trigger_topic: str = Field("signals.triggers", description="rank-refresh triggers, by user")
    trigger_debounce_s: float = Field(
        10, ge=0, description="at most one trigger per user this often (high intent excepted)"
    )
    trigger_views: int = Field(5, ge=1, description="views since the last trigger that fire one")

    # The feed ranker
    model_dir: Path = Field(
        default_factory=lambda: state_dir() / "models",
        description="trained ranker models and the CURRENT pointer (shared by every ranker)",
    )
    model_poll_s: float = Field(5.0, gt=0, description="how often rankers look for a new model")
    # Faust's own consumer (the ranker's) holds a fetch up to 1.5 s, hard-coded; on a
    # trigger stream it delays clicks (`streams.faust_kafka`). Closed loop at ~930 events/s,
    # 60 s runs alternated: 1500 ms gave click -> feed p50 265 / 432 ms, p99 615 / 2,130;
    # 20 ms gave p50 174 / 244, p99 572 / 698. An idle ranker fetches ~50 times a second.
    ranker_fetch_max_wait_ms: int = Field(
        20, ge=0, le=1500, description="longest the broker holds the ranker's trigger fetch"
    )
    ranker_holdout_share: float = Field(
        0.0, ge=0, le=1, description="users served popularity on purpose (a control group)"
    )

    # Prometheus metrics (`streams.metrics`): each process's /metrics port; 0 turns it off
    worker_metrics_port: int = Field(9101, ge=0, le=65535, description="the worker's /metrics")
    ranker_metrics_port: int = Field(9102, ge=0, le=65535, description="the ranker's /metrics")

    # The HTTP read API (`signals api`)
    api_host: str = Field("127.0.0.1", description="address the API listens on")
    api_port: int = Field(8080, ge=1, le=65535, description="port the API listens on")
    api_workers: int = Field(1, ge=1, le=64, description="API processes (uvicorn workers)")
    drift_threshold: float = Field(
        0.25, gt=0, description="PSI above which retraining is due (streams.logic.drift)"
    )
    drift_interval_s: float = Field(
        60.0, gt=0, description="how often each ranker compares its live sample (drift)"
    )
    api_pipeline_metrics: str = Field(
        "",
        description="comma-separated /metrics URLs of the workers and rankers the live page's "
        "pipeline panel sums (default: this machine's worker and ranker metrics ports)",
    )

    # CQL cold tier
    cql_hosts: str = "127.0.0.1"
    cql_port: int = 9042
    cql_keyspace: str = Field("feedsignals", pattern=r"^[a-z][a-z0-9_]*$")
    # Unset: the driver negotiates the newest version both sides speak (v5 with
    # Cassandra 5.0, v4 with ScyllaDB). Set it only to pin one.
    cql_protocol_version: int | None = Field(
        None, ge=3, le=5, description="native protocol pin; unset negotiates"
    )
    cql_replication_factor: int = Field(1, ge=1)
    cql_datacenter: str | None = Field(
        None, description="set in production: NetworkTopologyStrategy in this DC"
    )
    # Cold-tier rows (history and last-k snapshots) expire after this; 180 days by default,
    # passed with USING TTL on every write so it can change without a migration.
    cold_history_ttl_s: int = Field(15_552_000, ge=1, description="TTL of cold-tier rows")
    # CQL requests one cold store keeps in flight at most (all its calls together): enough
    # to hide round trips, few enough not to swamp a node or the driver's connection.
    cql_max_in_flight: int = Field(128, ge=1, description="concurrent CQL requests per store")

    # CQL security (scylla-driver): PasswordAuthenticator credentials and client TLS
    cql_username: str | None = Field(None, description="CQL role to log in as")
    cql_password: SecretStr | None = Field(None, description="CQL password (secret)")
    cql_password_file: Path | None = Field(
        None, description="file holding the CQL password (instead of the variable)"
    )
    cql_tls: bool = Field(False, description="connect to the CQL nodes over TLS")
    cql_tls_ca_file: Path | None = Field(
        None, description="PEM CA bundle for CQL TLS (unset: the system's trust store)"
    )
    cql_tls_cert_file: Path | None = Field(None, description="PEM client certificate")
    cql_tls_key_file: Path | None = Field(None, description="PEM key of the client certificate")
    cql_tls_check_hostname: bool = Field(
        True, description="each node's certificate must name the address connected to"
    )

    @field_validator("last_k", mode="before")
    @classmethod
    def _merge_last_k(cls, value: Any) -> dict[EventType, int]:
        """A partial override (`{"view": 200}`) keeps the other defaults."""
        merged: dict[EventType, int] = dict(DEFAULT_LAST_K)
        for name, k in dict(value or {}).items():
            event_type = EventType(name)
            if event_type not in PRODUCT_EVENT_TYPES:
                raise ValueError(f"{name} events carry no product and have no last-k")
            if not 1 <= int(k) <= MAX_LAST_K:
                raise ValueError(f"last_k for {name} must be between 1 and {MAX_LAST_K}")
            merged[event_type] = int(k)
        return merged

    @field_validator("feature_weights", mode="before")
    @classmethod
    def _merge_weights(cls, value: Any) -> dict[EventType, float]:
        merged: dict[EventType, float] = dict(DEFAULT_WEIGHTS)
        for name, weight in dict(value or {}).items():
            if float(weight) <= 0:
                merged.pop(EventType(name), None)  # 0: the type adds nothing
            else:
                merged[EventType(name)] = float(weight)
        return merged

    def __repr_args__(self) -> Any:
        """As pydantic's, with a password in a Redis URL masked (SecretStr masks the rest)."""
        from sinks.connectivity import redacted  # noqa: PLC0415

        for name, value in super().__repr_args__():
            yield name, redacted(value) if name == "redis_url" else value

    @field_validator(*OPTIONAL_SECURITY_SETTINGS, mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """`SIGNALS_KAFKA_SSL_CA_FILE=` unsets it (not the path "")."""
        return None if value == "" else value

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        """`<secret>_file` settings: the secret is the file's content (one trailing newline
        dropped), for secrets mounted as files (Kubernetes, systemd credentials)."""
        if not isinstance(data, dict):
            return data
        for secret in SECRET_FILE_SETTINGS:
            path = data.get(f"{secret}_file")
            if path in (None, ""):
                continue
            if data.get(secret) not in (None, ""):
                raise ValueError(
                    f"set SIGNALS_{secret.upper()} or SIGNALS_{secret.upper()}_FILE, not both"
                )
            try:
                text = Path(path).read_text()
            except OSError as exc:
                raise ValueError(
                    f"SIGNALS_{secret.upper()}_FILE: cannot read {path}: {exc.strerror}"
                ) from None
            data = {**data, secret: text[:-1] if text.endswith("\n") else text}
        return data

    @model_validator(mode="after")
    def _security_consistent(self) -> Settings:
        """Refuse half a security configuration with one line saying what is missing."""
        problems = []
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            problems.append(
                f"SIGNALS_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "SIGNALS_KAFKA_SASL_USERNAME and SIGNALS_KAFKA_SASL_PASSWORD (or _FILE)"
            )
        kafka_tls = self.kafka_security_protocol in ("SSL", "SASL_SSL")
        tls_files = ("kafka_ssl_ca_file", "kafka_ssl_cert_file", "kafka_ssl_key_file")
        if not kafka_tls and any(getattr(self, name) for name in tls_files):
            problems.append(
                "SIGNALS_KAFKA_SSL_* files are set but SIGNALS_KAFKA_SECURITY_PROTOCOL is "
                f"{self.kafka_security_protocol}: use SSL or SASL_SSL"
            )
        redis_tls = self.redis_url.startswith("rediss://")
        tls_files = ("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file")
        if not redis_tls and any(getattr(self, name) for name in tls_files):
            problems.append(
                "SIGNALS_REDIS_TLS_* files are set but SIGNALS_REDIS_URL is not rediss://"
            )
        tls_files = ("cql_tls_ca_file", "cql_tls_cert_file", "cql_tls_key_file")
        if not self.cql_tls and any(getattr(self, name) for name in tls_files):
            problems.append("SIGNALS_CQL_TLS_* files are set but SIGNALS_CQL_TLS is off")
        if bool(self.cql_username) != bool(self.cql_password):
            problems.append("SIGNALS_CQL_USERNAME and SIGNALS_CQL_PASSWORD go together")
        if self.redis_username and not self.redis_password:
            problems.append("SIGNALS_REDIS_USERNAME needs SIGNALS_REDIS_PASSWORD (or _FILE)")
        for server in ("kafka_ssl", "redis_tls", "cql_tls"):
            cert, key = getattr(self, f"{server}_cert_file"), getattr(self, f"{server}_key_file")
            if bool(cert) != bool(key):
                name = f"SIGNALS_{server.upper()}"
                problems.append(f"{name}_CERT_FILE and {name}_KEY_FILE go together")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _triggers_need_features(self) -> Settings:
        if self.triggers_enabled and not self.features_enabled:
            raise ValueError(
                "SIGNALS_TRIGGERS_ENABLED needs SIGNALS_FEATURES_ENABLED: triggers are decided "
                "from what the feature write reports (session starts, top categories)"
            )
        return self

    @property
    def pipeline_metrics_urls(self) -> list[str]:
        """What the live page's pipeline panel scrapes (`api_pipeline_metrics`)."""
        if self.api_pipeline_metrics.strip():
            return [u.strip() for u in self.api_pipeline_metrics.split(",") if u.strip()]
        ports = [p for p in (self.worker_metrics_port, self.ranker_metrics_port) if p]
        return [f"http://127.0.0.1:{port}/metrics" for port in ports]

    @property
    def ranker_app_id(self) -> str:
        """The ranker's Faust app and consumer group (beside the worker's `app_id`)."""
        return f"{self.app_id}-ranker"

    def cold_index_shape(self) -> ColdIndexShape:
        return ColdIndexShape.sized(self.cold_index_users, self.cold_index_false_positive)

    def admission_limits(self) -> Limits:
        """What the worker admits (bigger or mistimed events are dead-lettered)."""
        return Limits(
            max_payload_bytes=self.max_payload_bytes,
            max_future_skew_ms=self.max_future_skew_s * 1000,
            min_event_time_ms=self.min_event_time_ms,
        )

    def feature_config(self) -> FeatureConfig:
        """The feature definitions' settings."""
        return FeatureConfig(
            allowed_lateness_ms=int(self.allowed_lateness_s * 1000),
            session_gap_ms=int(self.inactivity_gap_s * 1000),
            affinity_half_life_ms=int(self.affinity_half_life_h * 3_600_000),
            trending_half_life_ms=int(self.trending_half_life_h * 3_600_000),
            weights=dict(self.feature_weights),
            rate_prior_views=self.rate_prior_views,
        )

    @model_validator(mode="after")
    def _no_hot_key_expiry(self) -> Settings:
        """Hot keys do not expire any more: refuse the old setting rather than ignore it."""
        if self.hot_ttl_s is not None:
            raise ValueError(
                "SIGNALS_HOT_TTL_S is not a setting any more: a user's hot keys never expire "
                "while the user is in an active set (an expiry lost the types a long session "
                "had not written lately); they leave Redis through the session flush only. "
                "Unset it; SIGNALS_INACTIVITY_GAP_S decides when a session ends"
            )
        return self

    @property
    def kafka_servers(self) -> list[str]:
        return [s.strip() for s in self.kafka_bootstrap.split(",") if s.strip()]

    @property
    def cql_contact_points(self) -> list[str]:
        return [h.strip() for h in self.cql_hosts.split(",") if h.strip()]

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Settings from the environment, falling back to the local stack's env file."""
        env_file = stack_env_file()
        # `_env_file` is pydantic-settings' documented per-instance override; mypy cannot see it.
        return cls(_env_file=env_file if env_file.exists() else None, **overrides)  # type: ignore[call-arg]
