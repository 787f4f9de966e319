"""`signals forget`: erase users on request (the right to erasure of the DPDP Act and the
GDPR), and the same call for Python: `forget_users(settings, ["u1", ...])`.

The request is a forget record on the events topic (`schemas.erasure`); the worker that
owns each user's partition erases them from every store when it reaches it, and records
the erasure in the cold tier's `erasures` table, which this job watches to report when
each user is done. So the time an erasure takes is the worker's lag on that partition:
well under a second on a worker that keeps up; with no worker running, the requests wait
on the topic and are carried out when one starts (the job says so).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message, Producer

from schemas.erasure import ErasureFilter, Forget, encode_forget
from sinks.connectivity import kafka_config
from streams.settings import Settings


class ForgetError(RuntimeError):
    """A request could not be delivered (nothing to wait for)."""


@dataclass
class ForgetReport:
    """Per user: when the request was made and, once a worker did it, how long it took."""

    requested_ms: int
    erased_after_s: dict[str, float] = field(default_factory=dict)
    waiting: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return not self.waiting


def forget_users(
    settings: Settings,
    user_ids: Sequence[str],
    *,
    wait_s: float = 60.0,
    poll_s: float = 0.2,
    on_erased: Callable[[str, float], None] | None = None,
) -> ForgetReport:
    """Request the erasure of `user_ids` now and wait up to `wait_s` for the workers to
    carry it out (0: do not wait). Raises ForgetError if a request is not delivered."""
    users = list(dict.fromkeys(u for u in user_ids if u))
    if not users:
        raise ForgetError("no user ids given")
    request_id = uuid.uuid4().hex[:12]
    errors: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err.str())

    # Not the events producer's idempotent client: its first send waits ~0.5 s for a
    # producer id, and a repeated request is harmless (the erasure is idempotent). Keyed
    # and partitioned (librdkafka's default partitioner) like the library's events.
    producer = Producer({**kafka_config(settings), "acks": "all", "linger.ms": 0})
    requested_ms = int(time.time() * 1000)  # T
    for user_id in users:
        key, value, headers = encode_forget(Forget(user_id, requested_ms, request_id))
        producer.produce(
            settings.events_topic, key=key, value=value, headers=headers, on_delivery=delivered
        )
    if producer.flush(30):
        errors.append("not acknowledged by the brokers within 30 s")
    report = ForgetReport(requested_ms, waiting=list(users))
    if wait_s <= 0:
        return report
    from sinks.cql import connect  # noqa: PLC0415

    cluster, session = connect(settings, settings.cql_keyspace)
    try:
        select = session.prepare("SELECT erased_ms, done_ms FROM erasures WHERE user_id = ?")
        deadline = time.monotonic() + wait_s
        while report.waiting and time.monotonic() < deadline:
            for user_id in list(report.waiting):
                row = session.execute(select, (user_id,)).one()
                if row is not None and row.erased_ms >= requested_ms:
                    took = max(0.0, (row.done_ms - requested_ms) / 1000)
                    report.erased_after_s[user_id] = took
                    report.waiting.remove(user_id)
                    if on_erased is not None:
                        on_erased(user_id, took)
            if report.waiting:
                time.sleep(poll_s)
    finally:
        cluster.shutdown()
    return report


def load_erasures(settings: Settings) -> ErasureFilter:
    """Everyone erased so far (the cold tier's `erasures` table), for the offline jobs:
    replay and backfill leave out their events up to the erasure. Raises ForgetError
    when the table cannot be read: a job that cannot honour erasures does not run."""
    from sinks.cql import connect  # noqa: PLC0415

    try:
        cluster, session = connect(settings, settings.cql_keyspace)
    except Exception as exc:
        raise ForgetError(
            f"cannot read the erasures (cold tier {settings.cql_hosts}:{settings.cql_port}, "
            f"keyspace {settings.cql_keyspace}): {type(exc).__name__}: {exc}"
        ) from None
    try:
        from cassandra import ConsistencyLevel  # noqa: PLC0415
        from cassandra.query import SimpleStatement  # noqa: PLC0415

        # LOCAL_QUORUM, as the worker writes it: a recent erasure is seen.
        query = SimpleStatement(
            "SELECT user_id, erased_ms FROM erasures",
            consistency_level=ConsistencyLevel.LOCAL_QUORUM,
        )
        rows = session.execute(query)
        return ErasureFilter({row.user_id: row.erased_ms for row in rows})
    except Exception as exc:
        raise ForgetError(
            f"cannot read the erasures table of keyspace {settings.cql_keyspace} "
            f"(migrated? `signals-stack migrate`): {type(exc).__name__}: {exc}"
        ) from None
    finally:
        cluster.shutdown()
