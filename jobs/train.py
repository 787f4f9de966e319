"""The ranker's training job: event log in, a versioned LightGBM model, its report and
plot out (`sinks.model_store`), published for running rankers to pick up.

Steps: build the point-in-time training set (`jobs.training_set`); split it by time
(the oldest rows train, the next ones decide early stopping, the newest are the test);
train a binary LightGBM classifier of "clicked later in this session"; evaluate on the
test rows against the popularity ranking the ranker falls back to, on the same rows.

Why a binary objective rather than lambdarank: the impressions come from a feed this
model did not choose, most sessions hold one click or none (a ranking objective learns
nothing from a session without one), and the ranker wants a click probability, which is
comparable across users and triggers and could be blended with a purchase model; NDCG is
still what the evaluation reports.

Metrics on the test split:
- AUC of "clicked" over every test impression (model vs popularity);
- NDCG@20 per session with at least one click, relevance 1 for a click and 2 for an
  order, averaged over sessions (model, popularity, and a seeded random order);
- candidate recall: of the clicks in test-period sessions of returning users, the share
  whose product was among the candidates generated at that session's start.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from jobs.training_set import Probe, TrainingSet, training_set
from schemas.catalog import CatalogItem
from schemas.events import Event
from schemas.features import FeatureConfig
from sinks.model_store import ModelFiles, ModelStore, model_version
from streams.logic.drift import HOT_USERS, MIN_LIVE_ROWS, TRIGGERS, reference_of
from streams.logic.ranking import FEATURES

NDCG_AT = 20


@dataclass(frozen=True, slots=True)
class TrainOptions:
    valid_share: float = 0.15
    test_share: float = 0.15
    rounds: int = 400
    early_stopping: int = 30
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 100
    seed: int = 7
    threads: int = 2

    def lightgbm_params(self) -> dict[str, Any]:
        return {
            "objective": "binary",
            "metric": ["binary_logloss", "auc"],
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": 0.9,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "lambda_l2": 1.0,
            "seed": self.seed,
            "deterministic": True,
            "num_threads": self.threads,
            "verbose": -1,
        }


class NotEnoughData(ValueError):
    """The log is too small to split and train on (the message says what is missing)."""


@dataclass(frozen=True, slots=True)
class Trained:
    version: str
    files: ModelFiles
    report: dict[str, Any]
    published: bool


# --- metrics (pure) ---------------------------------------------------------------------


def auc(labels: NDArray[Any], scores: NDArray[Any]) -> float:
    """Area under the ROC curve (ties count a half), NaN without both classes."""
    positives = labels > 0
    count_pos = int(positives.sum())
    count_neg = len(labels) - count_pos
    if count_pos == 0 or count_neg == 0:
        return math.nan
    _values, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average_ranks = ends - (counts - 1) / 2.0  # 1-based average rank of each distinct score
    ranks = average_ranks[inverse]
    return float(
        (ranks[positives].sum() - count_pos * (count_pos + 1) / 2) / (count_pos * count_neg)
    )


def ndcg(
    labels: NDArray[Any], scores: NDArray[Any], groups: NDArray[Any], k: int = NDCG_AT
) -> tuple[float, int]:
    """Mean NDCG@k over the groups with a positive label, gain 2**label - 1; ties in the
    score keep the rows' order. Returns (mean, groups counted)."""
    order = np.lexsort((np.arange(len(scores)), -scores, groups))
    sorted_groups, sorted_labels = groups[order], labels[order]
    boundaries = np.flatnonzero(np.diff(sorted_groups)) + 1
    total, counted = 0.0, 0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for relevance in np.split(sorted_labels, boundaries):
        if not relevance.any():
            continue
        gains = (2.0 ** relevance[:k] - 1.0) * discounts[: min(k, len(relevance))]
        ideal = np.sort(relevance)[::-1][:k]
        best = ((2.0**ideal - 1.0) * discounts[: len(ideal)]).sum()
        total += gains.sum() / best
        counted += 1
    return (total / counted if counted else math.nan), counted


def candidate_recall(probes: Iterable[Probe], from_ms: int) -> dict[str, float | int]:
    """Share of the clicks of sessions starting at or after `from_ms` whose product the
    candidates generated at the session's start contained."""
    clicks = found = sessions = 0
    for probe in probes:
        if probe.at_ms < from_ms or not probe.clicked:
            continue
        sessions += 1
        clicks += len(probe.clicked)
        found += len(probe.clicked & probe.candidates)
    return {
        "recall": found / clicks if clicks else math.nan,
        "clicks": clicks,
        "sessions": sessions,
    }


def time_split(times: NDArray[Any], valid_share: float, test_share: float) -> tuple[int, int]:
    """The two boundary times: rows before the first train, rows from the second are the
    test; a boundary never splits an instant."""
    ordered = np.sort(times)
    valid_from = int(ordered[int(len(ordered) * (1 - valid_share - test_share))])
    test_from = int(ordered[int(len(ordered) * (1 - test_share))])
    return valid_from, test_from


# --- the job ----------------------------------------------------------------------------


def train_model(
    data: TrainingSet, options: TrainOptions, *, progress: bool = True
) -> tuple[lgb.Booster, dict[str, Any]]:
    """Train on the time split of `data` and evaluate; returns the booster and report."""
    rows = np.asarray(data.rows, dtype=np.float64)
    labels = np.asarray(data.labels, dtype=np.int64)
    times = np.asarray(data.times, dtype=np.int64)
    sessions = np.asarray(data.sessions, dtype=np.int64)
    baseline = np.asarray(data.popularity, dtype=np.float64)
    if len(rows) < 1000 or int((labels > 0).sum()) < 50:
        raise NotEnoughData(
            f"{len(rows)} impressions with {int((labels > 0).sum())} clicks: "
            "at least 1000 impressions and 50 clicks are needed"
        )
    valid_from, test_from = time_split(times, options.valid_share, options.test_share)
    train_rows, valid_rows, test_rows = (
        times < valid_from,
        (times >= valid_from) & (times < test_from),
        times >= test_from,
    )
    for name, mask in (("train", train_rows), ("validation", valid_rows), ("test", test_rows)):
        if not (labels[mask] > 0).any() or (labels[mask] > 0).all():
            raise NotEnoughData(f"the {name} split needs clicked and unclicked impressions")
    names = list(FEATURES)
    train_set = lgb.Dataset(
        rows[train_rows], label=(labels[train_rows] > 0), feature_name=names, free_raw_data=False
    )
    valid_set = lgb.Dataset(rows[valid_rows], label=(labels[valid_rows] > 0), reference=train_set)
    bar = tqdm(total=options.rounds, unit="round", desc="boosting", disable=not progress)

    def advance(_env: Any) -> None:
        bar.update(1)

    began = time.perf_counter()
    try:
        booster = lgb.train(
            options.lightgbm_params(),
            train_set,
            num_boost_round=options.rounds,
            valid_sets=[valid_set],
            valid_names=["validation"],
            callbacks=[
                lgb.early_stopping(options.early_stopping, first_metric_only=True, verbose=False),
                advance,
            ],
        )
    finally:
        bar.close()
    seconds = time.perf_counter() - began
    # Scored as the ranker serves: every candidate at position 0 (the model must not win
    # by knowing where the old feed put a product; see streams.logic.ranking).
    test_x, test_y = rows[test_rows].copy(), labels[test_rows]
    test_x[:, FEATURES.index("position")] = 0.0
    predicted = booster.predict(test_x, num_iteration=booster.best_iteration)
    predicted = np.asarray(predicted, dtype=np.float64)
    rng = np.random.default_rng(options.seed)
    random_scores = rng.random(len(test_y))
    test_groups = sessions[test_rows]
    model_ndcg, groups = ndcg(test_y, predicted, test_groups)
    popular_ndcg, _ = ndcg(test_y, baseline[test_rows], test_groups)
    random_ndcg, _ = ndcg(test_y, random_scores, test_groups)
    clipped = np.clip(predicted, 1e-7, 1 - 1e-7)
    clicked = test_y > 0
    report = {
        "objective": "binary: clicked later in the same session",
        "features": names,
        "params": options.lightgbm_params(),
        "options": asdict(options),
        "best_iteration": booster.best_iteration,
        "train_seconds": round(seconds, 2),
        "data": {
            "events": data.events,
            "duplicates_skipped": data.duplicates,
            "impressions": len(rows),
            "clicked": int(clicked.sum()) + int((labels[~test_rows] > 0).sum()),
            "ordered": int((labels == 2).sum()),
            "sessions": len(np.unique(sessions)),
            "first_ms": int(times.min()),
            "last_ms": int(times.max()),
            "validation_from_ms": valid_from,
            "test_from_ms": test_from,
            "rows": {
                "train": int(train_rows.sum()),
                "validation": int(valid_rows.sum()),
                "test": int(test_rows.sum()),
            },
        },
        "test": {
            "auc": {
                "model": auc(test_y, predicted),
                "popularity": auc(test_y, baseline[test_rows]),
            },
            "ndcg@20": {
                "model": model_ndcg,
                "popularity": popular_ndcg,
                "random": random_ndcg,
                "sessions": groups,
            },
            "logloss": float(
                -np.mean(clicked * np.log(clipped) + (~clicked) * np.log(1 - clipped))
            ),
            "click_rate": float(clicked.mean()),
        },
        "candidate_recall": candidate_recall(data.probes, test_from),
        "importance_gain": dict(
            zip(
                names,
                (float(v) for v in booster.feature_importance(importance_type="gain")),
                strict=True,
            )
        ),
    }
    report["test"]["ndcg@20"]["model_vs_popularity"] = (  # type: ignore[index]
        model_ndcg / popular_ndcg if popular_ndcg and not math.isnan(popular_ndcg) else math.nan
    )
    report["drift_reference"] = drift_reference(booster, data, test_x)
    return booster, report


def drift_reference(
    booster: lgb.Booster, data: TrainingSet, test_rows: NDArray[np.float64]
) -> dict[str, Any]:
    """Each feature's and the score's distribution over the rows the ranker will see
    (`streams.logic.drift`), for the two live samples: `triggers` (the ranker's, at the
    trigger rule's instants) and `hot_users` (`signals drift`'s, hot users as they are).
    The test impressions at position 0 stand in for either when the log gave too few."""
    populations = {
        TRIGGERS: (data.serving_rows, "candidates at the trigger rule's instants, position 0"),
        HOT_USERS: (data.snapshot_rows, "candidates of hot users at snapshot instants"),
    }
    saved = {}
    for name, (listed, described) in populations.items():
        rows = np.asarray(listed, dtype=np.float64).reshape(-1, len(FEATURES))
        population = described
        if len(rows) < MIN_LIVE_ROWS:
            rows, population = test_rows, "test impressions, position 0"
        scores = np.asarray(
            booster.predict(rows, num_iteration=booster.best_iteration), dtype=np.float64
        )
        reference = reference_of(rows, scores, FEATURES)
        saved[name] = {
            "population": population,
            "rows": len(rows),
            "distributions": {feature: d.to_json() for feature, d in reference.items()},
        }
    return saved


def plot_report(report: Mapping[str, Any], path: str) -> None:
    """Feature importance, and the model against the baseline per metric, as a PNG."""
    import matplotlib  # noqa: PLC0415  (only the training job draws)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    gains = sorted(report["importance_gain"].items(), key=lambda pair: pair[1])
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 6), width_ratios=(1.4, 1))
    left.barh([name for name, _ in gains], [value for _, value in gains], color="#4c72b0")
    left.set_title("Feature importance (total gain)")
    left.tick_params(axis="y", labelsize=8)
    test = report["test"]
    metrics = ["AUC", "NDCG@20"]
    model = [test["auc"]["model"], test["ndcg@20"]["model"]]
    popular = [test["auc"]["popularity"], test["ndcg@20"]["popularity"]]
    places = np.arange(len(metrics))
    right.bar(places - 0.2, model, 0.4, label="LightGBM", color="#4c72b0")
    right.bar(places + 0.2, popular, 0.4, label="popularity", color="#dd8452")
    for x, value in [
        *zip(places - 0.2, model, strict=True),
        *zip(places + 0.2, popular, strict=True),
    ]:
        right.annotate(f"{value:.3f}", (x, value), ha="center", va="bottom", fontsize=9)
    right.set_xticks(places, metrics)
    right.set_ylim(0, 1)
    right.set_title(f"Held-out test split ({report['data']['rows']['test']:,} impressions)")
    right.legend()
    figure.suptitle(f"Ranker model {report.get('version', '')}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def run_training(
    events: Iterable[Event],
    catalog: Mapping[str, CatalogItem],
    config: FeatureConfig,
    store: ModelStore,
    *,
    options: TrainOptions | None = None,
    publish: bool = True,
    total_events: int | None = None,
    source: str = "",
    progress: bool | None = None,
) -> Trained:
    """The whole job: training set, model, report, plot, and (by default) publishing."""
    options = options or TrainOptions()
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=total_events, unit="event", desc="replay", disable=not show) as bar:
        data = training_set(events, catalog, config, progress=bar.update)
    booster, report = train_model(data, options, progress=show)
    model_text = booster.model_to_string(num_iteration=booster.best_iteration)
    version = model_version(model_text)
    report = {"version": version, "source": source, **report}
    files = store.write(version, model_text, json.dumps(report, indent=2, default=_json_number))
    plot_report(report, str(files.plot))
    if publish:
        store.publish(version)
    return Trained(version, files, report, publish)


def _json_number(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


def summary_lines(trained: Trained) -> list[str]:
    """What `signals train` prints."""
    report = trained.report
    data, test = report["data"], report["test"]
    recall = report["candidate_recall"]
    lines = [
        f"model {trained.version}: {data['impressions']:,} impressions from "
        f"{data['events']:,} events, {data['rows']['train']:,} train / "
        f"{data['rows']['validation']:,} validation / {data['rows']['test']:,} test rows, "
        f"{report['best_iteration']} trees",
        f"  test AUC      {test['auc']['model']:.3f}   "
        f"(popularity {test['auc']['popularity']:.3f})",
        f"  test NDCG@20  {test['ndcg@20']['model']:.3f}   (popularity "
        f"{test['ndcg@20']['popularity']:.3f}, random {test['ndcg@20']['random']:.3f}; "
        f"{test['ndcg@20']['model_vs_popularity']:.2f}x popularity over "
        f"{test['ndcg@20']['sessions']:,} sessions)",
        f"  candidate recall {recall['recall']:.3f} of {recall['clicks']:,} next-session clicks",
        "  drift references: "
        + ", ".join(
            f"{name} {saved['rows']:,} rows" for name, saved in report["drift_reference"].items()
        ),
        f"  wrote {trained.files.model}, {trained.files.report.name}, {trained.files.plot.name}",
    ]
    lines.append(
        "  published: running rankers switch to it within seconds"
        if trained.published
        else "  not published (--no-publish): CURRENT is unchanged"
    )
    return lines
