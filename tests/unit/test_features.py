"""The feature arithmetic of `schemas.features`: the window definition (boundaries
included), tiles that always agree with it, decayed sums that ignore order, smoothing."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.feature_layout import too_late
from schemas.features import (
    EMPTY_DECAYED,
    FIVE_MINUTES,
    MINUTE_MS,
    ONE_DAY,
    ONE_HOUR,
    WINDOWS,
    Window,
    decayed_add,
    decayed_value,
    smoothed_rate,
    window_count,
    window_total,
)

T0 = 1_760_000_000_000


def test_boundaries_an_event_at_t_counts_and_the_start_is_rounded_down_to_a_tile() -> None:
    window = FIVE_MINUTES
    at = 10 * MINUTE_MS + 30_000  # mid-tile
    assert window.start_at(at) == 5 * MINUTE_MS  # floor((at - 5 min) / 1 min) * 1 min
    assert window.covers(at, at)  # exactly T
    assert not window.covers(at + 1, at)  # after T
    assert window.covers(5 * MINUTE_MS, at)  # exactly the rounded start
    assert not window.covers(5 * MINUTE_MS - 1, at)
    assert list(window.tiles_at(at)) == [5, 6, 7, 8, 9, 10]
    # On a tile boundary the window is exactly W long, both ends included.
    assert window.start_at(10 * MINUTE_MS) == 5 * MINUTE_MS


def test_a_tile_width_must_divide_the_window() -> None:
    with pytest.raises(ValueError, match="divide"):
        Window("bad", 5 * MINUTE_MS, 7 * MINUTE_MS)


@settings(max_examples=300)
@given(
    st.sampled_from(WINDOWS),
    st.lists(st.integers(0, 3 * 86_400_000), max_size=60),
    st.integers(0, 3 * 86_400_000),
)
def test_stored_tiles_give_exactly_the_definition(
    window: Window, times: list[int], at: int
) -> None:
    """Online (sum of tiles) equals offline (filter the events) at any T, given only
    events at or before T were stored (the stored later ones are the one documented gap)."""
    stored = [t for t in times if t <= at]
    tiles: dict[int, int] = {}
    for t in stored:
        tiles[window.tile_of(t)] = tiles.get(window.tile_of(t), 0) + 1
    assert window_total(window, tiles, at) == window_count(window, times, at)


@given(st.sampled_from(WINDOWS), st.integers(0, 10**13), st.integers(0, 10**7))
def test_tiles_older_than_the_oldest_needed_are_never_read_again(
    window: Window, newest: int, later: int
) -> None:
    assert window.tiles_at(newest + later).start >= window.oldest_tile_needed(newest)


def test_lateness() -> None:
    assert not too_late(1_000, None, 0)  # nothing seen yet
    assert not too_late(900, 1_000, 100)  # exactly at the allowed lateness
    assert too_late(899, 1_000, 100)
    assert not too_late(2_000, 1_000, 0)  # ahead of the watermark


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(st.floats(0.1, 10), st.integers(T0, T0 + 30 * 86_400_000)),
        min_size=1,
        max_size=40,
    ),
    st.randoms(use_true_random=False),
)
def test_a_decayed_sum_is_the_same_in_any_order_and_matches_the_formula(
    events: list[tuple[float, int]], rnd: random.Random
) -> None:
    half_life = 7 * 86_400_000.0
    at = T0 + 31 * 86_400_000
    forward = EMPTY_DECAYED
    for weight, t in events:
        forward = decayed_add(forward, weight, t, half_life)
    shuffled = events[:]
    rnd.shuffle(shuffled)
    backward = EMPTY_DECAYED
    for weight, t in shuffled:
        backward = decayed_add(backward, weight, t, half_life)
    expected = sum(w * 2 ** (-(at - t) / half_life) for w, t in events)
    assert math.isclose(decayed_value(forward, at, half_life), expected, rel_tol=1e-9)
    assert math.isclose(decayed_value(backward, at, half_life), expected, rel_tol=1e-9)


def test_a_decayed_sum_halves_every_half_life_and_stays_small_far_from_the_epoch() -> None:
    half_life = 86_400_000.0
    score = decayed_add(EMPTY_DECAYED, 3.0, T0, half_life)
    assert decayed_value(score, T0, half_life) == pytest.approx(3.0)
    assert decayed_value(score, T0 + 2 * 86_400_000, half_life) == pytest.approx(0.75)
    assert score < 30_000  # ~ t / h: no overflow however far from 1970
    assert decayed_value(EMPTY_DECAYED, T0, half_life) == 0.0


def test_smoothing_pulls_small_counts_toward_the_prior() -> None:
    assert smoothed_rate(1, 1, 0.05, 20) == pytest.approx(2 / 21)
    assert smoothed_rate(0, 0, 0.05, 20) == pytest.approx(0.05)
    assert smoothed_rate(5_000, 10_000, 0.05, 20) == pytest.approx(0.4991, abs=1e-4)
    with pytest.raises(ValueError):
        smoothed_rate(1, 1, 1.5, 20)


def test_the_windows_tile_widths() -> None:
    assert [(w.name, w.length_ms // w.tile_ms + 1) for w in (FIVE_MINUTES, ONE_HOUR, ONE_DAY)] == [
        ("5m", 6),
        ("1h", 13),
        ("24h", 25),
    ]
