"""The live page's pipeline panel from the processes' Prometheus metrics (pure: the
text and the time are passed in).

The API scrapes each worker's and ranker's `/metrics` (`streams.live`); a rate is the
difference of two scrapes' counters over the time between them, the way Prometheus'
`rate()` does it, so the panel and a Grafana dashboard agree. Counters that went down
between two scrapes (a process restarted) count from zero again, as `rate()` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

#: The counters the panel shows as a rate per second: panel name -> metric sample name.
RATE_COUNTERS = {
    "events": "feedsignals_events_consumed_total",
    "applied": "feedsignals_interactions_applied_total",
    "triggers": "feedsignals_triggers_published_total",
    "reranks": "feedsignals_ranker_triggers_total",
    "sessions_flushed": "feedsignals_sessions_flushed_total",
    "sessions_rehydrated": "feedsignals_sessions_rehydrated_total",
}
FRESHNESS = "feedsignals_event_freshness_seconds"


@dataclass(frozen=True)
class Scrape:
    """What the panel reads from one round of scrapes (every source summed)."""

    at_s: float
    totals: dict[str, float] = field(default_factory=dict)  # RATE_COUNTERS' names
    dead_letters: dict[str, float] = field(default_factory=dict)  # by reason
    fallbacks: float = 0.0
    sessions_hot: float = 0.0
    freshness_buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative
    freshness_sum: float = 0.0
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class PanelFigures:
    """Rates over the interval between two scrapes (None on the first one)."""

    interval_s: float | None
    rates: dict[str, float | None]
    freshness_mean_s: float | None
    freshness_p99_s: float | None


def parse_scrape(texts: Iterable[str], at_s: float) -> Scrape:
    """Sum the panel's samples over the scraped texts (one per process)."""
    totals: dict[str, float] = {}
    dead: dict[str, float] = {}
    buckets: dict[float, float] = {}
    fallbacks = hot = fresh_sum = 0.0
    models: list[str] = []
    wanted = {sample: name for name, sample in RATE_COUNTERS.items()}
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name, labels, value = sample.name, sample.labels, float(sample.value)
                if name in wanted:
                    totals[wanted[name]] = totals.get(wanted[name], 0.0) + value
                elif name == "feedsignals_dead_letters_total":
                    reason = labels.get("reason", "")
                    dead[reason] = dead.get(reason, 0.0) + value
                elif name == "feedsignals_ranker_fallbacks_total":
                    fallbacks += value
                elif name == "feedsignals_sessions_hot":
                    hot += value
                elif name == f"{FRESHNESS}_bucket":
                    edge = float(labels["le"])
                    buckets[edge] = buckets.get(edge, 0.0) + value
                elif name == f"{FRESHNESS}_sum":
                    fresh_sum += value
                elif name == "feedsignals_ranker_model_info" and value:
                    models.append(labels.get("version", ""))
    return Scrape(at_s, totals, dead, fallbacks, hot, buckets, fresh_sum, tuple(models))


def _increase(now: float, before: float) -> float:
    return now - before if now >= before else now  # a restart: counting from zero


def panel_between(previous: Scrape | None, current: Scrape) -> PanelFigures:
    """The rates and the freshness between two scrapes."""
    if previous is None or current.at_s <= previous.at_s:
        return PanelFigures(None, dict.fromkeys(RATE_COUNTERS), None, None)
    interval = current.at_s - previous.at_s
    rates: dict[str, float | None] = {
        name: _increase(current.totals.get(name, 0.0), previous.totals.get(name, 0.0)) / interval
        if name in current.totals
        else None
        for name in RATE_COUNTERS
    }
    increase = {
        edge: _increase(count, previous.freshness_buckets.get(edge, 0.0))
        for edge, count in current.freshness_buckets.items()
    }
    observed = increase.get(float("inf"), 0.0)
    mean = p99 = None
    if observed > 0:
        mean = _increase(current.freshness_sum, previous.freshness_sum) / observed
        p99 = bucket_quantile(0.99, increase)
    return PanelFigures(interval, rates, mean, p99)


def bucket_quantile(q: float, cumulative: Mapping[float, float]) -> float | None:
    """A quantile from cumulative bucket counts, interpolated inside the bucket it falls
    in (Prometheus' `histogram_quantile`); the highest finite edge when it falls above."""
    edges = sorted(cumulative)
    if not edges or cumulative[edges[-1]] <= 0:
        return None
    rank = q * cumulative[edges[-1]]
    lower_edge, lower_count = 0.0, 0.0
    for edge in edges:
        count = cumulative[edge]
        if count >= rank:
            if edge == float("inf"):
                return lower_edge
            if count == lower_count:
                return edge
            return lower_edge + (edge - lower_edge) * (rank - lower_count) / (count - lower_count)
        lower_edge, lower_count = edge, count
    return lower_edge
