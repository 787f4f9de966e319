"""Idempotent CQL migrations for the cold tier (ScyllaDB and Cassandra 5 alike).

Migrations are the numbered `.cql` files in `infra/cql/`, applied in order. Each applied
version is recorded in `schema_migrations`; every statement is `IF NOT EXISTS`, so a run
that died half-way is simply run again.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cassandra.cluster import Cluster, Session

    from streams.settings import Settings

MIGRATIONS_DIR = Path(__file__).parent / "cql"


@dataclass(frozen=True)
class Migration:
    version: str
    path: Path

    @property
    def statements(self) -> list[str]:
        text = "\n".join(
            line for line in self.path.read_text().splitlines() if not line.strip().startswith("--")
        )
        return [stmt.strip() for stmt in text.split(";") if stmt.strip()]

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]


def migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.cql")):
        match = re.match(r"^(\d{4})_", path.name)
        if match:
            found.append(Migration(version=path.stem, path=path))
    return found


def keyspace_cql(settings: Settings) -> str:
    if settings.cql_datacenter:
        replication = (
            f"{{'class': 'NetworkTopologyStrategy', "
            f"'{settings.cql_datacenter}': {settings.cql_replication_factor}}}"
        )
    else:
        replication = (
            f"{{'class': 'SimpleStrategy', "
            f"'replication_factor': {settings.cql_replication_factor}}}"
        )
    return f"CREATE KEYSPACE IF NOT EXISTS {settings.cql_keyspace} WITH replication = {replication}"


def open_session(settings: Settings) -> tuple[Cluster, Session]:
    """A session on the configured CQL server with its security (login and TLS), on no
    keyspace; shut the cluster down when done."""
    from sinks.cql import connect  # noqa: PLC0415

    return connect(settings)


def migrate(settings: Settings) -> list[str]:
    """Connect, bring the keyspace up to date, disconnect; returns the versions applied."""
    cluster, session = open_session(settings)
    try:
        return apply_migrations(session, settings)
    finally:
        cluster.shutdown()


def apply_migrations(session: Session, settings: Settings) -> list[str]:
    """Bring the keyspace up to date; returns the versions applied by this call."""
    session.execute(keyspace_cql(settings))
    session.set_keyspace(settings.cql_keyspace)
    session.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version text PRIMARY KEY, checksum text, applied_at timestamp)"
    )
    applied = {row.version for row in session.execute("SELECT version FROM schema_migrations")}
    newly_applied = []
    for migration in migrations():
        if migration.version in applied:
            continue
        for statement in migration.statements:
            session.execute(statement)
        session.execute(
            "INSERT INTO schema_migrations (version, checksum, applied_at) VALUES (%s, %s, %s)",
            (migration.version, migration.checksum, datetime.now(UTC)),
        )
        newly_applied.append(migration.version)
    return newly_applied
