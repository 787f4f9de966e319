"""Weighted sampling in O(log n) per draw: normalised cumulative weights plus `bisect`.

Normalising makes the last entry exactly 1.0, so `bisect_right(cumulative, rng.random())`
always lands on a valid index (random() < 1.0) and zero-weight items are never drawn.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import lru_cache


def cumulative(weights: Sequence[float]) -> list[float]:
    """Cumulative weights scaled to end at exactly 1.0 (for `bisect_right` with random())."""
    running = list(itertools.accumulate(weights))
    total = running[-1] if running else 0.0
    if total <= 0:
        raise ValueError("weights must have a positive sum")
    return [value / total for value in running]


def zipf_weights(count: int, exponent: float) -> list[float]:
    """Weight 1 / (rank + 1) ** exponent for ranks 0..count-1: heavy-tailed popularity."""
    return [(rank + 1) ** -exponent for rank in range(count)]


@lru_cache(maxsize=16)
def zipf_cumulative(count: int, exponent: float) -> list[float]:
    """Shared, cached Zipf table (users and categories are drawn from these per session).

    Callers must not mutate the returned list.
    """
    return cumulative(zipf_weights(count, exponent))
