"""Prometheus metrics of the worker, the ranker and the API (`prometheus-client`).

The counters each process already keeps (`IngestCounters`, `SessionCounters`,
`RankerCounters`, the model slot's) are read when Prometheus scrapes, by a collector, so
the hot paths pay nothing for them; durations are histograms observed where they are
measured. Names follow Prometheus' conventions (`feedsignals_` prefix, `_total` for
counters, `_seconds` for durations). The worker and the ranker serve `/metrics` on
their own port (`SIGNALS_WORKER_METRICS_PORT`, `SIGNALS_RANKER_METRICS_PORT`; 0 turns it
off); the API serves it beside its routes.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

log = logging.getLogger(__name__)

#: Buckets for per-request and per-trigger durations (0.5 ms to 2.5 s).
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Buckets for event time to applied (5 ms to 5 min: a worker catching up on a backlog).
FRESHNESS_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


class BulkHistogram:
    """A Prometheus histogram observed a batch of values at a time.

    `Histogram.observe` takes a lock per value (about 1 us); freshness is observed for
    every user of every batch, tens of thousands a second, so this one counts a batch in
    a plain loop on the event loop's thread and is read by the scrape thread (a scrape
    may see one batch half counted; the next one sees it whole).
    """

    def __init__(self, name: str, documentation: str, buckets: Iterable[float]) -> None:
        self.name = name
        self.documentation = documentation
        self._edges = sorted(buckets)
        self._counts = [0] * (len(self._edges) + 1)  # the last one: above every edge
        self._sum = 0.0

    def observe_many(self, values: Iterable[float]) -> None:
        counts, edges = self._counts, self._edges
        total = 0.0
        for value in values:
            counts[bisect_left(edges, value)] += 1  # the first edge >= value: `le`
            total += value
        self._sum += total

    @property
    def count(self) -> int:
        return sum(self._counts)

    def collect(self) -> Iterator[Metric]:
        cumulative, buckets = 0, []
        for edge, n in zip([*self._edges, float("inf")], list(self._counts), strict=True):
            cumulative += n
            buckets.append(("+Inf" if edge == float("inf") else repr(edge), cumulative))
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=buckets, sum_value=self._sum
        )


def event_freshness() -> BulkHistogram:
    return BulkHistogram(
        "feedsignals_event_freshness_seconds",
        "event time to applied: from each user's newest event in a batch to the moment "
        "the batch's hot-tier write returned",
        FRESHNESS_BUCKETS,
    )


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _labelled(
    name: str, documentation: str, label: str, values: dict[str, int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


class WorkerCollector:
    """The ingest worker's counters, read at scrape time."""

    def __init__(
        self, ingest: Any, sessions: Any, lag: Callable[[], dict[int, int]] | None = None
    ) -> None:
        self._ingest = ingest  # streams.app.IngestCounters
        self._sessions = sessions  # streams.sessions.SessionCounters
        self._lag = lag

    def collect(self) -> Iterator[Metric]:
        ingest, sessions = self._ingest, self._sessions
        yield _counter(
            "feedsignals_events_consumed_total",
            "records fetched from the events topic",
            ingest.events,
        )
        yield _counter(
            "feedsignals_interactions_applied_total",
            "interactions written to the hot tier",
            ingest.applied,
        )
        yield _labelled(
            "feedsignals_dead_letters_total",
            "records sent to the dead-letter topic, by the field that was wrong",
            "reason",
            ingest.invalid_reasons,
        )
        yield _counter(
            "feedsignals_events_too_late_total",
            "events beyond the allowed lateness (in no feature tile)",
            ingest.too_late,
        )
        yield _labelled(
            "feedsignals_triggers_published_total",
            "rank-refresh triggers published, by reason",
            "reason",
            ingest.trigger_reasons,
        )
        yield _counter(
            "feedsignals_erasures_total",
            "users erased (forget records carried out: signals forget)",
            ingest.erasures,
        )
        yield _counter(
            "feedsignals_erased_events_dropped_total",
            "events of erased users timed at or before their erasure, dropped",
            ingest.erased_events,
        )
        yield _counter(
            "feedsignals_sessions_rehydrated_total",
            "returning users whose last-k was loaded back from the cold tier",
            sessions.hydrated_users,
        )
        yield _counter(
            "feedsignals_sessions_flushed_total",
            "users whose ended session was moved to the cold tier",
            sessions.flushed_users,
        )
        yield _counter(
            "feedsignals_flush_passes_total", "session flush rounds", sessions.flush_passes
        )
        hot = GaugeMetricFamily(
            "feedsignals_sessions_hot",
            "users in the hot tier per owned partition, as of the last flush round",
            labels=["partition"],
        )
        for partition, users in sorted(dict(sessions.hot_by_partition).items()):
            hot.add_metric([str(partition)], users)
        yield hot
        if self._lag is not None:
            lag = GaugeMetricFamily(
                "feedsignals_consumer_lag_records",
                "records of the events topic not fetched yet, per owned partition",
                labels=["partition"],
            )
            for partition, behind in sorted(self._lag().items()):
                lag.add_metric([str(partition)], behind)
            yield lag


class RankerCollector:
    """The ranker's counters and its serving model, read at scrape time."""

    def __init__(self, counters: Any, models: Any, drift: Any = None) -> None:
        self._counters = counters  # streams.ranker.RankerCounters
        self._models = models  # streams.models.ModelSlot
        self._drift = drift  # streams.logic.drift.DriftMonitor

    def collect(self) -> Iterator[Metric]:
        counters, models = self._counters, self._models
        yield _counter("feedsignals_ranker_triggers_total", "triggers ranked", counters.triggers)
        written = CounterMetricFamily(
            "feedsignals_ranker_feeds_written_total",
            "feeds written, by how they were ranked",
            labels=["ranking"],
        )
        written.add_metric(["model"], counters.scored)
        written.add_metric(["popularity_fallback"], counters.fallbacks)
        written.add_metric(["holdout"], counters.holdouts)
        yield written
        yield _counter(
            "feedsignals_ranker_fallbacks_total",
            "feeds ranked by popularity for want of a model (none loaded, or scoring failed)",
            counters.fallbacks,
        )
        yield _counter(
            "feedsignals_ranker_scoring_errors_total", "scoring failures", counters.scoring_errors
        )
        yield _counter(
            "feedsignals_ranker_stale_total",
            "triggers dropped: the stored feed came from the same or a later one",
            counters.stale,
        )
        yield _counter(
            "feedsignals_ranker_superseded_total",
            "triggers skipped for a later one of the same user",
            counters.superseded,
        )
        yield _counter(
            "feedsignals_ranker_shed_total",
            "triggers that were not urgent, shed unranked while the ranker was behind",
            counters.shed,
        )
        yield _counter(
            "feedsignals_ranker_dead_letters_total",
            "malformed triggers dead-lettered",
            counters.dead_lettered,
        )
        yield _counter(
            "feedsignals_ranker_candidates_total",
            "candidates merged over every written feed",
            counters.candidates,
        )
        yield _counter("feedsignals_ranker_model_swaps_total", "models swapped in", models.swaps)
        yield _counter(
            "feedsignals_ranker_model_refused_total", "published models refused", models.refused
        )
        info = GaugeMetricFamily(
            "feedsignals_ranker_model_info",
            "the serving model (1), by version; popularity when none is loaded",
            labels=["version", "compiled"],
        )
        model = models.model
        info.add_metric(
            [model.version if model else "popularity", str(bool(model and model.compiled)).lower()],
            1,
        )
        yield info
        report = self._drift.latest if self._drift is not None else None
        if report is not None:
            yield from _drift_metrics(report)


def _drift_metrics(report: Any) -> Iterator[Metric]:
    """The latest drift check (`streams.logic.drift.DriftReport`)."""
    psi = GaugeMetricFamily(
        "feedsignals_drift_psi",
        "population stability index of each ranking feature (and the score) in the live "
        "sample against the serving model's training distribution",
        labels=["feature", "model"],
    )
    for name, value in report.worst:
        psi.add_metric([name, report.model], value)
    yield psi
    yield GaugeMetricFamily(
        "feedsignals_drift_sample_rows", "rows in the live drift sample", value=report.rows
    )
    yield GaugeMetricFamily(
        "feedsignals_drift_retrain_due",
        "1 when a PSI exceeds SIGNALS_DRIFT_THRESHOLD over enough rows",
        value=int(report.retrain_due),
    )


def worker_durations(registry: CollectorRegistry) -> tuple[Histogram, Histogram]:
    """The worker's batch (decode to committed-ready: stores, features, triggers) and
    session-flush durations."""
    batch = Histogram(
        "feedsignals_batch_duration_seconds",
        "one applied batch: re-hydration, the hot-tier write, features and triggers",
        registry=registry,
        buckets=FAST_BUCKETS,
    )
    flush = Histogram(
        "feedsignals_flush_duration_seconds",
        "one session-flush round: ended sessions moved to the cold tier",
        registry=registry,
        buckets=FAST_BUCKETS,
    )
    return batch, flush


def rank_duration(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        "feedsignals_ranker_rank_duration_seconds",
        "one trigger: reads, candidates, scoring, re-ranking and the feed write",
        registry=registry,
        buckets=FAST_BUCKETS,
    )


def request_duration(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        "feedsignals_api_request_duration_seconds",
        "HTTP API requests, by route and status",
        labelnames=["route", "status"],
        registry=registry,
        buckets=FAST_BUCKETS,
    )


def serve(
    registry: CollectorRegistry,
    port: int,
    what: str,
    host: str = "0.0.0.0",  # noqa: S104
) -> Callable[[], None] | None:
    """Serve `/metrics` for `registry` on `port` in a background thread; returns a stop,
    or None when the port is 0 or taken (logged: a second process on one machine needs
    its own port, and its work matters more than its metrics)."""
    if port == 0:
        return None
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.warning("%s metrics not served: port %d: %s", what, port, exc)
        return None
    log.info("%s metrics on http://%s:%d/metrics", what, host, port)

    def stop() -> None:
        server.shutdown()
        thread.join(5)

    return stop
