"""The topic spec and the CQL migrations against the real local broker and CQL server."""

from __future__ import annotations

from importlib import metadata

import pytest
from confluent_kafka.admin import AdminClient

from infra.migrate import apply_migrations, migrations
from infra.topics import apply_topics, declared_topics
from sinks.cql import connect
from streams.settings import Settings


def test_topic_spec_is_applied_once_and_visible_to_a_kafka_client(
    isolated_settings: Settings,
) -> None:
    first = apply_topics(isolated_settings)
    second = apply_topics(isolated_settings)
    assert {r.outcome for r in first} == {"created"}
    assert {r.outcome for r in second} == {"exists"}
    metadata = AdminClient({"bootstrap.servers": isolated_settings.kafka_bootstrap}).list_topics(
        timeout=10
    )
    for spec in declared_topics(isolated_settings):
        assert len(metadata.topics[spec.name].partitions) == spec.partitions


def test_migrations_are_idempotent_on_the_cql_server(isolated_settings: Settings) -> None:
    cluster, session = connect(isolated_settings)
    try:
        assert apply_migrations(session, isolated_settings) == [m.version for m in migrations()]
        assert apply_migrations(session, isolated_settings) == []
        session.execute(
            "INSERT INTO history_by_user (user_id, event_type, day, newest_ms, block_id, items) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            ("u1", "view", 20000, 1_728_000_000_000, 7, b'[["p1",1728000000000]]'),
        )
        rows = list(
            session.execute(
                "SELECT items FROM history_by_user "
                "WHERE user_id=%s AND event_type=%s AND day=%s AND newest_ms >= %s",
                ("u1", "view", 20000, 1_728_000_000_000),
            )
        )
        assert [r.items for r in rows] == [b'[["p1",1728000000000]]']
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {isolated_settings.cql_keyspace}")
        cluster.shutdown()


def test_scylla_driver_negotiates_protocol_v5_with_cassandra_5(isolated_settings: Settings) -> None:
    """One CQL driver everywhere: scylla-driver, at the newest protocol the server speaks."""
    assert metadata.version("scylla-driver")
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("cassandra-driver")
    cluster, session = connect(isolated_settings)
    try:
        release = session.execute("SELECT release_version FROM system.local").one()
        assert release.release_version.startswith("5.0.")
        assert cluster.protocol_version == 5
    finally:
        cluster.shutdown()
