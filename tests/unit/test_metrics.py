"""The Prometheus metrics: what the collectors read from the processes' counters, and the
API's request durations by route and status (no servers: the API's stores connect lazily
and these routes touch none)."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest

from streams.api import create_app
from streams.app import IngestCounters
from streams.logic.drift import DriftMonitor, DriftReport
from streams.metrics import BulkHistogram, RankerCollector, WorkerCollector
from streams.models import ModelSlot
from streams.ranker import RankerCounters
from streams.sessions import SessionCounters
from streams.settings import Settings


def scrape(collector: object) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def test_the_worker_collector_reads_the_counters_at_scrape_time() -> None:
    ingest, sessions = IngestCounters(), SessionCounters()
    collector = WorkerCollector(ingest, sessions, lambda: {3: 12, 0: 0})
    assert "feedsignals_events_consumed_total 0.0" in scrape(collector)
    ingest.events, ingest.applied = 10, 8
    ingest.invalid_reasons["user_id"] = 2
    ingest.trigger_reasons["high_intent"] = 3
    sessions.flushed_users, sessions.hydrated_users = 4, 1
    sessions.hot_by_partition = {0: 7, 1: 2}
    ingest.erasures, ingest.erased_events = 2, 5
    text = scrape(collector)
    for line in (
        "feedsignals_events_consumed_total 10.0",
        "feedsignals_interactions_applied_total 8.0",
        'feedsignals_dead_letters_total{reason="user_id"} 2.0',
        'feedsignals_triggers_published_total{reason="high_intent"} 3.0',
        "feedsignals_sessions_flushed_total 4.0",
        "feedsignals_sessions_rehydrated_total 1.0",
        'feedsignals_consumer_lag_records{partition="3"} 12.0',
        'feedsignals_consumer_lag_records{partition="0"} 0.0',
        'feedsignals_sessions_hot{partition="0"} 7.0',
        'feedsignals_sessions_hot{partition="1"} 2.0',
        "feedsignals_erasures_total 2.0",
        "feedsignals_erased_events_dropped_total 5.0",
    ):
        assert line in text, line


def test_a_bulk_histogram_counts_each_value_in_its_le_bucket() -> None:
    histogram = BulkHistogram("feedsignals_test_seconds", "a test", (0.1, 1.0))
    histogram.observe_many([0.05, 0.1, 0.5, 2.0])
    histogram.observe_many([])
    text = scrape(histogram)
    for line in (
        'feedsignals_test_seconds_bucket{le="0.1"} 2.0',  # 0.1 itself is `le` 0.1
        'feedsignals_test_seconds_bucket{le="1.0"} 3.0',
        'feedsignals_test_seconds_bucket{le="+Inf"} 4.0',
        "feedsignals_test_seconds_count 4.0",
        "feedsignals_test_seconds_sum 2.65",
    ):
        assert line in text, line


def test_the_ranker_collector_names_the_serving_model() -> None:
    counters = RankerCounters(triggers=5, written=4, scored=3, fallbacks=1, superseded=2)
    text = scrape(RankerCollector(counters, ModelSlot(None)))
    assert 'feedsignals_ranker_feeds_written_total{ranking="model"} 3.0' in text
    assert 'feedsignals_ranker_feeds_written_total{ranking="popularity_fallback"} 1.0' in text
    assert "feedsignals_ranker_superseded_total 2.0" in text
    assert 'feedsignals_ranker_model_info{compiled="false",version="popularity"} 1.0' in text
    assert "feedsignals_drift_psi" not in text  # no check yet


def test_the_ranker_collector_exports_the_latest_drift_check() -> None:
    drift = DriftMonitor(columns=2)
    drift.latest = DriftReport(1, "v1", 900, 0.25, {"u_views_1h": 0.4, "score": 0.02})
    text = scrape(RankerCollector(RankerCounters(), ModelSlot(None), drift))
    assert 'feedsignals_drift_psi{feature="u_views_1h",model="v1"} 0.4' in text
    assert 'feedsignals_drift_psi{feature="score",model="v1"} 0.02' in text
    assert "feedsignals_drift_retrain_due 1.0" in text
    assert "feedsignals_drift_sample_rows 900.0" in text


def test_the_api_times_requests_by_route_and_status(tmp_path) -> None:
    settings = Settings.load()
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/healthz").status_code == 200
        assert client.get("/nowhere").status_code == 404
        text = client.get("/metrics").text
    assert (
        'feedsignals_api_request_duration_seconds_count{route="/healthz",status="200"} 2.0' in text
    )
    assert (
        'feedsignals_api_request_duration_seconds_count{route="unmatched",status="404"} 1.0' in text
    )
