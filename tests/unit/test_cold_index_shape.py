"""The cold-tier index's shape: sizes, and the same bits whether one user or many."""

from __future__ import annotations

import math
import random

from schemas.hot_layout import COLD_INDEX_BUCKETS, ColdIndexShape


def test_sizes_follow_the_bloom_filter_formulas() -> None:
    shape = ColdIndexShape.sized(expected_users=20_000_000, false_positive_rate=0.01)
    total = shape.bucket_bits * COLD_INDEX_BUCKETS
    assert math.isclose(total / 20_000_000, 9.585, rel_tol=0.01)  # bits per user at 1%
    assert shape.hashes == 7
    assert shape.key("ix", 5) == f"ix:coldidx:m{shape.bucket_bits}k7:{{c5}}"


def test_many_users_at_once_get_exactly_the_bits_of_each_alone() -> None:
    shape = ColdIndexShape.sized(expected_users=1_000_000, false_positive_rate=0.001)
    rng = random.Random(4)
    users = [f"u{rng.getrandbits(40)}" for _ in range(2000)] + ["", "ü-ser", "x" * 128]
    buckets, offsets = shape.bits_of_many(users)
    for row, user in enumerate(users):
        bucket, bits = shape.bits(user)
        assert int(buckets[row]) == bucket
        assert offsets[row].tolist() == bits
        assert all(1 <= bit <= shape.bucket_bits for bit in bits)  # bit 0 is reserved
    counts = [int((buckets == b).sum()) for b in range(COLD_INDEX_BUCKETS)]
    assert min(counts) > 0.5 * len(users) / COLD_INDEX_BUCKETS  # spread over the buckets


def test_the_false_positive_rate_is_about_what_it_was_sized_for() -> None:
    shape = ColdIndexShape.sized(expected_users=20_000, false_positive_rate=0.01)
    stored: set[tuple[int, int]] = set()
    for i in range(20_000):
        bucket, bits = shape.bits(f"stored-{i}")
        stored.update((bucket, bit) for bit in bits)
    hits = sum(
        all((bucket, bit) in stored for bit in bits)
        for bucket, bits in (shape.bits(f"never-{i}") for i in range(20_000))
    )
    assert 0.004 < hits / 20_000 < 0.02
