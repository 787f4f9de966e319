"""The feature store's layout and the worker's write plan (`schemas.feature_layout`,
`schemas.features.plan_features`): where each event goes, lateness decided as an in-order
replay of each partition, hash tags no id can break, and the session rule's boundary."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from schemas.events import EventType
from schemas.feature_layout import (
    PRODUCT_TILE_WIDTHS,
    TILE_WIDTHS,
    USER_TILE_WIDTHS,
    CountedEvent,
    WriteKind,
    trending_fence_key,
    trending_key,
    user_affinity_key,
    user_features_key,
)
from schemas.features import (
    PRODUCT_WINDOWS,
    WINDOWS,
    FeatureConfig,
    OfflineFeatures,
    plan_features,
)
from schemas.hot_layout import hot_key

T0 = 1_760_000_000_000
CONFIG = FeatureConfig(allowed_lateness_ms=60_000, session_gap_ms=600_000)


def test_the_windows_and_the_layout_share_their_tile_widths() -> None:
    assert [w.tile_ms for w in WINDOWS] == [TILE_WIDTHS[n] for n in USER_TILE_WIDTHS]
    assert [w.tile_ms for w in PRODUCT_WINDOWS] == [TILE_WIDTHS[n] for n in PRODUCT_TILE_WIDTHS]


def test_a_users_features_share_the_slot_of_their_last_k() -> None:
    slot = key_slot(hot_key("ix", "u42", EventType.VIEW).encode())
    assert key_slot(user_features_key("ix", "u42").encode()) == slot
    assert key_slot(user_affinity_key("ix", "u42").encode()) == slot


@given(st.text(min_size=1, max_size=12))  # an empty category has no trending keys
def test_no_id_splits_a_categorys_two_keys_over_slots(category: str) -> None:
    assert key_slot(trending_key("ix", category).encode()) == key_slot(
        trending_fence_key("ix", category).encode()
    )


def event(
    offset: int,
    event_type: EventType,
    at: int,
    product: str | None = "p1",
    category: str | None = "c1",
    user: str = "u1",
    partition: int = 0,
) -> CountedEvent:
    return CountedEvent(user, event_type, at, product, category, partition, offset)


def test_where_each_event_goes() -> None:
    plan = plan_features(
        [
            event(1, EventType.VIEW, T0),
            event(2, EventType.WISHLIST, T0),  # not counted per product, but weighted
            event(3, EventType.REMOVE_FROM_CART, T0, category=None),  # no weight, no category
            event(4, EventType.APP_OPEN, T0, product=None, category=None),
        ],
        "ix",
        {},
        CONFIG,
    )
    by_kind = {(w.kind, w.entity): [e[1] for e in w.events] for w in plan.writes}
    assert by_kind == {
        (WriteKind.USER, "u1"): [1, 2, 3, 4],
        (WriteKind.GLOBAL, ""): [1, 2, 3, 4],
        (WriteKind.PRODUCT, "p1"): [1],
        (WriteKind.TRENDING, "c1"): [1, 2],
    }


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.integers(-200_000, 200_000)), max_size=60),
    st.lists(st.integers(1, 10), max_size=12),
)
def test_lateness_in_batches_is_the_in_order_replays(
    draws: list[tuple[int, int]], cuts: list[int]
) -> None:
    """However the log is cut into batches, the plan marks as too late exactly what the
    offline computation (one pass over the log) does."""
    offsets = {0: 0, 1: 0}
    log = []
    for partition, shift in draws:
        offsets[partition] += 1
        log.append(event(offsets[partition], EventType.VIEW, T0 + shift, partition=partition))
    watermarks: dict[int, int] = {}
    late_online = 0
    position = 0
    for cut in [*cuts, len(log)]:
        plan = plan_features(log[position : position + cut], "ix", watermarks, CONFIG)
        watermarks = plan.watermarks
        late_online += plan.too_late
        position += cut
        if position >= len(log):
            break
    offline = OfflineFeatures(log, CONFIG)
    assert late_online == offline.user("u1", T0 + 10**9).late_events


def test_the_session_rule_an_event_exactly_the_gap_after_joins() -> None:
    gap = CONFIG.session_gap_ms
    log = [
        event(1, EventType.VIEW, T0),
        event(2, EventType.VIEW, T0 + gap),  # exactly the gap: the same session
        event(3, EventType.VIEW, T0 + 2 * gap + 1),  # more than the gap: a new one
        event(4, EventType.VIEW, T0 + gap - 5),  # late: joins the current session
    ]
    offline = OfflineFeatures(log, CONFIG)
    assert offline.user("u1", T0 + gap).session_events == 3  # 1, 2 and the late 4
    assert offline.user("u1", T0 + 2 * gap + 1).session_events == 2
    assert offline.user("u1", T0 + 3 * gap + 1).session_events == 2  # exactly the gap quiet
    assert offline.user("u1", T0 + 3 * gap + 2).session_events == 0  # over


def test_a_record_read_twice_within_a_batch_is_planned_once() -> None:
    """A fetch repeated after a rebalance can sit in one batch beside the first: the
    fences only guard against earlier calls, so the plan itself keeps one copy."""
    first = [event(150 + i, EventType.VIEW, T0 + i) for i in range(3)]
    plan = plan_features([*first, *first, event(153, EventType.CLICK, T0 + 9)], "ix", {}, CONFIG)
    for write in plan.writes:
        offsets = [e[1] for e in write.events]
        assert offsets == sorted(set(offsets)), write.kind
    assert plan.writes[-1].kind is WriteKind.GLOBAL  # the watermarks' hash goes last
