"""Fixtures of the secured-stack tests: the pipeline against TLS-only, authenticated
servers (`signals-stack up --secure`: Kafka SASL_SSL with SCRAM, Redis and its cluster
with an ACL user over TLS, Cassandra with PasswordAuthenticator and client encryption).

The session fixture starts the secured stack with the project's own script (beside the
plain one, on its own ports and folder) and stops it afterwards if it started it
(`KEEP_STACK=1` keeps it). Every test gets its own topics, group, key prefix and keyspace
on it, as the plain stack tests do.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.settings import STATE_DIR_ENV, Settings, state_dir


@pytest.fixture(scope="session")
def secure_dir() -> Iterator[Path]:
    """The secured stack is up; its folder (SIGNALS_STATE_DIR for its clients)."""
    from infra.services import StackError  # noqa: PLC0415
    from infra.stack import down, load_config, services, up  # noqa: PLC0415

    config = load_config(secure=True)
    was_up = all(service.is_running() for service in services(config))
    try:
        up(config, say=lambda _line: None)
    except StackError as exc:
        pytest.fail(f"the secured stack could not start: {exc}", pytrace=False)
    yield config.state_dir
    if not was_up and os.environ.get("KEEP_STACK", "0") != "1":
        down(config, say=lambda _line: None)


@pytest.fixture
def secure_env(secure_dir: Path) -> dict[str, str]:
    """SIGNALS_* variables for a process of this test on the secured stack."""
    tag = uuid.uuid4().hex[:10]
    return {
        STATE_DIR_ENV: str(secure_dir),
        "SIGNALS_EVENTS_TOPIC": f"sec.events.{tag}",
        "SIGNALS_DEAD_LETTER_TOPIC": f"sec.dlq.{tag}",
        "SIGNALS_TRIGGER_TOPIC": f"sec.triggers.{tag}",
        "SIGNALS_EVENTS_PARTITIONS": "2",
        "SIGNALS_APP_ID": f"sec-{tag}",
        "SIGNALS_REDIS_KEY_PREFIX": f"s{tag}",
        "SIGNALS_CQL_KEYSPACE": f"sec_{tag}",
        "SIGNALS_WORKER_METRICS_PORT": "0",
        "SIGNALS_RANKER_METRICS_PORT": "0",
    }


@pytest.fixture
def secure_settings(
    secure_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """The test's settings on the secured stack, its topics and keyspace provisioned
    (through the same secured clients); all of it removed afterwards."""
    from infra.migrate import migrate  # noqa: PLC0415
    from infra.topics import apply_topics, delete_topics  # noqa: PLC0415
    from sinks.cql import connect  # noqa: PLC0415
    from tests.conftest import forget_keys  # noqa: PLC0415

    for key, value in secure_env.items():
        monkeypatch.setenv(key, value)
    settings = Settings.load()
    assert state_dir() == Path(secure_env[STATE_DIR_ENV])
    assert settings.kafka_security_protocol == "SASL_SSL", "not the secured stack's settings"
    apply_topics(settings)
    migrate(settings)
    yield settings
    delete_topics(settings)
    forget_keys(settings)
    cluster, session = connect(settings)
    try:
        session.execute(f"DROP KEYSPACE IF EXISTS {settings.cql_keyspace}")
    finally:
        cluster.shutdown()
