import gc
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.cold_layout import decode_items, encode_items
from schemas.events import PRODUCT_EVENT_TYPES, Event, EventType
from schemas.hot_layout import (
    Interaction,
    UserLastK,
    approximate_bytes,
    hot_key,
    interaction_of,
    merge_items,
    plan_writes,
    reference_last_k,
)

T0 = 1_760_000_000_000

K = {t: 3 for t in EventType if t is not EventType.APP_OPEN}


def test_key_layout_keeps_a_user_on_one_cluster_slot() -> None:
    assert hot_key("ix", "u42", EventType.ADD_TO_CART) == "ix:{u42}:add_to_cart"
    assert hot_key("ix", "u42", "view") == "ix:{u42}:view"


def test_app_open_is_not_an_interaction() -> None:
    assert interaction_of(Event("e", "u", EventType.APP_OPEN, 5)) is None
    assert interaction_of(Event("e", "u", EventType.CLICK, 5, product_id="p")) == Interaction(
        "u", EventType.CLICK, "p", 5
    )


def test_plan_groups_a_batch_into_one_write_per_set_keeping_the_newest_time() -> None:
    batch = [
        Interaction("u1", EventType.VIEW, "p1", 10),
        Interaction("u1", EventType.VIEW, "p1", 30),
        Interaction("u1", EventType.VIEW, "p1", 20),  # late: must not move p1 back to 20
        Interaction("u1", EventType.CLICK, "p1", 31),
        Interaction("u2", EventType.VIEW, "p9", 5),
    ]
    writes = {w.key: w for w in plan_writes(batch, "ix", K)}
    assert set(writes) == {"ix:{u1}:view", "ix:{u1}:click", "ix:{u2}:view"}
    assert writes["ix:{u1}:view"].members == {"p1": 30}
    assert writes["ix:{u1}:view"].keep == 3


def test_plan_is_the_same_whatever_the_order_of_the_batch() -> None:
    batch = [Interaction("u1", EventType.VIEW, f"p{i % 4}", i) for i in range(20)]
    forward = plan_writes(batch, "ix", K)
    backward = plan_writes(list(reversed(batch)), "ix", K)
    assert [(w.key, w.members) for w in forward] == [(w.key, w.members) for w in backward]


@given(
    st.lists(st.tuples(st.sampled_from(["p1", "p2", "p3", "p4"]), st.integers(1, 50)), max_size=40),
    st.integers(1, 4),
    st.integers(0, 40),
)
def test_merging_in_any_split_equals_the_reference(
    items: list[tuple[str, int]], keep: int, split: int
) -> None:
    """Flush + re-hydrate is a merge of two parts; any split must give the same answer."""
    events = [
        Event(f"e{i}", "u1", EventType.CLICK, T0 + t, product_id=p)
        for i, (p, t) in enumerate(items)
    ]
    reference = reference_last_k(events, {EventType.CLICK: keep}).get(("u1", EventType.CLICK), [])
    rows = [(p, T0 + t) for p, t in items]
    first = merge_items(rows[:split], (), keep)
    assert merge_items(first, rows[split:], keep) == reference
    assert merge_items(rows[split:], first, keep) == reference
    assert len(reference) == min(keep, len({p for p, _ in items}))


@pytest.mark.parametrize(
    ("per_type", "product_chars", "types"),
    [(7, 8, 4), (100, 8, 6), (50, 12, 6), (10, 40, 3), (1, 8, 1)],
)
def test_approximate_bytes_is_what_a_snapshot_really_costs(
    per_type: int, product_chars: int, types: int
) -> None:
    """Measured with tracemalloc on snapshots as the cold store decodes them: the worker's
    cache bound (`SIGNALS_STORED_CACHE_MB`) holds within 10%."""
    chosen = sorted(PRODUCT_EVENT_TYPES)[:types]

    def snapshot(number: int) -> UserLastK:
        items = [(f"p{j:0{product_chars - 1}d}", 1_760_000_000_000 + j) for j in range(per_type)]
        return UserLastK(
            f"user-{number:08d}",
            {t: decode_items(encode_items(items)) for t in chosen},
            version=1_796_116_968_291_000 + number,
        )

    gc.collect()
    tracemalloc.start()
    try:
        snapshots = [snapshot(number) for number in range(200)]
        used, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    measured = used / len(snapshots)
    assert abs(approximate_bytes(snapshots[0]) - measured) <= 0.1 * measured
