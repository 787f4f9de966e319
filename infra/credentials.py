"""The secured stack's passwords: random, made once, kept in files only.

Each lives in `<state dir>/secrets/<name>.password` (mode 0600, in a 0700 folder, no
trailing newline); the env file names these files (`SIGNALS_*_PASSWORD_FILE`), never a
password. Nothing here prints, logs or puts a password on a command line: Redis reads an
ACL file holding the password's SHA-256 only, Kafka's format tool reads its SCRAM users
from a java argument file that is deleted straight after, Cassandra gets them over CQL.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

#: The application's user on every server (Kafka SCRAM, Redis ACL, CQL role).
APP_USER = "feedsignals"
#: The broker's own SCRAM user, for its inter-broker (SASL_SSL) connections.
KAFKA_BROKER_USER = "feedsignals-broker"
#: Cassandra's built-in superuser, whose well-known default password `up` replaces.
CQL_SUPERUSER = "cassandra"
CQL_DEFAULT_PASSWORD = "cassandra"  # noqa: S105  (public knowledge: `up` replaces it)

KAFKA_APP = "kafka-feedsignals"
KAFKA_BROKER = "kafka-broker"
REDIS_APP = "redis-feedsignals"
CQL_APP = "cql-feedsignals"
CQL_ADMIN = "cql-cassandra"
PASSWORDS = (KAFKA_APP, KAFKA_BROKER, REDIS_APP, CQL_APP, CQL_ADMIN)


@dataclass(frozen=True)
class StackSecrets:
    """The passwords folder (paths and reads; `ensure` makes the missing passwords)."""

    dir: Path

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.password"

    def read(self, name: str) -> str:
        return self.path(name).read_text().rstrip("\n")

    @property
    def redis_acl_file(self) -> Path:
        return self.dir / "users.acl"

    def ensure(self) -> list[str]:
        """Make every missing password; returns the names made now (never the values)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        made = []
        for name in PASSWORDS:
            path = self.path(name)
            if path.exists():
                continue
            write_private(path, secrets.token_urlsafe(32))
            made.append(name)
        return made

    def write_redis_acl(self) -> None:
        """The ACL file every secured redis-server loads (`--aclfile`)."""
        write_private(self.redis_acl_file, redis_acl(self.read(REDIS_APP)))


def redis_acl(password: str) -> str:
    """Redis users: `default` (what an unauthenticated connection is) off, the app's user
    with every right, known by the SHA-256 of its password only (`#<hex>`)."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    return f"user default off\nuser {APP_USER} on #{digest} ~* &* +@all\n"


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read, replacing any earlier one in one rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


def redact(text: str, *secret_values: str) -> str:
    """`text` with every one of `secret_values` replaced by `***` (for error lines)."""
    for value in secret_values:
        if value:
            text = text.replace(value, "***")
    return text
