"""Drift (`streams.logic.drift`): the population stability index and its bins, the live
sample, and the whole method on generated worlds: traffic of the same process stays
below the threshold, traffic whose sessions are three times longer is flagged, on the
features that moved."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from jobs.catalog import generated_items
from jobs.traffic import TrafficParams, simulate
from jobs.traffic.catalog import Catalog
from jobs.training_set import PointInTimeReplay
from schemas.features import FeatureConfig
from streams.logic.drift import (
    SHARE_FLOOR,
    Distribution,
    DriftMonitor,
    DriftReport,
    LiveSample,
    compare,
    distribution_of,
    psi,
    reference_of,
    shares_in,
)
from streams.logic.ranking import FEATURES

RNG = np.random.default_rng(5)


def test_a_value_on_an_edge_falls_in_the_lower_bin_and_nan_counts_as_missing() -> None:
    shares, missing = shares_in(np.array([1.0, 1.5, 2.0, 3.0, np.nan]), [1.0, 2.0])
    assert shares == [0.2, 0.4, 0.2] and missing == pytest.approx(0.2)


def test_deciles_of_a_continuous_feature_and_fewer_bins_for_a_discrete_one() -> None:
    continuous = distribution_of(RNG.normal(size=10_000))
    assert len(continuous.edges) == 9
    assert all(share == pytest.approx(0.1, abs=0.001) for share in continuous.shares)
    flags = distribution_of(np.array([0.0] * 700 + [1.0] * 300))
    assert flags.edges == (0.0, 1.0) and flags.shares == pytest.approx((0.7, 0.3, 0.0))
    empty = distribution_of(np.array([np.nan, np.nan]))
    assert empty.edges == () and empty.missing == 1.0
    assert Distribution.from_json(continuous.to_json()) == continuous


def test_psi_is_zero_for_the_same_population_and_grows_with_the_shift() -> None:
    reference = distribution_of(RNG.normal(size=20_000))
    same = psi(reference, RNG.normal(size=20_000))
    small = psi(reference, RNG.normal(0.2, size=20_000))
    large = psi(reference, RNG.normal(1.0, size=20_000))
    assert same < 0.01 < small < 0.1 < 0.25 < large
    # A bin the live values never reach is floored, not infinite.
    flags = distribution_of(np.array([0.0, 1.0] * 50))
    lopsided = psi(flags, np.zeros(100))
    expected = (0.5 - SHARE_FLOOR) * np.log(0.5 / SHARE_FLOOR) + (1 - 0.5) * np.log(1 / 0.5)
    assert lopsided == pytest.approx(expected)
    assert np.isfinite(psi(flags, np.full(10, np.nan)))


def test_retraining_is_due_only_past_the_threshold_over_enough_rows() -> None:
    names = ["a", "b"]
    rows = RNG.normal(size=(2_000, 2))
    reference = reference_of(rows, rows[:, 0], names)
    shifted = rows + np.array([0.0, 2.0])
    report = compare(reference, shifted, rows[:, 0], names, model="m", at_ms=1, threshold=0.25)
    assert report.retrain_due and report.worst[0][0] == "b"
    assert not compare(reference, rows, rows[:, 0], names, model="m", at_ms=1).retrain_due
    few = compare(reference, shifted[:100], rows[:100, 0], names, model="m", at_ms=1)
    assert not few.enough_rows and not few.retrain_due
    assert DriftReport.from_json(report.to_json()).psi == pytest.approx(report.psi, abs=1e-6)


def test_the_live_sample_is_a_ring_and_restarts_with_a_new_model() -> None:
    sample = LiveSample(columns=2, capacity=5, per_call=2)
    for value in range(4):
        sample.add(np.full((10, 2), float(value)), np.full(10, float(value)))
    rows, scores = sample.arrays()
    assert len(rows) == 5 and sorted(scores.tolist()) == [1.0, 2.0, 2.0, 3.0, 3.0]
    monitor = DriftMonitor(columns=2)
    monitor.add("v1", np.ones((3, 2)), np.ones(3))
    monitor.add("v2", np.zeros((3, 2)), np.zeros(3))
    assert monitor.model == "v2" and monitor.sample.size == 3
    assert monitor.compare(None, ["a", "b"], 1) is None  # a model without a reference


PARAMS = TrafficParams(seed=3, users=3000, products=1500, categories=30, rate=20.0)


def replay_rows(params: TrafficParams, catalog: Catalog) -> tuple[np.ndarray, np.ndarray]:
    items = {item.product_id: item for item in generated_items(catalog)}
    events = itertools.islice(simulate(params, 1_700_000_000_000, catalog), 40_000)
    result = PointInTimeReplay(items, FeatureConfig()).run(events)
    return np.asarray(result.serving_rows), np.asarray(result.snapshot_rows)


def test_the_same_process_is_stable_and_longer_sessions_are_flagged() -> None:
    """One catalog; the reference from one seed's replay, live rows from another seed's
    (the same process) and from sessions three times longer, for both live samples."""
    catalog = Catalog.build(PARAMS)
    reference_rows = replay_rows(PARAMS, catalog)
    same = replay_rows(dataclasses.replace(PARAMS, seed=4), catalog)
    longer = replay_rows(dataclasses.replace(PARAMS, seed=4, mean_views_per_session=36.0), catalog)
    for sample in (0, 1):  # the ranker's (triggers), signals drift's (hot users)
        rows = reference_rows[sample]
        reference = reference_of(rows, np.zeros(len(rows)), FEATURES)

        def report(live: np.ndarray, reference: dict = reference) -> DriftReport:
            return compare(reference, live, np.zeros(len(live)), FEATURES, model="m", at_ms=0)

        stable = report(same[sample])
        assert stable.enough_rows and not stable.retrain_due, stable.worst[:3]
        shifted = report(longer[sample])
        assert shifted.retrain_due
        moved = {name for name, value in shifted.worst if value > 0.25}
        assert {"u_views_1h", "u_views_24h"} <= moved, shifted.worst[:6]
