"""Connecting to the CQL cold tier (ScyllaDB in production, Cassandra 2.1 locally).

Both `scylla-driver` (production: shard-aware) and DataStax `cassandra-driver` (the only
one that can talk to the local Cassandra 2.1) install the same `cassandra` module with
the same API, so this is the only place that knows which one is present.
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cassandra.cluster import Cluster, Session

    from streams.settings import Settings


class CqlDriverMissing(RuntimeError):
    pass


def driver_name() -> str:
    """Which distribution provides `cassandra`: 'scylla-driver' or 'cassandra-driver'."""
    for dist in ("scylla-driver", "cassandra-driver"):
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        return dist
    raise CqlDriverMissing(
        "no CQL driver installed: `pip install .[scylla]` for ScyllaDB (production) "
        "or `.[local]` for the local Cassandra 2.1 stack"
    )


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
    driver_name()
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
    cluster = connect_cluster(
        settings.cql_contact_points,
        settings.cql_port,
        protocol_version=settings.cql_protocol_version,
        row_factory=row_factory,
    )
    return cluster, cluster.connect(keyspace)
