"""Erasure (`signals forget`) across every tier and every way the data could come back:
a flush in flight, a late event of theirs still in the topic, a replay, a backfill from
replay files written before the erasure."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from schemas.erasure import Forget, ForgetAt
from schemas.events import EventType
from schemas.feature_layout import user_features_key
from schemas.feed_layout import Feed, feed_key
from schemas.hot_layout import UserLastK, active_key, hot_key, version_key
from sinks.connectivity import redis_options
from sinks.eraser import Eraser
from sinks.feed_store import RedisFeedStore
from streams.settings import Settings
from tests.conftest import on_backend, run_signals, send_events, shopper_event, wait_for
from tests.stack.harness import PARTITION, Worker, cql_execute
from tests.stack.oracle import SESSION_ENV

T0 = 1_790_000_000_000


@pytest.mark.parametrize("backend", ["single", "cluster"])
def test_an_erased_user_is_gone_from_both_tiers_and_a_flush_in_flight_cannot_restore_them(
    session_settings: Settings, backend: str
) -> None:
    settings = on_backend(session_settings, backend, k=None)

    async def scenario() -> None:
        worker = Worker(settings)
        eraser = Eraser(worker.client, settings.redis_key_prefix, worker.cold)
        try:
            # alice: a session flushed to the cold tier, then a new one in the hot tier.
            await worker.batch(
                [("alice", EventType.VIEW, "p1", T0), ("bob", EventType.VIEW, "p9", T0)]
            )
            assert await worker.flush() == 2
            await worker.batch([("alice", EventType.CLICK, "p2", T0 + 5000)])
            assert await worker.hot_items("alice", EventType.VIEW) == [("p1", T0)]
            # A flush in flight: it read alice's snapshot (and its version) just before
            # the erasure, and writes it to the cold tier just after.
            version = int(await worker.client.get(version_key(settings.redis_key_prefix, "alice")))
            in_flight = UserLastK(
                "alice",
                {EventType.VIEW: [("p1", T0)], EventType.CLICK: [("p2", T0 + 5000)]},
                version=version,
            )
            feeds = RedisFeedStore(worker.client, settings.redis_key_prefix)
            assert await feeds.write(served_feed("alice", sequence=40))
            await eraser.erase([ForgetAt(PARTITION, 50, Forget("alice", T0 + 10_000))], T0 + 10_000)
            await worker.cold.write_snapshots([in_flight])
            # Her feed is gone; a trigger decided before the erasure (sequence 45, below the
            # forget record's offset 50) writes none; one after it (her return) does.
            assert await feeds.read("alice") is None
            assert not await feeds.write(served_feed("alice", sequence=45))
            assert await feeds.read("alice") is None

            for event_type in (EventType.VIEW, EventType.CLICK):
                assert await worker.hot_items("alice", event_type) == []
                assert await worker.cold_items("alice", event_type) == []
            assert not await worker.is_active("alice")
            prefix = settings.redis_key_prefix
            assert not await worker.client.exists(version_key(prefix, "alice"))
            loaded = await worker.cold.load_last_k(["alice"])
            assert loaded["alice"].items == {}
            history = await worker.cold.window(
                "alice", EventType.VIEW, T0 - 86_400_000, T0 + 1, 100
            )
            assert history == []
            assert await eraser.erasures() == {"alice": T0 + 10_000}
            # bob is untouched.
            assert await worker.cold_items("bob", EventType.VIEW) == [("p9", T0)]
            assert await feeds.write(served_feed("alice", sequence=60))
            assert (await feeds.read("alice")) == served_feed("alice", sequence=60)
        finally:
            await worker.close()

    asyncio.run(scenario())


def served_feed(user: str, sequence: int) -> Feed:
    return Feed(user, sequence, ["p1"], ["trending"], "popularity", False, "test", T0, T0)


def _hot_keys(settings: Settings, user: str) -> dict[str, object]:
    """Every key of the user's in Redis, by name: last-k, version, features (their feed
    is checked apart: an erasure leaves a marker in its place)."""
    prefix = settings.redis_key_prefix
    names = [hot_key(prefix, user, t) for t in (EventType.VIEW, EventType.CLICK, EventType.ORDER)]
    names += [version_key(prefix, user), user_features_key(prefix, user)]
    client = redis.Redis.from_url(settings.redis_url, **redis_options(settings))
    try:
        return {name: client.type(name).decode() for name in names if client.exists(name)}
    finally:
        client.close()


def test_signals_forget_erases_a_user_through_the_running_worker_and_nothing_brings_them_back(
    session_settings: Settings,
    isolated_env: dict[str, str],
    worker: Callable[..., Any],
    tmp_path: Path,
) -> None:
    import os  # noqa: PLC0415

    settings = session_settings.model_copy(update={"features_enabled": True})
    env = {**os.environ, **isolated_env, **SESSION_ENV, "SIGNALS_FEATURES_ENABLED": "true"}
    env["SIGNALS_WORKER_METRICS_PORT"] = "0"
    now = int(time.time() * 1000)
    first = [
        shopper_event("carol", EventType.VIEW, "p1", now - 60_000, 1),
        shopper_event("carol", EventType.ORDER, "p2", now - 59_000, 2),
        shopper_event("dave", EventType.VIEW, "p3", now - 60_000, 3),
    ]
    with worker(env) as running:
        send_events(settings, first)
        wait_for(
            lambda: len(_hot_keys(settings, "carol")) >= 3,
            timeout_s=60,
            what="the worker to apply carol's events (last-k, version, features)",
            on_fail=lambda: running.log_text()[-3000:],
        )
        # Her session ends (2 s gap): she is flushed to the cold tier; then she is back.
        wait_for(
            lambda: bool(
                cql_execute(settings, "SELECT user_id FROM lastk_by_user WHERE user_id = 'carol'")
            ),
            timeout_s=60,
            what="carol's session to be flushed to the cold tier",
            on_fail=lambda: running.log_text()[-3000:],
        )
        send_events(settings, [shopper_event("carol", EventType.CLICK, "p4", now - 30_000, 4)])
        wait_for(
            lambda: (
                hot_key(settings.redis_key_prefix, "carol", EventType.CLICK)
                in _hot_keys(settings, "carol")
            ),
            timeout_s=60,
            what="carol's return to reach the hot tier",
        )
        # A served feed of hers, as the ranker would have written it.
        client = redis.Redis.from_url(settings.redis_url)
        client.set(feed_key(settings.redis_key_prefix, "carol"), b"1|{}")
        replay_before = tmp_path / "before"
        replayed = run_signals(
            env,
            "replay",
            "--start",
            str(now - 120_000),
            "--end",
            str(now + 1),
            "--to-parquet",
            str(replay_before),
            "--no-progress",
        )
        assert replayed.returncode == 0, replayed.stderr

        forgot = run_signals(env, "forget", "carol", "--wait", "60")
        assert forgot.returncode == 0, forgot.stderr + running.log_text()[-3000:]
        assert "carol: erased" in forgot.stdout
        assert _hot_keys(settings, "carol") == {}
        marker = client.get(feed_key(settings.redis_key_prefix, "carol"))
        assert isinstance(marker, bytes) and marker.endswith(b"|"), marker  # no feed, fenced
        active = [
            active_key(settings.redis_key_prefix, p) for p in range(settings.events_partitions)
        ]
        assert not any(client.zscore(key, "carol") for key in active)
        for table in ("lastk_by_user",):
            assert cql_execute(settings, f"SELECT * FROM {table} WHERE user_id = 'carol'") == []
        today = now // 86_400_000
        for kind in ("view", "order", "click"):
            for day in (today - 1, today, today + 1):
                rows = cql_execute(
                    settings,
                    "SELECT items FROM history_by_user WHERE user_id = 'carol' "
                    "AND event_type = %s AND day = %s",
                    [kind, day],
                )
                assert rows == [], (kind, day)
        assert _hot_keys(settings, "dave"), "dave is untouched"

        # A late event of hers (timed before the erasure) still in the topic, then a new
        # one: only the new one is kept.
        erased_ms = cql_execute(settings, "SELECT erased_ms FROM erasures WHERE user_id = 'carol'")
        erased_at = erased_ms[0].erased_ms
        send_events(
            settings,
            [
                shopper_event("carol", EventType.VIEW, "late", erased_at - 1000, 5),
                shopper_event("carol", EventType.VIEW, "new", erased_at + 1000, 6),
            ],
        )
        view_key = hot_key(settings.redis_key_prefix, "carol", EventType.VIEW)
        wait_for(
            lambda: client.zscore(view_key, "new") is not None,
            timeout_s=60,
            what="carol's new event after the erasure",
        )
        assert client.zrange(view_key, 0, -1) == [b"new"]
        client.close()

        # A replay of the whole range now leaves out everything of hers up to the erasure.
        replay_after = tmp_path / "after"
        replayed = run_signals(
            env,
            "replay",
            "--start",
            str(now - 120_000),
            "--end",
            str(erased_at + 60_000),
            "--to-parquet",
            str(replay_after),
            "--no-progress",
            "--json",
        )
        assert replayed.returncode == 0, replayed.stderr
        import pandas as pd  # noqa: PLC0415

        after = pd.read_parquet(replay_after)
        carol = after[after["user_id"] == "carol"]
        assert carol["product_id"].tolist() == ["new"]
        assert "dave" in set(after["user_id"])
        before = pd.read_parquet(replay_before)
        assert len(before[before["user_id"] == "carol"]) == 3  # the analyst's older copy

    # A backfill from the older copy does not bring her back to the cold tier either.
    backfilled = run_signals(env, "backfill", "--from-parquet", str(replay_before), "--no-progress")
    assert backfilled.returncode == 0, backfilled.stderr
    # Only her new history may be there (the worker may have flushed it when it stopped).
    rows = cql_execute(settings, "SELECT items FROM lastk_by_user WHERE user_id = 'carol'")
    stored = [product for row in rows for product, _at in json.loads(row.items)]
    assert set(stored) <= {"new"}, stored
