import json
from pathlib import Path

from infra.migrate import keyspace_cql, migrations
from infra.services import StackConfig, cassandra_config
from infra.topics import declared_topics, faust_leader_topic
from streams.settings import Settings

FORBIDDEN_ON_CASSANDRA_21 = (
    "GROUP BY",
    "PER PARTITION LIMIT",
    "MATERIALIZED VIEW",
    "JSON",
    "duration",
)


def test_spec_covers_events_and_faust_internal_topics() -> None:
    settings = Settings(app_id="myapp", events_topic="ev", events_partitions=12)
    specs = {spec.name: spec for spec in declared_topics(settings)}
    assert specs["ev"].partitions == 12
    assert faust_leader_topic(settings) == "myapp-__assignor-__leader"
    assert specs["myapp-__assignor-__leader"].partitions == 1
    assert all(
        spec.kafka_config()["cleanup.policy"] in ("delete", "compact") for spec in specs.values()
    )


def test_migrations_are_ordered_idempotent_and_portable() -> None:
    found = migrations()
    assert [m.version for m in found] == sorted(m.version for m in found)
    for migration in found:
        for statement in migration.statements:
            assert "IF NOT EXISTS" in statement.upper()
            assert not any(word.upper() in statement.upper() for word in FORBIDDEN_ON_CASSANDRA_21)


def test_keyspace_replication_follows_settings() -> None:
    assert "SimpleStrategy" in keyspace_cql(Settings(cql_replication_factor=1))
    prod = keyspace_cql(Settings(cql_datacenter="dc1", cql_replication_factor=3))
    assert "'NetworkTopologyStrategy', 'dc1': 3" in prod


def test_cassandra_binds_loopback_only_and_keeps_state_in_the_state_folder(tmp_path: Path) -> None:
    config = StackConfig(state_dir=tmp_path, cql_port=29042, cql_storage_port=27000)
    conf = cassandra_config({"listen_address": "localhost", "start_rpc": True}, config)
    assert conf["listen_address"] == conf["rpc_address"] == "127.0.0.1"
    assert conf["start_rpc"] is False
    assert conf["native_transport_port"] == 29042
    assert conf["storage_port"] == 27000
    for key in ("commitlog_directory", "saved_caches_directory"):
        assert str(conf[key]).startswith(str(tmp_path))
    assert all(str(d).startswith(str(tmp_path)) for d in conf["data_file_directories"])  # type: ignore[union-attr]
    json.dumps(conf)  # written as JSON, which Cassandra's YAML parser reads
