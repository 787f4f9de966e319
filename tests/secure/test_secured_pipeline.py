"""The pipeline on the secured stack: produce, ingest, flush, re-hydrate, read and erase
over SASL_SSL, TLS and logins; the refusals (a wrong password, an untrusted certificate,
a plaintext client), each one line naming the server and the cause, with nothing applied;
and no secret in any log or output of the run."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import Consumer, TopicPartition

from schemas.events import EventType
from schemas.hot_layout import hot_key
from sinks.connectivity import kafka_config, redis_options
from streams.settings import Settings
from tests.conftest import ROOT, WorkerHandle, run_signals, send_events, shopper_event, wait_for
from tests.stack.harness import Worker, cql_execute
from tests.stack.oracle import SESSION_ENV

T0 = 1_790_000_000_000


def _products(settings: Settings, user: str, kind: EventType) -> list[bytes]:
    client = redis.Redis.from_url(settings.redis_url, **redis_options(settings))
    try:
        return client.zrevrange(hot_key(settings.redis_key_prefix, user, kind), 0, -1)
    finally:
        client.close()


@pytest.fixture
def running_worker(
    secure_settings: Settings, secure_env: dict[str, str], worker: Callable[..., Any]
) -> Iterator[WorkerHandle]:
    with worker({**secure_env, **SESSION_ENV}) as handle:
        yield handle


def _secrets(secure_dir: Path) -> dict[str, str]:
    """Every password the secured stack configured (servers' and clients')."""
    found = {
        path.name: path.read_text().strip() for path in (secure_dir / "secrets").glob("*.password")
    }
    assert len(found) >= 4 and all(len(secret) >= 16 for secret in found.values())
    return found


def test_produce_ingest_flush_rehydrate_read_and_erase_over_tls_and_logins_leaking_no_secret(
    secure_settings: Settings,
    secure_env: dict[str, str],
    running_worker: WorkerHandle,
    secure_dir: Path,
    tmp_path: Path,
) -> None:
    settings = secure_settings
    replay_folder = tmp_path / "replay"
    outputs: list[str] = []
    now = int(time.time() * 1000)
    send_events(
        settings,
        [
            shopper_event("sara", EventType.VIEW, "p1", now - 60_000, 1),
            shopper_event("sara", EventType.CLICK, "p2", now - 59_000, 2),
            shopper_event("tom", EventType.VIEW, "p3", now - 60_000, 3),
        ],
    )
    wait_for(
        lambda: _products(settings, "sara", EventType.VIEW) == [b"p1"],
        timeout_s=90,
        what="the worker to apply sara's events over TLS",
        on_fail=lambda: running_worker.log_text()[-3000:],
    )
    # Her session ends (2 s gap): flushed to the cold tier over TLS with the CQL login.
    wait_for(
        lambda: (
            bool(cql_execute(settings, "SELECT user_id FROM lastk_by_user WHERE user_id = 'sara'"))
            and not _products(settings, "sara", EventType.VIEW)
        ),
        timeout_s=60,
        what="sara's session to move to the cold tier",
        on_fail=lambda: running_worker.log_text()[-3000:],
    )
    # She is back: re-hydrated from the cold tier, the new view on top.
    send_events(settings, [shopper_event("sara", EventType.VIEW, "p4", now - 30_000, 4)])
    wait_for(
        lambda: _products(settings, "sara", EventType.VIEW) == [b"p4", b"p1"],
        timeout_s=60,
        what="sara re-hydrated with her new view",
        on_fail=lambda: running_worker.log_text()[-3000:],
    )
    read = run_signals(secure_env, "last-k", "sara", "--type", "click")
    outputs += [read.stdout, read.stderr]
    assert read.returncode == 0, read.stderr
    assert "p2" in read.stdout

    checked = run_signals(secure_env, "check")
    outputs += [checked.stdout, checked.stderr]
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines() == [
        f"kafka {settings.kafka_bootstrap}: ok (SASL_SSL)",
        f"redis 127.0.0.1:{settings.redis_url.rsplit(':', 1)[1].split('/')[0]}: ok (TLS)",
        f"cql {settings.cql_hosts}:{settings.cql_port}: ok (TLS)",
    ]

    forgot = run_signals(secure_env, "forget", "sara", "--wait", "60")
    outputs += [forgot.stdout, forgot.stderr]
    assert forgot.returncode == 0, forgot.stderr + running_worker.log_text()[-3000:]
    assert _products(settings, "sara", EventType.VIEW) == []
    assert cql_execute(settings, "SELECT * FROM lastk_by_user WHERE user_id = 'sara'") == []
    # tom is untouched (his session has ended too: he is in the cold tier).
    assert cql_execute(settings, "SELECT items FROM lastk_by_user WHERE user_id = 'tom'")

    # An analyst's replay over SASL_SSL, honouring the erasure it reads from the secured
    # cold tier: tom's events only.
    replayed = run_signals(
        secure_env,
        "replay",
        "--start",
        str(now - 120_000),
        "--end",
        str(now + 1),
        "--to-parquet",
        str(replay_folder),
        "--no-progress",
    )
    outputs += [replayed.stdout, replayed.stderr]
    assert replayed.returncode == 0, replayed.stderr
    import pandas as pd  # noqa: PLC0415

    assert sorted(set(pd.read_parquet(replay_folder)["user_id"])) == ["tom"]

    # What an operator sees: help, the stack's status, a refused setting, the settings.
    for args in (["--help"], ["worker", "--help"], ["forget", "--help"], ["check", "--help"]):
        shown = run_signals(secure_env, *args)
        outputs += [shown.stdout, shown.stderr]
    bad = run_signals({**secure_env, "SIGNALS_REDIS_TLS_CERT_FILE": "/nonexistent.pem"}, "check")
    outputs += [bad.stdout, bad.stderr]
    assert bad.returncode == 1 and "SIGNALS_REDIS_TLS_CERT_FILE" in bad.stderr
    status = subprocess.run(
        [sys.executable, "-m", "infra.stack", "status", "--secure"],
        check=False,
        cwd=ROOT,
        env={**os.environ, "SIGNALS_STATE_DIR": str(secure_dir.parent)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    outputs += [status.stdout, status.stderr, repr(settings), str(settings.model_dump())]
    running_worker.stop()
    outputs.append(running_worker.log_text())
    assert "erased 1 users" in outputs[-1]
    text = "\n".join(outputs)
    for name, secret in _secrets(secure_dir).items():
        assert secret not in text, f"the password in {name} appears in a log or output"


def test_the_hot_tier_on_the_secured_redis_cluster(secure_settings: Settings) -> None:
    """Write, flush and re-hydrate on the cluster: TLS to every node, the ACL user."""
    from streams.settings import stack_cluster_url  # noqa: PLC0415

    url = stack_cluster_url()
    assert url is not None and url.startswith("rediss://")
    settings = secure_settings.model_copy(update={"redis_url": url, "redis_cluster": True})

    async def scenario() -> None:
        worker = Worker(settings)
        try:
            await worker.batch([(f"u{i}", EventType.VIEW, f"p{i}", T0 + i) for i in range(50)])
            assert await worker.flush() == 50
            await worker.batch([("u7", EventType.CLICK, "p100", T0 + 5000)])
            assert await worker.hot_items("u7", EventType.VIEW) == [("p7", T0 + 7)]
            assert await worker.cold_items("u8", EventType.VIEW) == [("p8", T0 + 8)]
        finally:
            await worker.close()

    asyncio.run(scenario())


def _refused(secure_env: dict[str, str], secure_dir: Path, failure: str) -> dict[str, str]:
    """The test's environment with one kind of mistake made for every server."""
    tls = secure_dir / "tls"
    if failure == "wrong password":
        return {
            **secure_env,
            "SIGNALS_KAFKA_SASL_PASSWORD_FILE": "",
            "SIGNALS_KAFKA_SASL_PASSWORD": "not-the-password",
            "SIGNALS_REDIS_PASSWORD_FILE": "",
            "SIGNALS_REDIS_PASSWORD": "not-the-password",
            "SIGNALS_CQL_PASSWORD_FILE": "",
            "SIGNALS_CQL_PASSWORD": "not-the-password",
        }
    if failure == "untrusted certificate":
        other = str(tls / "other-ca.pem")
        return {
            **secure_env,
            "SIGNALS_KAFKA_SSL_CA_FILE": other,
            "SIGNALS_REDIS_TLS_CA_FILE": other,
            "SIGNALS_CQL_TLS_CA_FILE": other,
        }
    assert failure == "plaintext client"
    settings_url = Settings.load().redis_url
    return {
        **secure_env,
        "SIGNALS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "SIGNALS_KAFKA_SSL_CA_FILE": "",
        "SIGNALS_REDIS_URL": settings_url.replace("rediss://", "redis://"),
        "SIGNALS_REDIS_TLS_CA_FILE": "",
        "SIGNALS_CQL_TLS": "false",
        "SIGNALS_CQL_TLS_CA_FILE": "",
    }


CAUSES = {
    "wrong password": "authentication failed",
    "untrusted certificate": "certificate not trusted",
    "plaintext client": "the server expects TLS",
}


@pytest.mark.parametrize("failure", list(CAUSES))
def test_each_refusal_is_one_line_naming_the_server_and_the_cause(
    secure_settings: Settings, secure_env: dict[str, str], secure_dir: Path, failure: str
) -> None:
    checked = run_signals(_refused(secure_env, secure_dir, failure), "check")
    assert checked.returncode == 1
    lines = [line for line in checked.stderr.splitlines() if line.strip()]
    settings = secure_settings
    servers = [
        f"kafka {settings.kafka_bootstrap}",
        f"redis 127.0.0.1:{settings.redis_url.rsplit(':', 1)[1].split('/')[0]}",
        f"cql {settings.cql_hosts}:{settings.cql_port}",
    ]
    assert len(lines) == 3, checked.stderr
    for line, server in zip(lines, servers, strict=True):
        assert line.startswith(f"{server}: {CAUSES[failure]}: "), line


@pytest.mark.parametrize("server", ["kafka", "redis", "cql"])
def test_a_worker_refused_by_a_server_stops_at_once_having_applied_and_committed_nothing(
    secure_settings: Settings,
    secure_env: dict[str, str],
    worker: Callable[..., Any],
    server: str,
) -> None:
    settings = secure_settings
    now = int(time.time() * 1000)
    events = [shopper_event("uma", EventType.VIEW, f"p{i}", now - 10_000 + i, i) for i in range(5)]
    send_events(settings, events)
    wrong = {
        "kafka": {"SIGNALS_KAFKA_SASL_PASSWORD_FILE": "", "SIGNALS_KAFKA_SASL_PASSWORD": "x"},
        "redis": {"SIGNALS_REDIS_PASSWORD_FILE": "", "SIGNALS_REDIS_PASSWORD": "x"},
        "cql": {"SIGNALS_CQL_PASSWORD_FILE": "", "SIGNALS_CQL_PASSWORD": "x"},
    }[server]
    refused = run_signals({**secure_env, **wrong}, "worker", timeout_s=120)
    assert refused.returncode == 2, refused.stderr[-2000:]
    errors = [line for line in refused.stderr.splitlines() if line.startswith("signals: error:")]
    assert len(errors) == 1 and f"{server} " in errors[0] and "authentication failed" in errors[0]
    # Nothing applied, nothing committed: a correct worker then applies every event.
    assert _products(settings, "uma", EventType.VIEW) == []
    consumer = Consumer({**kafka_config(settings), "group.id": settings.app_id})
    try:
        committed = consumer.committed(
            [TopicPartition(settings.events_topic, p) for p in range(settings.events_partitions)],
            timeout=30,
        )
    finally:
        consumer.close()
    assert all(tp.offset < 0 for tp in committed), committed
    with worker(secure_env) as handle:  # sessions of 30 minutes
        wait_for(
            lambda: len(_products(settings, "uma", EventType.VIEW)) == 5,
            timeout_s=90,
            what="a correctly configured worker to apply all five events",
            on_fail=lambda: handle.log_text()[-3000:],
        )


def test_client_certificates_are_accepted_where_the_servers_ask_for_them(
    secure_settings: Settings, secure_env: dict[str, str], secure_dir: Path
) -> None:
    tls = secure_dir / "tls"
    mtls = {
        **secure_env,
        "SIGNALS_KAFKA_SSL_CERT_FILE": str(tls / "client.pem"),
        "SIGNALS_KAFKA_SSL_KEY_FILE": str(tls / "client.key"),
        "SIGNALS_REDIS_TLS_CERT_FILE": str(tls / "client.pem"),
        "SIGNALS_REDIS_TLS_KEY_FILE": str(tls / "client.key"),
        "SIGNALS_CQL_TLS_CERT_FILE": str(tls / "client.pem"),
        "SIGNALS_CQL_TLS_KEY_FILE": str(tls / "client.key"),
    }
    checked = run_signals(mtls, "check")
    assert checked.returncode == 0, checked.stderr
    assert len(checked.stdout.splitlines()) == 3


def test_the_ranker_and_the_read_api_run_on_the_secured_stack(
    secure_settings: Settings,
    secure_env: dict[str, str],
    worker: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """The ranker's Faust app joins its group over SASL_SSL; the API answers /readyz with
    every store reached over TLS and serves a user's interactions."""
    import httpx  # noqa: PLC0415

    from tests.stack.test_api import ApiServer  # noqa: PLC0415

    settings = secure_settings
    now = int(time.time() * 1000)
    with worker(secure_env) as ingest, worker(secure_env, "ranker") as ranker:
        send_events(settings, [shopper_event("vic", EventType.VIEW, "p7", now - 5000, 1)])
        wait_for(
            lambda: _products(settings, "vic", EventType.VIEW) == [b"p7"],
            timeout_s=90,
            what="the worker to apply vic's view",
            on_fail=lambda: ingest.log_text()[-3000:],
        )
        wait_for(
            lambda: "Setting newly assigned partitions" in ranker.log_text(),
            timeout_s=90,
            what="the ranker to join its group over SASL_SSL",
            on_fail=lambda: ranker.log_text()[-3000:],
        )
        assert ranker.process.poll() is None
        server = ApiServer(secure_env, tmp_path / "api.log")
        try:
            ready = httpx.get(f"{server.url}/readyz", timeout=10)
            assert ready.status_code == 200, ready.text
            got = httpx.get(f"{server.url}/users/vic/interactions?type=view&k=5", timeout=10)
            assert got.status_code == 200, got.text
            assert "p7" in got.text
        finally:
            server.stop()
