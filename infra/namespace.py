"""A namespace on shared servers: its own topics, consumer group, Redis key prefix and CQL
keyspace, so a run inside it (a what-if replay, a benchmark) never touches live state.

`whatif_settings` derives one from the live settings and a name; `provision` creates its
topics and keyspace; `drop` deletes everything it holds.
"""

from __future__ import annotations

import re
import time

from streams.settings import Settings

_NAME = re.compile(r"[a-z][a-z0-9_]{0,30}")


def whatif_settings(settings: Settings, name: str) -> Settings:
    """The live settings moved into the namespace `name` (lowercase letters, digits, `_`):
    topics `<events topic>.whatif.<name>` (and the same for the dead letters and the
    triggers), consumer group `<app id>-whatif-<name>`, Redis prefix
    `<prefix>-whatif-<name>`, keyspace `<keyspace>_whatif_<name>`."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a namespace name (a lowercase letter, then up to 30 lowercase "
            "letters, digits or _)"
        )
    return settings.model_copy(
        update={
            "events_topic": f"{settings.events_topic}.whatif.{name}",
            "dead_letter_topic": f"{settings.dead_letter_topic}.whatif.{name}",
            "trigger_topic": f"{settings.trigger_topic}.whatif.{name}",
            "app_id": f"{settings.app_id}-whatif-{name}",
            "redis_key_prefix": f"{settings.redis_key_prefix}-whatif-{name}",
            "cql_keyspace": f"{settings.cql_keyspace}_whatif_{name}",
        }
    )


def namespace_env(settings: Settings) -> dict[str, str]:
    """The SIGNALS_* variables that put a process (a worker, the API) in the namespace."""
    return {
        "SIGNALS_EVENTS_TOPIC": settings.events_topic,
        "SIGNALS_DEAD_LETTER_TOPIC": settings.dead_letter_topic,
        "SIGNALS_TRIGGER_TOPIC": settings.trigger_topic,
        "SIGNALS_APP_ID": settings.app_id,
        "SIGNALS_REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "SIGNALS_CQL_KEYSPACE": settings.cql_keyspace,
    }


def provision(settings: Settings) -> None:
    """Create the namespace's topics and its migrated keyspace (both idempotent)."""
    from infra.migrate import migrate  # noqa: PLC0415
    from infra.topics import apply_topics  # noqa: PLC0415

    apply_topics(settings)
    migrate(settings)


def drop(settings: Settings) -> None:
    """Delete the namespace's Redis keys, keyspace and topics."""
    from infra.topics import delete_topics  # noqa: PLC0415

    delete_redis_keys(settings)
    drop_keyspace(settings)
    delete_topics(settings)


def drop_keyspace(settings: Settings, attempts: int = 3) -> None:
    """DROP KEYSPACE, retried: a CQL server busy with other schema changes can refuse
    connections for a few seconds."""
    from infra.migrate import open_session  # noqa: PLC0415

    for attempt in range(1, attempts + 1):
        try:
            cluster, session = open_session(settings)
            try:
                session.execute(f"DROP KEYSPACE IF EXISTS {settings.cql_keyspace}", timeout=60)
            finally:
                cluster.shutdown()
            return
        except Exception as exc:  # the driver raises several unrelated types
            if attempt == attempts:
                raise
            print(f"dropping {settings.cql_keyspace} failed ({exc!r}); retrying")
            time.sleep(2 * attempt)


def delete_redis_keys(settings: Settings, pattern: str | None = None) -> int:
    """Delete every key of the namespace, `<prefix>:*` unless `pattern` says otherwise (on
    every primary of a cluster); returns how many."""
    import redis  # noqa: PLC0415

    from sinks.connectivity import redis_options  # noqa: PLC0415

    options = redis_options(settings)
    client: redis.Redis | redis.RedisCluster = (
        redis.RedisCluster.from_url(settings.redis_url, **options)
        if settings.redis_cluster
        else redis.Redis.from_url(settings.redis_url, **options)
    )
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern or f"{settings.redis_key_prefix}:*", count=5000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += _unlink(client, batch)
        deleted += _unlink(client, batch)
    finally:
        client.close()
    return deleted


def _unlink(client: object, keys: list[bytes]) -> int:
    """UNLINK one key per command (a cluster's keys are on many slots), in one pipeline."""
    if not keys:
        return 0
    pipe = client.pipeline(transaction=False)  # type: ignore[attr-defined]
    for key in keys:
        pipe.unlink(key)
    pipe.execute()
    count = len(keys)
    keys.clear()
    return count
