"""The cold-tier layout: day and window buckets, blobs, history blocks, write timestamps."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.cold_layout import (
    DAY_MS,
    day_of,
    decode_items,
    encode_items,
    group_by_day,
    history_blocks,
    newest_time_ms,
    packed,
    unstored_items,
    window_days,
    window_items,
)


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def test_day_is_whole_utc_days_since_epoch() -> None:
    assert day_of(0) == 0
    assert day_of(DAY_MS - 1) == 0
    assert day_of(DAY_MS) == 1
    assert day_of(ms("2024-10-04T00:00:00")) == 20000
    assert day_of(ms("2024-10-04T23:59:59.999")) == 20000
    assert day_of(ms("2024-10-05T00:00:00")) == 20001


def test_window_days_are_newest_first_and_inclusive() -> None:
    start, end = ms("2024-10-02T12:00:00"), ms("2024-10-04T01:00:00")
    assert window_days(start, end) == [20000, 19999, 19998]
    assert window_days(end, end) == [20000]
    assert window_days(end, start) == []


def test_a_window_wider_than_the_limit_is_refused() -> None:
    end = ms("2024-10-04T01:00:00")
    assert len(window_days(end - 2 * DAY_MS, end, max_days=3)) == 3
    with pytest.raises(ValueError, match="at most 3 days"):
        window_days(end - 3 * DAY_MS, end, max_days=3)
    with pytest.raises(ValueError):
        window_days(0, end, max_days=400)


def test_blob_is_compact_json_pairs_newest_first() -> None:
    items = [("p42", 1_728_000_000_123), ("p7", 1_727_999_990_000)]
    blob = encode_items(items)
    assert blob == b'[["p42",1728000000123],["p7",1727999990000]]'
    assert json.loads(blob) == [["p42", 1_728_000_000_123], ["p7", 1_727_999_990_000]]
    assert decode_items(blob) == items


def test_blob_keeps_non_ascii_ids_as_utf8() -> None:
    items = [("प्रोडक्ट-1", 5)]
    assert decode_items(encode_items(items)) == items
    assert "प्रोडक्ट".encode() in encode_items(items)


def test_missing_or_empty_blob_is_an_empty_list() -> None:
    assert decode_items(None) == []
    assert decode_items(b"") == []
    assert decode_items(encode_items([])) == []


def test_a_blob_that_is_not_an_array_is_rejected() -> None:
    with pytest.raises(ValueError, match="JSON array"):
        decode_items(b'{"p1": 5}')


@given(
    st.lists(
        st.tuples(st.text(min_size=1, max_size=20), st.integers(0, 2**53)),
        max_size=60,
    )
)
def test_blob_round_trips(items: list[tuple[str, int]]) -> None:
    assert decode_items(encode_items(items)) == items


def test_newest_time_ignores_the_order_of_the_list() -> None:
    assert newest_time_ms([("p1", 10), ("p2", 30)]) == 30


def test_group_by_day_keeps_order_within_a_day() -> None:
    items = [("a", DAY_MS + 5), ("b", DAY_MS + 1), ("c", 7), ("d", 3)]
    assert group_by_day(items) == {
        1: [("a", DAY_MS + 5), ("b", DAY_MS + 1)],
        0: [("c", 7), ("d", 3)],
    }


def test_history_blocks_are_one_per_day_newest_first() -> None:
    items = [
        ("b", ms("2024-10-04T09:00")),
        ("a", ms("2024-10-03T23:59")),
        ("c", ms("2024-10-04T10:00")),
    ]
    blocks = history_blocks(items)
    assert [b.day for b in blocks] == [
        day_of(ms("2024-10-04T10:00")),
        day_of(ms("2024-10-03T00:00")),
    ]
    assert [decode_items(b.items_blob) for b in blocks] == [
        [("c", ms("2024-10-04T10:00")), ("b", ms("2024-10-04T09:00"))],
        [("a", ms("2024-10-03T23:59"))],
    ]
    assert [b.newest_ms for b in blocks] == [ms("2024-10-04T10:00"), ms("2024-10-03T23:59")]
    assert history_blocks([]) == []


def test_a_block_id_follows_the_content_only() -> None:
    items = [("p2", 2_000), ("p1", 1_000)]
    (block,) = history_blocks(items)
    (again,) = history_blocks(list(reversed(items)))  # same items, any order: the same row
    (other,) = history_blocks([("p2", 2_000), ("p3", 1_000)])  # same times, other items
    assert again == block
    assert other.newest_ms == block.newest_ms and other.block_id != block.block_id
    assert -(2**63) <= block.block_id < 2**63  # a CQL bigint


item_lists = st.lists(
    st.tuples(st.sampled_from(["p1", "p2", "p3", "é"]), st.integers(0, 4 * DAY_MS)), max_size=30
)


@given(item_lists, item_lists, st.integers(0, 4 * DAY_MS), st.integers(0, 4 * DAY_MS))
def test_a_window_over_blocks_is_every_item_in_range_once_newest_first(
    first: list[tuple[str, int]], second: list[tuple[str, int]], start: int, end: int
) -> None:
    # Two flushes whose blocks may overlap (a retried flush), read back day by day.
    blocks = [b for items in (first, second) for b in history_blocks(items)]
    for block in blocks:  # what lets a read skip blocks by day and by newest time
        times = [at for _product, at in decode_items(block.items_blob)]
        assert {day_of(at) for at in times} == {block.day}
        assert max(times) == block.newest_ms
    blobs = [b.items_blob for b in blocks]
    expected = sorted(
        {i for i in first + second if start <= i[1] <= end}, key=lambda i: (-i[1], i[0])
    )
    assert window_items(blobs, start, end) == expected


def test_unstored_items_skip_exactly_what_the_stored_snapshot_held() -> None:
    stored = [("p3", 300), ("p2", 200), ("p1", 100)]
    now = [
        ("p9", 900),  # new
        ("p2", 250),  # seen again: a new time is a new history row
        ("p3", 300),  # from the stored snapshot: already history
        ("p7", 150),  # a late event, older than the stored newest: still new
        ("p1", 100),  # stored
    ]
    assert unstored_items(now, stored) == [("p9", 900), ("p2", 250), ("p7", 150)]


def test_without_a_stored_snapshot_every_item_is_new() -> None:
    items = [("p2", 20), ("p1", 10)]
    assert unstored_items(items, None) == items
    assert unstored_items(items, []) == items
    assert unstored_items([], [("p1", 10)]) == []


@given(
    st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 5)), max_size=12),
    st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 5)), max_size=12),
)
def test_unstored_items_never_lose_an_item_the_snapshot_did_not_hold(
    items: list[tuple[str, int]], stored: list[tuple[str, int]]
) -> None:
    new = unstored_items(items, stored)
    assert set(new) | (set(items) & set(stored)) == set(items)
    assert not set(new) & set(stored)
    assert list(new) == [item for item in items if item in set(new)]  # order kept


def test_packed_never_splits_a_group_and_respects_the_cost() -> None:
    groups = [(4, ["a1", "a2"]), (4, ["b1"]), (3, ["c1", "c2", "c3"]), (12, ["big"]), (1, ["d"])]
    assert list(packed(groups, 8)) == [["a1", "a2", "b1"], ["c1", "c2", "c3"], ["big"], ["d"]]
    assert list(packed(groups, 100)) == [["a1", "a2", "b1", "c1", "c2", "c3", "big", "d"]]
    assert list(packed([], 8)) == []
