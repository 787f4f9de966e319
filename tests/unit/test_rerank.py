"""Re-ranking rules (`streams.logic.rerank`) and the feed's stored form
(`schemas.feed_layout`)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from schemas.feed_layout import Feed, decode_feed, encode_feed
from streams.logic.rerank import RerankRules, rerank


def test_at_most_three_per_seller_in_the_window() -> None:
    ranked = [f"p{i}" for i in range(8)]
    sellers = {p: "s1" for p in ranked[:5]} | {p: "s2" for p in ranked[5:]}
    got = rerank(ranked, seller_of=sellers, language_of={}, rules=RerankRules(window=5))
    assert got == ["p0", "p1", "p2", "p5", "p6", "p3", "p4", "p7"]


def test_ordered_products_leave_the_feed() -> None:
    assert rerank(["a", "b", "c"], seller_of={}, language_of={}, ordered=["b"]) == ["a", "c"]


def test_foreign_languages_are_capped_but_english_is_shared() -> None:
    languages = {"ta1": "ta", "ta2": "ta", "en1": "en", "hi1": "hi", "x": "hi"}
    ranked = ["ta1", "ta2", "en1", "hi1", "x"]
    got = rerank(
        ranked,
        seller_of={},
        language_of=languages,
        language="hi",
        rules=RerankRules(window=4, foreign=1),
    )
    assert got == ["ta1", "en1", "hi1", "x", "ta2"]


@given(
    st.lists(st.sampled_from([f"p{i}" for i in range(30)]), unique=True, max_size=30),
    st.lists(st.sampled_from([f"p{i}" for i in range(30)]), max_size=5),
)
def test_rerank_only_moves_products_and_caps_sellers(ranked: list[str], ordered: list[str]) -> None:
    sellers = {p: f"s{int(p[1:]) % 8}" for p in ranked}
    got = rerank(ranked, seller_of=sellers, language_of={}, ordered=ordered)
    assert sorted(got) == sorted(p for p in ranked if p not in ordered)
    per_seller: dict[str, int] = {}
    for p in got:
        per_seller[sellers[p]] = per_seller.get(sellers[p], 0) + 1
    fillable = sum(min(n, 3) for n in per_seller.values())
    if fillable >= 20:  # enough sellers to fill the window within the cap: it holds
        top = got[:20]
        assert all(sum(sellers[p] == s for p in top) <= 3 for s in per_seller)


def test_a_feed_round_trips() -> None:
    feed = Feed(
        "u1", 42, ["p1", "p2"], ["affinity", "trending"], "popularity", True, "session_start", 7, 9
    )
    value = encode_feed(feed)
    assert value.startswith(b"42|")
    assert decode_feed("u1", value) == feed
