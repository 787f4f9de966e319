"""The feature store's layout and the worker's write plan (`schemas.feature_layout`,
`schemas.features.plan_features`, `advance_user`, `shared_writes`): where each event goes,
lateness decided as an in-order replay of each partition, fences that make a batch read
again change nothing, hash tags no id can break, and the session rule's boundary."""

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
    user_features_key,
)
from schemas.features import (
    PRODUCT_WINDOWS,
    WINDOWS,
    FeatureConfig,
    FeaturePlan,
    OfflineFeatures,
    SharedWrite,
    UserStep,
    advance_user,
    decode_user_share,
    encode_user_share,
    plan_features,
    shared_writes,
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


def steps_of(plan: FeaturePlan) -> dict[str, UserStep]:
    return {user: advance_user(None, events, CONFIG) for user, events in plan.users.items()}


def groups_of(writes: list[SharedWrite]) -> dict[tuple[WriteKind, str], list[list[object]]]:
    return {(w.kind, w.entity): w.groups for w in writes}


def test_where_each_event_goes() -> None:
    plan = plan_features(
        [
            event(1, EventType.VIEW, T0),
            event(2, EventType.WISHLIST, T0 + 5),  # not counted per product, but weighted
            event(3, EventType.REMOVE_FROM_CART, T0, category=None),  # no weight, no category
            event(4, EventType.APP_OPEN, T0 + 9, product=None, category=None),
        ],
        {},
        CONFIG,
    )
    assert [e[1] for e in plan.users["u1"]] == [1, 2, 3, 4]
    writes = shared_writes(steps_of(plan), plan, "ix", CONFIG)
    tiles = [f"n:view:5m:{T0 // 300_000}", 1, f"n:view:1h:{T0 // 3_600_000}", 1]
    groups = groups_of(writes)
    # [partition, lowest offset, highest offset, newest time, watermark, deltas]
    assert groups[WriteKind.PRODUCT, "p1"] == [[0, 1, 1, T0, -1, tiles]]
    assert groups[WriteKind.GLOBAL, ""] == [[0, 1, 4, T0 + 9, T0 + 9, tiles]]
    [[partition, lowest, highest, _t, _w, adds]] = groups[WriteKind.TRENDING, "c1"]
    assert (partition, lowest, highest, adds[0]) == (0, 1, 2, "p1")
    assert set(groups) == {
        (WriteKind.PRODUCT, "p1"),
        (WriteKind.GLOBAL, ""),
        (WriteKind.TRENDING, "c1"),
    }
    assert writes[-1].kind is WriteKind.GLOBAL  # the watermarks' hash goes last


def test_a_duplicate_moves_the_watermark_and_nothing_else() -> None:
    first = CountedEvent("u1", EventType.VIEW, T0, "p1", "c1", 0, 10, "id-1")
    again = first._replace(offset=11, event_time_ms=T0 + 50)  # an app's retry: same id
    plan = plan_features([first, again], {}, CONFIG)
    steps = steps_of(plan)
    assert steps["u1"].duplicates == ["0:11"]
    share = steps["u1"].share
    assert share is not None and share.fence == 11 and share.newest_ms == T0
    groups = groups_of(shared_writes(steps, plan, "ix", CONFIG))
    assert groups[WriteKind.PRODUCT, "p1"][0][1:3] == [10, 10]
    assert groups[WriteKind.GLOBAL, ""][0][1:5] == [10, 11, T0, T0 + 50]


def test_a_batch_read_again_changes_no_user_and_is_cut_at_the_shared_fences() -> None:
    events = [event(5 + i, EventType.CLICK, T0 + i) for i in range(4)]
    plan = plan_features(events, {}, CONFIG)
    stored = steps_of(plan)["u1"].share
    assert stored is not None
    value = encode_user_share(stored)
    assert decode_user_share(value) == stored
    again = advance_user(decode_user_share(value), plan.users["u1"], CONFIG)
    assert again.share is None  # every event at or below the fence: nothing to write
    # A product written up to offset 6 before a crash: its group again, from 7 on.
    cut = shared_writes({"u1": again}, plan, "ix", CONFIG, {(WriteKind.PRODUCT, "p1", 0): 6})
    assert [(w.kind, w.groups[0][1:3]) for w in cut] == [(WriteKind.PRODUCT, [7, 8])]


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
        plan = plan_features(log[position : position + cut], watermarks, CONFIG)
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
    plan = plan_features([*first, *first, event(153, EventType.CLICK, T0 + 9)], {}, CONFIG)
    assert [e[1] for e in plan.users["u1"]] == [150, 151, 152, 153]
