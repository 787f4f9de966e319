"""Candidate merging (`streams.logic.candidates`): channel order, de-duplication, budgets,
cold start in the user's language, nothing ordered, and never an empty list while any
channel has something to offer."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from schemas.events import EventType
from streams.logic.candidates import (
    Candidate,
    CandidateBudget,
    CandidateInputs,
    Channel,
    affinity_shares,
    channel_counts,
    merge_candidates,
    reengagement,
)

TRENDING = [f"t{i}" for i in range(100)]


def test_reengagement_puts_carts_first_and_leaves_out_orders() -> None:
    last_k = {
        EventType.VIEW: ["p1", "p2", "p3"],
        EventType.WISHLIST: ["p2"],
        EventType.ADD_TO_CART: ["p3", "p4"],
        EventType.ORDER: ["p4"],
    }
    assert reengagement(last_k) == ["p3", "p2", "p1"]


def test_affinity_shares_follow_the_affinity_and_add_up() -> None:
    shares = affinity_shares([("c1", 6.0), ("c2", 3.0), ("c3", 1.0), ("c4", 0.0)], 99)
    assert shares == [("c1", 59), ("c2", 30), ("c3", 10)]
    assert affinity_shares([], 10) == [] and affinity_shares([("c1", 1.0)], 0) == []


def test_channels_claim_in_order_and_each_product_once() -> None:
    inputs = CandidateInputs(
        affinities=[("c1", 2.0), ("c2", 1.0)],
        trending_by_category={"c1": ["a1", "a2", "shared"], "c2": ["b1"], "x": ["x1", "x2"]},
        trending_overall=["shared", "t1", "a1"],
        newest={"c1": ["n1"], "": ["n0"]},
        last_k={EventType.VIEW: ["shared", "ordered"], EventType.ORDER: ["ordered"]},
        unexplored=["x"],
    )
    got = merge_candidates(inputs, CandidateBudget(total=50), seed=1)
    assert [(c.product_id, c.channel) for c in got] == [
        ("shared", Channel.REENGAGE),
        ("a1", Channel.AFFINITY),
        ("a2", Channel.AFFINITY),
        ("b1", Channel.AFFINITY),
        ("n1", Channel.NEW),
        ("x1", Channel.EXPLORE),
        ("x2", Channel.EXPLORE),
        ("t1", Channel.TRENDING),
    ]
    assert got[1] == Candidate("a1", Channel.AFFINITY, 0)
    assert channel_counts(got)[Channel.AFFINITY] == 3


def test_a_cold_start_gets_trending_in_their_language_first() -> None:
    inputs = CandidateInputs(
        trending_overall=["en1", "hi1", "en2", "hi2"],
        language="hi",
        product_language={"en1": "en", "hi1": "hi", "en2": "en", "hi2": "hi"},
    )
    got = merge_candidates(inputs, CandidateBudget(total=10))
    assert [(c.product_id, c.channel) for c in got] == [
        ("hi1", Channel.COLD_START),
        ("hi2", Channel.COLD_START),
        ("en1", Channel.TRENDING),  # then the rest, never an empty feed
        ("en2", Channel.TRENDING),
    ]


def test_exploration_replays_with_its_seed() -> None:
    inputs = CandidateInputs(
        trending_by_category={f"x{i}": [f"x{i}-{j}" for j in range(5)] for i in range(10)},
        unexplored=[f"x{i}" for i in range(10)],
        affinities=[("c1", 1.0)],
    )
    budget = CandidateBudget(total=100, explore=6, explore_categories=2)
    first = merge_candidates(inputs, budget, seed=42)
    assert first == merge_candidates(inputs, budget, seed=42)
    explored = [c.product_id for c in first if c.channel is Channel.EXPLORE]
    assert len(explored) == 6 and len({p.split("-")[0] for p in explored}) == 2


products = st.lists(st.sampled_from([f"p{i}" for i in range(40)]), max_size=30)


@given(
    st.lists(st.tuples(st.sampled_from(["c1", "c2", "c3"]), st.floats(0, 10)), max_size=3),
    products,
    products,
    products,
    st.integers(1, 60),
)
def test_the_merge_keeps_its_promises(
    affinities: list[tuple[str, float]],
    trending: list[str],
    viewed: list[str],
    ordered: list[str],
    total: int,
) -> None:
    inputs = CandidateInputs(
        affinities=affinities,
        trending_by_category={"c1": trending[::2], "c2": trending[1::2]},
        trending_overall=trending,
        last_k={EventType.VIEW: viewed, EventType.ORDER: ordered},
    )
    got = merge_candidates(inputs, CandidateBudget(total=total, reengage=5, affinity=10))
    ids = [c.product_id for c in got]
    assert len(ids) == len(set(ids)) <= total
    assert not set(ids) & set(ordered)
    offered = (set(trending) | set(viewed)) - set(ordered)
    assert bool(got) == bool(offered)
