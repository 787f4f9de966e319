"""The topic specification: every topic the pipeline uses, including Faust's internal ones.

Applied to the local mock broker through its control socket (the mock cannot create
topics over the Kafka API) and to a real Kafka with the admin client. Faust runs with
`topic_allow_declare=False`, so this is the only place topics come from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from streams.settings import Settings

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    cleanup_policy: Literal["delete", "compact"]
    retention_ms: int
    purpose: str

    def kafka_config(self) -> dict[str, str]:
        return {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}


def faust_leader_topic(settings: Settings) -> str:
    """Faust's assignor elects a leader through this single-partition topic."""
    return f"{settings.app_id}-__assignor-__leader"


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
            name=faust_leader_topic(settings),
            partitions=1,
            cleanup_policy="delete",
            retention_ms=DAY_MS,
            purpose="Faust internal: assignor leader election",
        ),
    ]


@dataclass(frozen=True)
class TopicResult:
    spec: TopicSpec
    outcome: Literal["created", "exists", "mismatch"]
    detail: str = ""


def apply_topics(settings: Settings, specs: list[TopicSpec] | None = None) -> list[TopicResult]:
    specs = declared_topics(settings) if specs is None else specs
    if settings.kafka_mock_control:
        return _apply_to_mock(settings.kafka_mock_control, specs)
    return _apply_to_kafka(settings, specs)


def _apply_to_mock(control_path: str, specs: list[TopicSpec]) -> list[TopicResult]:
    from infra.kafka_mock import control  # noqa: PLC0415

    results = []
    for spec in specs:
        reply = control(
            control_path,
            {
                "op": "create_topic",
                "name": spec.name,
                "partitions": spec.partitions,
                "replication": 1,
            },
        )
        if not reply["ok"]:
            raise RuntimeError(f"mock broker refused topic {spec.name}: {reply['error']}")
        if reply["created"]:
            results.append(TopicResult(spec, "created"))
        elif reply["partitions"] != spec.partitions:
            results.append(
                TopicResult(
                    spec,
                    "mismatch",
                    f"has {reply['partitions']} partitions, spec says {spec.partitions}",
                )
            )
        else:
            results.append(TopicResult(spec, "exists"))
    return results


def _apply_to_kafka(settings: Settings, specs: list[TopicSpec]) -> list[TopicResult]:
    # NewTopic is re-exported from the C extension, which mypy cannot see.
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # noqa: PLC0415

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
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
    return results
