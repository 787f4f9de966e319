"""The compose file's monitoring part, checked without a Docker engine (none runs on the
project's machines): Prometheus scrapes services that exist on the ports they serve,
the files it mounts are in the repository, and every metric the Grafana dashboard
queries is one the processes really export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, generate_latest

from streams.app import IngestCounters
from streams.logic.drift import DriftMonitor, DriftReport
from streams.metrics import (
    RankerCollector,
    WorkerCollector,
    event_freshness,
    rank_duration,
    request_duration,
    worker_durations,
)
from streams.models import ModelSlot
from streams.ranker import RankerCounters
from streams.sessions import SessionCounters
from streams.settings import Settings

INFRA = Path(__file__).resolve().parents[2] / "infra"


def compose() -> dict:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def exported_names() -> set[str]:
    """Every sample name the worker, the ranker and the API export."""
    registry = CollectorRegistry()
    sessions = SessionCounters(hot_by_partition={0: 1})
    ingest = IngestCounters(invalid_reasons={"user_id": 1}, trigger_reasons={"high_intent": 1})
    registry.register(WorkerCollector(ingest, sessions, lambda: {0: 0}))
    drift = DriftMonitor(columns=1)
    drift.latest = DriftReport(1, "v1", 600, 0.25, {"score": 0.01})
    registry.register(RankerCollector(RankerCounters(), ModelSlot(None), drift))
    registry.register(event_freshness())
    worker_durations(registry)
    rank_duration(registry)
    request_duration(registry).labels("/healthz", "200").observe(0.001)
    text = generate_latest(registry).decode()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    return {name for name in names if name}


def test_prometheus_scrapes_each_process_on_the_port_it_serves() -> None:
    services = compose()["services"]
    config = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    defaults = Settings.model_fields
    assert targets == {
        "worker": f"worker:{defaults['worker_metrics_port'].default}",
        "ranker": f"ranker:{defaults['ranker_metrics_port'].default}",
        "api": "api:8080",
    }
    assert "--port" in services["api"]["command"] and "8080" in services["api"]["command"]
    panel_sources = services["api"]["environment"]["SIGNALS_API_PIPELINE_METRICS"].split(",")
    assert panel_sources == [f"http://{targets[job]}/metrics" for job in ("worker", "ranker")]


def test_every_mounted_file_and_every_dependency_exists() -> None:
    services = compose()["services"]
    for name, service in services.items():
        depends = service.get("depends_on", [])
        assert set(depends) <= set(services), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (INFRA / source).exists(), f"{name} mounts {source}"


def test_the_dashboard_queries_only_metrics_the_processes_export() -> None:
    dashboard = json.loads((INFRA / "grafana" / "dashboards" / "feedsignals.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queried = {name for expr in exprs for name in re.findall(r"feedsignals_[a-z_]+", expr)}
    exported = exported_names()
    missing = sorted(queried - exported)
    assert not missing, missing
    assert len(queried) >= 15
