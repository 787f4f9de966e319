"""All configuration, read from environment variables (prefix `SIGNALS_`).

`infra` writes the local stack's addresses to `<state dir>/stack.env`; settings read that
file too, and real environment variables win over it. Reading settings never connects.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.events import PRODUCT_EVENT_TYPES, EventType

#: Last-k per type, in the spirit of the seeds: many views, fewer high-intent actions.
DEFAULT_LAST_K: dict[EventType, int] = {
    EventType.VIEW: 100,
    EventType.CLICK: 50,
    EventType.ADD_TO_CART: 50,
    EventType.REMOVE_FROM_CART: 50,
    EventType.WISHLIST: 50,
    EventType.ORDER: 50,
}

STATE_DIR_ENV = "SIGNALS_STATE_DIR"


def state_dir() -> Path:
    """Where the local stack keeps everything; `.state` under the working directory by default."""
    return Path(os.environ.get(STATE_DIR_ENV, ".state")).resolve()


def stack_env_file() -> Path:
    return state_dir() / "stack.env"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIGNALS_", frozen=True, extra="ignore")

    # Kafka
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="comma-separated host:port list")
    kafka_replication_factor: int = Field(1, ge=1, description="for topics created on real Kafka")
    kafka_mock_control: str | None = Field(
        None, description="control socket of the local mock broker; unset on real Kafka"
    )
    events_topic: str = "signals.events"
    events_partitions: int = Field(8, ge=1)
    dead_letter_topic: str = Field("signals.events.dlq", description="rejected events + reason")
    max_payload_bytes: int = Field(16384, ge=64, description="larger messages are dead-lettered")
    max_future_skew_s: int = Field(300, ge=0, description="how far ahead of now event time may be")
    min_event_time_ms: int = Field(
        1_500_000_000_000, description="events before this (2017-07-14) are dead-lettered"
    )

    # Faust
    app_id: str = Field("feedsignals", description="Faust app id = consumer group id")
    batch_max: int = Field(500, ge=1, description="events applied per Redis round trip at most")
    batch_within_s: float = Field(0.02, gt=0, description="longest wait to fill a batch")
    stream_buffer_maxsize: int = Field(
        65536, ge=1, description="events Faust buffers per partition before pausing the fetch"
    )
    max_poll_records: int = Field(10000, ge=1, description="records per consumer poll at most")
    faust_datadir: Path = Field(
        default_factory=lambda: state_dir() / "faust", description="Faust's local data folder"
    )

    # Redis hot tier
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_key_prefix: str = Field("ix", pattern=r"^[A-Za-z0-9_.-]+$")
    last_k: dict[EventType, int] = Field(default_factory=lambda: dict(DEFAULT_LAST_K))
    hot_ttl_s: int = Field(7 * 24 * 3600, ge=60, description="safety net, not the eviction path")
    inactivity_gap_s: int = Field(1800, ge=1, description="quiet time that ends a session")

    # CQL cold tier
    cql_hosts: str = "127.0.0.1"
    cql_port: int = 9042
    cql_keyspace: str = Field("feedsignals", pattern=r"^[a-z][a-z0-9_]*$")
    cql_protocol_version: int | None = Field(None, description="pin for old servers (2.1 -> 3)")
    cql_replication_factor: int = Field(1, ge=1)
    cql_datacenter: str | None = Field(
        None, description="set in production: NetworkTopologyStrategy in this DC"
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
            if int(k) < 1:
                raise ValueError(f"last_k for {name} must be >= 1")
            merged[event_type] = int(k)
        return merged

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
