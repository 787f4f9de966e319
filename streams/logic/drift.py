"""Drift of the ranker's inputs and outputs: what moved since the model was trained, and
whether it is time to retrain (pure: arrays in, figures out).

The training job saves, with each model, the distribution of every ranking feature and
of the model's score over *serving rows*: candidates generated at session starts during
the replay, at feed position 0, as the ranker builds them (`jobs.training_set`), so a
live sample and the reference describe the same population. A distribution is the
shares of the reference values in `DRIFT_BINS` quantile bins (fewer when a feature has
fewer distinct values), plus the share of missing values.

The comparison is the population stability index per feature,

    PSI = sum over bins of (live share - reference share) * ln(live share / reference share)

with each share floored at `SHARE_FLOOR` (an empty bin would make it infinite). The usual
reading: below 0.1 stable, 0.1 to 0.25 moderate, above 0.25 a real shift. Retraining is
due when any feature's or the score's PSI exceeds the threshold (a setting,
`SIGNALS_DRIFT_THRESHOLD`, 0.25 by default), and the sample has at least
`MIN_LIVE_ROWS` rows (a few hundred rows make a noisy PSI).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

DRIFT_BINS = 10
SHARE_FLOOR = 1e-4
MIN_LIVE_ROWS = 500
DEFAULT_THRESHOLD = 0.25
SCORE = "score"  # the model's output, beside the features
#: The two live samples, each with its reference: the ranker's (a few rows of every
#: trigger it scores) and `signals drift`'s (hot users as they are now).
TRIGGERS = "triggers"
HOT_USERS = "hot_users"
References = dict[str, dict[str, "Distribution"]]


@dataclass(frozen=True)
class Distribution:
    """Shares of values per bin: bin i holds edges[i-1] < value <= edges[i] (the first
    from minus infinity, the last to plus infinity), then the share of missing values."""

    edges: tuple[float, ...]
    shares: tuple[float, ...]  # len(edges) + 1
    missing: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "shares": list(self.shares), "missing": self.missing}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Distribution:
        return cls(
            tuple(float(e) for e in data["edges"]),
            tuple(float(s) for s in data["shares"]),
            float(data.get("missing", 0.0)),
        )


def shares_in(values: NDArray[np.float64], edges: Sequence[float]) -> tuple[list[float], float]:
    """The shares of `values` in the bins of `edges`, and the share missing (NaN)."""
    total = len(values)
    if total == 0:
        return [0.0] * (len(edges) + 1), 0.0
    finite = values[~np.isnan(values)]
    bins = np.searchsorted(np.asarray(edges, dtype=np.float64), finite, side="left")
    counts = np.bincount(bins, minlength=len(edges) + 1)
    return (counts / total).tolist(), float(total - len(finite)) / total


def distribution_of(values: NDArray[np.float64], bins: int = DRIFT_BINS) -> Distribution:
    """The reference distribution: quantile edges of the values (distinct ones only)."""
    finite = values[~np.isnan(values)]
    if len(finite) == 0:
        edges: tuple[float, ...] = ()
    else:
        # Values that occur (no interpolation): a 0/1 flag gets the edges 0 and 1.
        quantiles = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1], method="lower")
        edges = tuple(sorted({float(q) for q in quantiles}))
    shares, missing = shares_in(values, edges)
    return Distribution(edges, tuple(shares), missing)


def psi(reference: Distribution, values: NDArray[np.float64]) -> float:
    """The population stability index of `values` against the reference."""
    live, live_missing = shares_in(values, reference.edges)
    total = 0.0
    for expected, actual in (
        *zip(reference.shares, live, strict=True),
        (reference.missing, live_missing),
    ):
        if expected == 0.0 and actual == 0.0:
            continue
        e, a = max(expected, SHARE_FLOOR), max(actual, SHARE_FLOOR)
        total += (a - e) * math.log(a / e)
    return total


@dataclass(frozen=True)
class DriftReport:
    """One comparison of a live sample with a model's reference."""

    at_ms: int
    model: str
    rows: int
    threshold: float
    psi: dict[str, float] = field(default_factory=dict)  # feature (and SCORE) -> PSI

    @property
    def enough_rows(self) -> bool:
        return self.rows >= MIN_LIVE_ROWS

    @property
    def worst(self) -> list[tuple[str, float]]:
        return sorted(self.psi.items(), key=lambda pair: (-pair[1], pair[0]))

    @property
    def retrain_due(self) -> bool:
        return self.enough_rows and any(v > self.threshold for v in self.psi.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "at_ms": self.at_ms,
            "model": self.model,
            "rows": self.rows,
            "threshold": self.threshold,
            "retrain_due": self.retrain_due,
            "enough_rows": self.enough_rows,
            "psi": {name: round(value, 6) for name, value in self.worst},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DriftReport:
        return cls(
            int(data["at_ms"]),
            str(data["model"]),
            int(data["rows"]),
            float(data["threshold"]),
            {str(k): float(v) for k, v in data["psi"].items()},
        )


def reference_of(
    rows: NDArray[np.float64], scores: NDArray[np.float64], names: Sequence[str]
) -> dict[str, Distribution]:
    """Every feature's distribution over the rows (columns in `names` order), and the
    score's."""
    reference = {name: distribution_of(rows[:, j]) for j, name in enumerate(names)}
    reference[SCORE] = distribution_of(scores)
    return reference


def compare(
    reference: Mapping[str, Distribution],
    rows: NDArray[np.float64],
    scores: NDArray[np.float64],
    names: Sequence[str],
    *,
    model: str,
    at_ms: int,
    threshold: float = DEFAULT_THRESHOLD,
) -> DriftReport:
    """PSI of each feature (and of the score) of a live sample against the reference;
    features the reference lacks are left out."""
    figures = {
        name: psi(reference[name], rows[:, j]) for j, name in enumerate(names) if name in reference
    }
    if SCORE in reference:
        figures[SCORE] = psi(reference[SCORE], scores)
    return DriftReport(at_ms, model, len(rows), threshold, figures)


class LiveSample:
    """The newest rows the ranker scored (and their scores), a ring of fixed capacity;
    each call adds a few rows of one trigger, picked evenly, so every user counts alike."""

    def __init__(self, columns: int, capacity: int = 20_000, per_call: int = 8) -> None:
        self.rows = np.zeros((capacity, columns), dtype=np.float64)
        self.scores = np.zeros(capacity, dtype=np.float64)
        self.per_call = per_call
        self.size = 0
        self._next = 0
        self._picks: dict[int, NDArray[np.int64]] = {}

    def add(self, matrix: NDArray[np.float64], scores: NDArray[np.float64]) -> None:
        n = len(matrix)
        if n == 0:
            return
        picked = self._picks.get(n)
        if picked is None:  # the same few sizes again and again
            picked = self._picks[n] = np.linspace(0, n - 1, min(self.per_call, n)).astype(np.int64)
        capacity = len(self.rows)
        slots = (self._next + np.arange(len(picked))) % capacity  # one copy, no loop
        self.rows[slots] = matrix[picked]
        self.scores[slots] = scores[picked]
        self._next = int(slots[-1] + 1) % capacity
        self.size = min(self.size + len(picked), capacity)

    def arrays(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        return self.rows[: self.size].copy(), self.scores[: self.size].copy()

    def clear(self) -> None:
        self.size = self._next = 0


class DriftMonitor:
    """The ranker's live sample of the model it serves (cleared when the model changes),
    and the latest comparison with that model's reference."""

    def __init__(self, columns: int, threshold: float = DEFAULT_THRESHOLD) -> None:
        self.sample = LiveSample(columns)
        self.threshold = threshold
        self.model: str | None = None
        self.latest: DriftReport | None = None

    def add(self, model: str, matrix: NDArray[np.float64], scores: NDArray[np.float64]) -> None:
        if model != self.model:
            self.sample.clear()
            self.model = model
            self.latest = None
        self.sample.add(matrix, scores)

    def compare(
        self, reference: Mapping[str, Distribution] | None, names: Sequence[str], at_ms: int
    ) -> DriftReport | None:
        """Compare the sample with the serving model's reference (None: no sample yet, or
        the model has no reference)."""
        if self.model is None or reference is None or self.sample.size == 0:
            return None
        rows, scores = self.sample.arrays()
        self.latest = compare(
            reference, rows, scores, names, model=self.model, at_ms=at_ms, threshold=self.threshold
        )
        return self.latest
