"""`signals drift`: is the serving model still looking at the world it was trained on?

Samples live rows the way the ranker builds them: users drawn at random from the hot
tier (those with a served feed), each scored now by the ranker's own code
(`FeedRanker.score_now`, with the language of that feed) without writing anything;
compares every feature's and the score's distribution with the `hot_users` reference the
training job saved beside the model (hot users of the training log at snapshot instants,
`jobs.training_set`; `streams.logic.drift`), prints the population stability index per
feature, stores the report for the live page (`sinks.drift_store`) and says whether
retraining is due. (The rankers check their own sample, a few rows of every trigger,
against the `triggers` reference continuously; this is the check on demand.)
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from sinks.hot_sessions import random_hot_users
from sinks.model_store import ModelStore
from streams.bootstrap import build_drift_store, build_feed_store, build_ranker, build_redis
from streams.logic.drift import HOT_USERS, MIN_LIVE_ROWS, DriftReport, compare
from streams.logic.ranking import FEATURES
from streams.ranker import FeedRanker
from streams.settings import Settings

#: Users scored at once (each is three reads).
CONCURRENCY = 16


class DriftUnavailable(Exception):
    """No model, no reference, or no live user to sample: the message says which."""


@dataclass(frozen=True)
class DriftCheck:
    report: DriftReport
    users: int
    reference_rows: int
    population: str


async def check_drift(settings: Settings, users: int, threshold: float) -> DriftCheck:
    """Sample `users` live users, compare, store the report; DriftUnavailable otherwise."""
    store = ModelStore(settings.model_dir)
    version = store.current()
    if version is None:
        raise DriftUnavailable(f"no published model in {store.directory} (`signals train`)")
    client = build_redis(settings)
    # Not compiled: LightGBM itself scores a sample fast enough.
    ranker = build_ranker(settings, client, compile_models=False)
    try:
        await ranker.models.load_now()
        model = ranker.models.model
        if model is None:
            raise DriftUnavailable(f"model {version} could not be loaded (see the log)")
        reference = (model.references or {}).get(HOT_USERS)
        if reference is None:
            raise DriftUnavailable(
                f"model {version} has no drift reference (trained before drift was "
                "recorded: train a new one)"
            )
        found = await random_hot_users(
            client, settings.redis_key_prefix, settings.events_partitions, users
        )
        if not found:
            raise DriftUnavailable("no user in the hot tier to sample (is traffic flowing?)")
        rows, scores, sampled = await _live_rows(ranker, settings, found)
        report = compare(
            reference,
            rows,
            scores,
            FEATURES,
            model=model.version,
            at_ms=int(time.time() * 1000),
            threshold=threshold,
        )
        await build_drift_store(settings, client).write(report.to_json(), "signals drift")
        meta = _reference_meta(store, version, HOT_USERS)
        return DriftCheck(report, sampled, *meta)
    finally:
        await ranker.close()


async def _live_rows(
    ranker: FeedRanker, settings: Settings, users: list[str]
) -> tuple[NDArray[np.float64], NDArray[np.float64], int]:
    """Rows and scores of the users that have a served feed with a language (what a
    trigger carries), and how many they were."""
    feeds = build_feed_store(settings)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(user: str) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
        async with gate:
            feed = await feeds.read(user)
            if feed is None or feed.language is None:
                return None
            return await ranker.score_now(user, feed.language)

    try:
        results = [r for r in await asyncio.gather(*(one(u) for u in users)) if r is not None]
    finally:
        await feeds.close()
    if not results:
        raise DriftUnavailable(
            f"none of the {len(users)} sampled users has a served feed with a language "
            "(is the ranker running?)"
        )
    rows = np.vstack([matrix for matrix, _ in results])
    scores = np.concatenate([values for _, values in results])
    return rows, scores, len(results)


def _reference_meta(store: ModelStore, version: str, sample: str) -> tuple[int, str]:
    saved = json.loads(store.files(version).report.read_text())["drift_reference"][sample]
    return int(saved["rows"]), str(saved["population"])


def verdict(psi: float, threshold: float) -> str:
    if psi > threshold:
        return "shifted"
    if psi > 0.1:
        return "moderate"
    return "stable"


def report_lines(check: DriftCheck) -> list[str]:
    """What `signals drift` prints."""
    report = check.report
    lines = [
        f"drift of model {report.model}: {report.rows:,} live rows from {check.users:,} "
        f"random hot-tier users with a served feed against {check.reference_rows:,} training rows "
        f"({check.population})",
        f"  {'feature':<28} {'PSI':>8}",
    ]
    lines += [
        f"  {name:<28} {value:>8.3f}  {verdict(value, report.threshold)}"
        for name, value in report.worst
    ]
    worst_name, worst = report.worst[0] if report.worst else ("-", 0.0)
    if not report.enough_rows:
        lines.append(
            f"not enough live rows for a verdict ({report.rows} < {MIN_LIVE_ROWS}): "
            "sample more users (--users) or wait for traffic"
        )
    elif report.retrain_due:
        lines.append(
            f"retraining is due: {worst_name} moved most (PSI {worst:.2f} > {report.threshold:g})"
        )
    else:
        lines.append(
            f"no retraining due: the largest PSI is {worst:.2f} ({worst_name}), "
            f"at most {report.threshold:g}"
        )
    return lines
