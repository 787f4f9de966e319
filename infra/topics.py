"""The topic specification: every topic the pipeline uses, including Faust's internal ones.

Applied to Kafka with the admin API (CreateTopics), locally and in production alike; the
brokers never create topics on their own (`auto.create.topics.enable=false`). Faust runs
with `topic_allow_declare=False`, so this is the only place topics come from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from sinks.connectivity import kafka_config
from streams.settings import Settings

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    cleanup_policy: Literal["delete", "compact"]
    retention_ms: int
    purpose: str
    #: How old the open segment may get before Kafka rolls it; retention deletes whole
    #: closed segments only. None keeps the broker's default (7 days).
    segment_ms: int | None = None

    def kafka_config(self) -> dict[str, str]:
        config = {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}
        if self.segment_ms is not None:
            config["segment.ms"] = str(self.segment_ms)
        return config


def faust_leader_topic(settings: Settings, app_id: str | None = None) -> str:
    """Faust's assignor elects a leader through this single-partition topic (one per
    Faust app: the worker's, and the ranker's `<app id>-ranker`)."""
    return f"{app_id or settings.app_id}-__assignor-__leader"


def declared_topics(settings: Settings) -> list[TopicSpec]:
    return [
        TopicSpec(
            name=settings.events_topic,
            partitions=settings.events_partitions,
            cleanup_policy="delete",
            retention_ms=7 * DAY_MS,
            purpose="shopper events, keyed by user id",
        ),
        TopicSpec(
            name=settings.dead_letter_topic,
            partitions=1,
            cleanup_policy="delete",
            retention_ms=30 * DAY_MS,
            purpose="events the worker rejected: original bytes, reason in headers",
        ),
        TopicSpec(
            name=settings.trigger_topic,
            partitions=settings.events_partitions,
            cleanup_policy="delete",
            retention_ms=DAY_MS,
            purpose="rank-refresh triggers (Avro, schemas/avro/trigger-v1.avsc), keyed by user id",
        ),
        TopicSpec(
            name=faust_leader_topic(settings),
            partitions=1,
            cleanup_policy="delete",
            retention_ms=DAY_MS,
            purpose="Faust internal: assignor leader election",
        ),
        TopicSpec(
            name=faust_leader_topic(settings, settings.ranker_app_id),
            partitions=1,
            cleanup_policy="delete",
            retention_ms=DAY_MS,
            purpose="Faust internal: the ranker's assignor leader election",
        ),
    ]


@dataclass(frozen=True)
class TopicResult:
    spec: TopicSpec
    outcome: Literal["created", "exists", "mismatch"]
    detail: str = ""


def apply_topics(settings: Settings, specs: list[TopicSpec] | None = None) -> list[TopicResult]:
    """Create the missing topics; report, never change, one whose partitions differ."""
    specs = declared_topics(settings) if specs is None else specs
    # NewTopic is re-exported from the C extension, which mypy cannot see.
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # noqa: PLC0415

    admin = AdminClient(kafka_config(settings))
    existing = admin.list_topics(timeout=15).topics
    results: list[TopicResult] = []
    missing = [spec for spec in specs if spec.name not in existing]
    for spec in specs:
        if spec.name in existing:
            have = len(existing[spec.name].partitions)
            if have != spec.partitions:
                results.append(
                    TopicResult(
                        spec, "mismatch", f"has {have} partitions, spec says {spec.partitions}"
                    )
                )
            else:
                results.append(TopicResult(spec, "exists"))
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(
                    spec.name,
                    num_partitions=spec.partitions,
                    replication_factor=settings.kafka_replication_factor,
                    config=spec.kafka_config(),
                )
                for spec in missing
            ],
            request_timeout=30,
        )
        for spec in missing:
            futures[spec.name].result()
            results.append(TopicResult(spec, "created"))
        _wait_for_leaders(admin, missing)
    return results


def _wait_for_leaders(admin: Any, specs: list[TopicSpec], timeout_s: float = 30.0) -> None:
    """CreateTopics answers once the controller has the topic; a client that asks the broker
    right after can still find no leader. Return once every partition has one."""
    deadline = time.monotonic() + timeout_s
    waiting = {spec.name: spec.partitions for spec in specs}
    while waiting:
        topics = admin.list_topics(timeout=10).topics
        for name, partitions in list(waiting.items()):
            meta = topics.get(name)
            if (
                meta is not None
                and meta.error is None
                and len(meta.partitions) == partitions
                and all(p.leader >= 0 for p in meta.partitions.values())
            ):
                del waiting[name]
        if waiting and time.monotonic() > deadline:
            raise RuntimeError(f"topics without a leader after {timeout_s:.0f}s: {sorted(waiting)}")
        if waiting:
            time.sleep(0.05)


def delete_topics(settings: Settings, specs: list[TopicSpec] | None = None) -> list[str]:
    """Delete the spec's topics that exist (tests and benchmarks clean up their own, since
    a real broker keeps them on disk). Returns the names deleted."""
    from confluent_kafka.admin import AdminClient  # noqa: PLC0415

    specs = declared_topics(settings) if specs is None else specs
    admin = AdminClient(kafka_config(settings))
    existing = admin.list_topics(timeout=15).topics
    names = [spec.name for spec in specs if spec.name in existing]
    if names:
        for future in admin.delete_topics(names, request_timeout=30).values():
            future.result()
    return names
