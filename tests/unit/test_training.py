"""The ranker's model: ranking features, the point-in-time training set, the metrics, the
training job's files and the model slot's hot swap (no servers: files and LightGBM)."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from jobs.catalog import generated_items
from jobs.traffic import TrafficParams, simulate
from jobs.traffic.catalog import Catalog
from jobs.train import NotEnoughData, TrainOptions, auc, ndcg, run_training, train_model
from jobs.training_set import TrainingSet, training_set
from schemas.catalog import CatalogItem
from schemas.events import Event, EventType
from schemas.feature_layout import CountedEvent
from schemas.features import FeatureConfig, OfflineFeatures, ProductFeatures, UserFeatures
from sinks.model_store import ModelStore, model_version
from streams.logic.ranking import (
    FEATURES,
    UNRANKED,
    ProductContext,
    ProductTable,
    feature_matrix,
    feature_row,
    product_context,
    user_context,
)
from streams.models import ModelRefused, ModelSlot, load_model

CONFIG = FeatureConfig()
PARAMS = TrafficParams(seed=11, users=300, products=400, categories=12, rate=5.0)
START = 1_764_547_200_000
T = START + 3_600_000


@pytest.fixture(scope="module")
def log() -> list[Event]:
    return list(itertools.islice(simulate(PARAMS, START), 12_000))


@pytest.fixture(scope="module")
def catalog() -> dict[str, CatalogItem]:
    return {item.product_id: item for item in generated_items(Catalog.build(PARAMS))}


@pytest.fixture(scope="module")
def data(log: list[Event], catalog: dict[str, CatalogItem]) -> TrainingSet:
    return training_set(log, catalog, CONFIG)


def empty_user(at_ms: int) -> UserFeatures:
    counts = {w: dict.fromkeys(EventType, 0) for w in ("5m", "1h", "24h")}
    return UserFeatures("u1", at_ms, counts, 0, None, 0, 0, [])


def product(at_ms: int, views: int = 0) -> ProductFeatures:
    kinds = (EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART, EventType.ORDER)
    counts = {w: dict.fromkeys(kinds, 0) for w in ("1h", "24h")}
    counts["24h"][EventType.VIEW] = views
    return ProductFeatures("p1", at_ms, counts, 0.05, 0.01)


def test_a_row_has_every_feature_and_the_pair_features_follow_the_user() -> None:
    log2 = {
        "c1": 10.0 + T / CONFIG.affinity_half_life_ms,
        "c2": 9.0 + T / CONFIG.affinity_half_life_ms,
    }
    user = user_context(empty_user(T), log2, {EventType.WISHLIST: ["p1"]}, "hi", CONFIG)
    every = product(T, views=1000).counts
    item = CatalogItem("p1", "c2", 40_000, "s1", "ta", T - 86_400_000 * 3)
    row = dict(
        zip(
            FEATURES,
            feature_row(user, "p1", product_context(product(T, 10), every, item), 4),
            strict=True,
        )
    )
    assert len(row) == len(FEATURES)
    assert row["position"] == 4
    assert row["c_affinity"] == pytest.approx(2**9)
    assert row["c_affinity_share"] == pytest.approx(1 / 3)
    assert row["c_affinity_rank"] == 1  # c1 is the top category
    assert row["language_match"] == 0.0
    assert row["seen_wishlist"] == 1.0 and row["seen_view"] == 0.0
    assert row["p_view_share_24h"] == pytest.approx(10_000 * 10 / 1000)
    assert row["p_age_days"] == pytest.approx(3.0)
    assert math.isnan(row["u_minutes_since_previous"])  # no event of theirs yet

    unknown = product_context(product(T), every, None, category="c9")
    row = dict(
        zip(
            FEATURES,
            feature_row(user_context(empty_user(T), {}, {}, None, CONFIG), "p9", unknown),
            strict=True,
        )
    )
    assert row["c_affinity_rank"] == UNRANKED and row["c_affinity"] == 0.0
    assert math.isnan(row["language_match"]) and math.isnan(row["p_log_price"])


def test_no_row_sees_an_event_at_or_after_its_impression(
    log: list[Event], catalog: dict[str, CatalogItem], data: TrainingSet
) -> None:
    """The point-in-time property: cutting the log at C leaves every row of an impression
    before C unchanged (only labels, which look ahead by definition, may change)."""
    times = sorted(data.times)
    for cut in (times[len(times) // 5], times[len(times) // 2], times[-10]):
        before = training_set(
            [e for e in log if e.event_time_ms < cut], catalog, CONFIG, probes=False
        )
        full = {
            (u, p, t, tuple(map(repr, row)))
            for u, p, t, row in zip(data.users, data.products, data.times, data.rows, strict=True)
            if t < cut
        }
        cut_rows = {
            (u, p, t, tuple(map(repr, row)))
            for u, p, t, row in zip(
                before.users, before.products, before.times, before.rows, strict=True
            )
        }
        assert cut_rows == full


def test_rows_match_the_offline_definition_just_before_the_impression(
    log: list[Event], data: TrainingSet
) -> None:
    ordered = sorted(log, key=lambda e: e.event_time_ms)
    counted = [
        CountedEvent(
            e.user_id, e.event_type, e.event_time_ms, e.product_id, e.category_id, 0, i, e.event_id
        )
        for i, e in enumerate(ordered)
    ]
    offline = OfflineFeatures(counted, CONFIG)
    column = {name: index for index, name in enumerate(FEATURES)}
    checked = 0
    for index in range(0, len(data.rows), 97):
        user, at = data.users[index], data.times[index]
        if any(e.event_time_ms == at and e.user_id != user for e in ordered):
            continue  # another event at the same instant: the row leaves it out, at - 1 too
        expected = offline.user(user, at - 1)
        row = data.rows[index]
        assert row[column["u_views_1h"]] == expected.counts["1h"][EventType.VIEW]
        assert row[column["u_clicks_24h"]] == expected.counts["24h"][EventType.CLICK]
        assert row[column["u_categories_24h"]] == expected.distinct_categories_24h
        product_now = offline.product(data.products[index], at - 1)
        assert row[column["p_click_rate_24h"]] == pytest.approx(product_now.click_rate_24h)
        checked += 1
    assert checked > 50


def test_labels_are_clicks_later_in_the_same_session(catalog: dict[str, CatalogItem]) -> None:
    item = next(iter(catalog.values()))
    p, c = item.product_id, item.category_id

    def event(n: int, kind: EventType, at: int) -> Event:
        order = ("o1", 1) if kind is EventType.ORDER else (None, None)
        return Event(f"e{n}", "u1", kind, at, p, c, 100, 0, "android", "en", *order)

    gap = CONFIG.session_gap_ms
    events = [
        event(1, EventType.VIEW, START),
        event(2, EventType.CLICK, START + 1000),
        event(3, EventType.ORDER, START + 2000),
        event(4, EventType.VIEW, START + 3000),  # viewed again, never clicked after
        event(5, EventType.VIEW, START + 3000 + gap + 1),  # next session
        event(6, EventType.VIEW, START + 3000 + 3 * gap),  # another session...
        event(7, EventType.CLICK, START + 3000 + 5 * gap),  # ...clicked only in a later one
    ]
    result = training_set(events, catalog, CONFIG)
    assert result.labels == [2, 0, 0, 0]
    assert len(set(result.sessions)) == 3


def test_auc_and_ndcg_on_known_cases() -> None:
    labels = np.array([0, 0, 1, 1])
    assert auc(labels, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auc(labels, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert auc(labels, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    groups = np.array([1, 1, 2, 2])
    perfect, counted = ndcg(np.array([0, 1, 2, 0]), np.array([0.0, 1.0, 1.0, 0.0]), groups)
    assert (perfect, counted) == (1.0, 2)
    worst, _ = ndcg(np.array([0, 1, 0, 0]), np.array([1.0, 0.0, 0.5, 0.5]), groups)
    assert worst == pytest.approx(1 / math.log2(3))


def test_training_writes_a_versioned_model_report_and_plot_and_publishes_it(
    tmp_path: Path, log: list[Event], catalog: dict[str, CatalogItem]
) -> None:
    store = ModelStore(tmp_path)
    trained = run_training(
        log, catalog, CONFIG, store, options=TrainOptions(rounds=60), progress=False
    )
    assert store.current() == trained.version
    files = store.files(trained.version)
    assert files.model.stat().st_size > 0
    assert files.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(files.report.read_text())
    assert report["features"] == list(FEATURES)
    test = report["test"]
    assert 0.5 < test["auc"]["model"] <= 1.0
    assert test["auc"]["model"] > test["auc"]["popularity"]
    assert 0 < test["ndcg@20"]["model"] <= 1.0
    assert 0 < report["candidate_recall"]["recall"] <= 1.0
    assert report["data"]["rows"]["test"] > 0
    assert load_model(store, trained.version).version == trained.version


def test_too_little_data_is_refused_with_the_reason(catalog: dict[str, CatalogItem]) -> None:
    few = list(itertools.islice(simulate(PARAMS, START), 200))
    with pytest.raises(NotEnoughData, match="impressions"):
        train_model(training_set(few, catalog, CONFIG), TrainOptions())


def test_the_slot_swaps_models_and_keeps_serving_through_a_bad_one(
    tmp_path: Path, data: TrainingSet
) -> None:
    store = ModelStore(tmp_path)
    first, _ = train_model(data, TrainOptions(rounds=10), progress=False)
    second, _ = train_model(data, TrainOptions(rounds=20), progress=False)
    store.write("v1", first.model_to_string(), "{}")
    store.write("v2", second.model_to_string(), "{}")
    store.write("broken", "tree\nnot a model at all\n", "{}")
    store.publish("v1")
    slot = ModelSlot(store, poll_s=0.0)

    async def scenario() -> list[str | None]:
        seen = []
        await slot.load_now()
        seen.append(slot.version)
        store.publish("broken")
        await slot.load_now()
        seen.append(slot.version)
        store.publish("v2")
        await slot.load_now()
        seen.append(slot.version)
        return seen

    assert asyncio.run(scenario()) == ["v1", "v1", "v2"]
    assert slot.refused == 1 and slot.swaps == 2
    row = [[0.0] * len(FEATURES)]
    assert slot.model is not None and 0 <= float(slot.model.score(row)[0]) <= 1


def test_the_compiled_model_gives_lightgbms_predictions(tmp_path: Path, data: TrainingSet) -> None:
    store = ModelStore(tmp_path)
    booster, _ = train_model(data, TrainOptions(rounds=40), progress=False)
    store.write("v1", booster.model_to_string(), "{}")
    store.publish("v1")
    slot = ModelSlot(store, poll_s=0.0)

    async def load() -> None:
        await slot.load_now()
        await slot.compiled()

    asyncio.run(load())
    assert slot.model is not None and slot.model.compiled is not None
    rows = np.asarray(data.rows[:3000])
    np.testing.assert_allclose(slot.model.score(rows), booster.predict(rows), rtol=0, atol=1e-12)


def test_a_model_trained_on_other_features_is_refused(tmp_path: Path, data: TrainingSet) -> None:
    rows = np.asarray(data.rows)[:, :5]
    booster = lgb.train(
        {"objective": "binary", "verbose": -1},
        lgb.Dataset(rows, label=np.asarray(data.labels) > 0),
        3,
    )
    store = ModelStore(tmp_path)
    store.write("old", booster.model_to_string(), "{}")
    with pytest.raises(ModelRefused, match="other features"):
        load_model(store, "old")
    with pytest.raises(ModelRefused, match="missing"):
        load_model(store, "absent")


def test_the_rankers_matrix_equals_the_row_definition(catalog: dict[str, CatalogItem]) -> None:
    log2 = {"c0000": 3.0 + T / CONFIG.affinity_half_life_ms}
    for language in ("hi", None):
        user = user_context(empty_user(T), log2, {EventType.VIEW: ["p0000001"]}, language, CONFIG)
        every = product(T, views=500).counts
        products = [
            (pid, product_context(product(T, views=n), every, catalog.get(pid), category="c0000"))
            for n, pid in enumerate([*list(catalog)[:40], "p-not-listed"])
        ]
        # Not listed and of no known category: no affinity, unranked, no language.
        products.append(("p-nowhere", product_context(product(T), every, None)))
        table = ProductTable.of([p for p, _ in products], [c for _, c in products])
        # Candidates are any subset of the table's rows, in any order.
        for ids in ([p for p, _ in products], [p for p, _ in products][::-3], []):
            contexts = dict(products)
            expected = np.array([feature_row(user, pid, contexts[pid]) for pid in ids])
            np.testing.assert_array_equal(
                feature_matrix(user, ids, table), expected.reshape(len(ids), len(FEATURES))
            )


def test_a_table_kept_across_rounds_gives_the_rows_a_fresh_one_would(
    catalog: dict[str, CatalogItem],
) -> None:
    """The ranker keeps one `ProductTable` across rounds: products it has rows for are
    re-used, rows whose context changed are rewritten, and it grows past its capacity."""
    user = user_context(empty_user(T), {"c0000": 4.0}, {}, "hi", CONFIG)
    every = product(T, views=500).counts
    ids = list(catalog)[:30]

    def contexts(views: int) -> list[ProductContext]:
        return [
            product_context(product(T, views=views + n), every, catalog[p])
            for n, p in enumerate(ids)
        ]

    kept = ProductTable(capacity=4)
    first = contexts(1)
    kept.put(ids[:10], first[:10])
    later = contexts(7)  # the same products read again, and new ones
    kept.put(ids[5:], [*first[5:10], *later[10:]])
    kept.put(ids[:5], later[:5])
    now = [*later[:5], *first[5:10], *later[10:]]
    assert len(kept) == len(ids)
    for chosen in (ids, ids[::-4], ids[3:9]):
        np.testing.assert_array_equal(
            feature_matrix(user, chosen, kept),
            feature_matrix(user, chosen, ProductTable.of(ids, now)),
        )


def test_the_model_folder_publishes_only_written_versions(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    assert store.current() is None and store.versions() == []
    with pytest.raises(FileNotFoundError, match="no model file for version v9"):
        store.publish("v9")
    version = model_version("tree text", at_s=1_796_140_800)
    assert version == "20261201T160000Z-" + version.rsplit("-", 1)[1] and len(version) == 25
    store.write(version, "tree text", "{}")
    store.write("20250101T000000Z-00000000", "older", "{}")
    store.publish(version)
    assert store.current() == version
    assert store.versions() == ["20250101T000000Z-00000000", version]  # oldest first
    assert not list((tmp_path / "models").glob(".*.tmp"))  # written by rename, none left
