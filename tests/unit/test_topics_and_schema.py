import json
from pathlib import Path

from infra.cassandra_server import cassandra_config
from infra.kafka_server import new_cluster_id, server_properties
from infra.migrate import keyspace_cql, migrations
from infra.services import StackConfig
from infra.topics import declared_topics, faust_leader_topic
from streams.settings import Settings

#: Cassandra 5.0 features ScyllaDB (production) does not have: the schema must not use them,
#: even though the local Cassandra would accept them.
CASSANDRA_ONLY = (
    "StorageAttachedIndex",
    "SASIIndex",
    "UnifiedCompactionStrategy",
    "VECTOR<",
    "MASKED WITH",
    "LANGUAGE java",
    "CREATE TRIGGER",
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
            assert not any(word.upper() in statement.upper() for word in CASSANDRA_ONLY)


def test_keyspace_replication_follows_settings() -> None:
    assert "SimpleStrategy" in keyspace_cql(Settings(cql_replication_factor=1))
    prod = keyspace_cql(Settings(cql_datacenter="dc1", cql_replication_factor=3))
    assert "'NetworkTopologyStrategy', 'dc1': 3" in prod


def test_cassandra_binds_loopback_only_and_keeps_state_in_the_state_folder(tmp_path: Path) -> None:
    config = StackConfig(state_dir=tmp_path, cql_port=29042, cql_storage_port=27000)
    conf = cassandra_config(config)
    assert conf["listen_address"] == conf["rpc_address"] == "127.0.0.1"
    assert conf["native_transport_port"] == 29042
    assert conf["storage_port"] == 27000
    assert conf["seed_provider"][0]["parameters"] == [{"seeds": "127.0.0.1:27000"}]  # type: ignore[index]
    for key in ("commitlog_directory", "saved_caches_directory", "hints_directory"):
        assert str(conf[key]).startswith(str(tmp_path))
    assert all(str(d).startswith(str(tmp_path)) for d in conf["data_file_directories"])  # type: ignore[union-attr]
    json.dumps(conf)  # written as JSON, which Cassandra's YAML parser reads


def test_kafka_is_one_loopback_kraft_node_that_never_creates_topics_by_itself(
    tmp_path: Path,
) -> None:
    config = StackConfig(state_dir=tmp_path, kafka_port=29092, kafka_controller_port=29093)
    props = dict(
        line.split("=", 1) for line in server_properties(config, tmp_path / "data").splitlines()
    )
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29092"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:29093"
    assert props["auto.create.topics.enable"] == "false"
    assert props["log.dirs"] == str(tmp_path / "data")


def test_kraft_cluster_ids_are_kafka_style_uuids() -> None:
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cluster_id in ids:
        assert len(cluster_id) == 22 and not cluster_id.startswith("-")
        assert set(cluster_id) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        )
