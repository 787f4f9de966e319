"""Connecting to the CQL cold tier: scylla-driver, against ScyllaDB in production and
Apache Cassandra 5.0 locally.

scylla-driver is the shard-aware fork of the DataStax driver (the importable module is
`cassandra`). With no protocol pinned it negotiates the newest native protocol both
sides speak: v5 with Cassandra 5.0, v4 with ScyllaDB.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cassandra.cluster import Cluster, Session

    from streams.settings import Settings


def connect_cluster(
    hosts: list[str],
    port: int,
    *,
    protocol_version: int | None = None,
    row_factory: Any = None,
    **options: Any,
) -> Cluster:
    """A Cluster object (not yet connected) with an explicit, local-DC-aware balancing policy.

    `row_factory` (for example `cassandra.query.tuple_factory`) replaces the driver's
    default named tuples for callers that read rows by position.
    """
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile  # noqa: PLC0415
    from cassandra.policies import (  # noqa: PLC0415
        DCAwareRoundRobinPolicy,
        ExponentialReconnectionPolicy,
        TokenAwarePolicy,
    )

    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
        request_timeout=10,
        **({} if row_factory is None else {"row_factory": row_factory}),
    )
    kwargs: dict[str, Any] = {
        "contact_points": hosts,
        "port": port,
        "execution_profiles": {EXEC_PROFILE_DEFAULT: profile},
        "connect_timeout": 5,
        # The driver's default waits up to 10 minutes between reconnection attempts; a
        # worker blocked on the cold tier should notice a returning node within seconds.
        "reconnection_policy": ExponentialReconnectionPolicy(base_delay=0.5, max_delay=10.0),
        **options,
    }
    if protocol_version is not None:
        kwargs["protocol_version"] = protocol_version
    return Cluster(**kwargs)


def connect(
    settings: Settings, keyspace: str | None = None, *, row_factory: Any = None
) -> tuple[Cluster, Session]:
    from sinks.connectivity import cql_options  # noqa: PLC0415

    cluster = connect_cluster(
        settings.cql_contact_points,
        settings.cql_port,
        protocol_version=settings.cql_protocol_version,
        row_factory=row_factory,
        **cql_options(settings),  # PasswordAuthenticator login, TLS
    )
    try:
        return cluster, cluster.connect(keyspace)
    except BaseException:
        cluster.shutdown()  # a refused login or handshake leaves no driver threads behind
        raise
