"""Candidate generation for the feed ranker: several channels merged into a few hundred
products, each remembering the channel it came from (a ranking feature, and a number to
report). Pure: the ranker reads the inputs from the stores, the training job builds them
from the offline features, and both merge them here.

Channels, in the order they claim a product (a product two channels offer keeps the
first's name):

1. `reengage`: products the user carted, wishlisted or viewed and has not ordered
   (carts first, then wishlists, then views; newest first within each);
2. `affinity`: trending products of the user's highest-affinity categories, the budget
   split over the categories in proportion to their affinity;
3. `new`: the most recently listed products (of the user's top categories when known);
4. `explore`: trending products of categories the user has not touched, a small budget,
   the categories drawn with a seed so the training job can replay the draw;
5. `trending`: trending overall, which also fills whatever the others left unused.

A user with no history (no affinity, nothing to re-engage) is a cold start: `cold_start`
(trending overall in their language) comes first. Products the user ordered are never
candidates.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from schemas.events import EventType


class Channel(StrEnum):
    REENGAGE = "reengage"
    AFFINITY = "affinity"
    NEW = "new"
    EXPLORE = "explore"
    TRENDING = "trending"
    COLD_START = "cold_start"


class Candidate(NamedTuple):
    """A merged candidate (a named tuple: a trigger builds a few hundred)."""

    product_id: str
    channel: Channel
    rank: int  # its position within the channel's own list (0 = the channel's best)


@dataclass(frozen=True, slots=True)
class CandidateBudget:
    """How many candidates each channel may bring; the total caps the merge."""

    total: int = 300
    reengage: int = 40
    affinity: int = 150
    new: int = 20
    explore: int = 20
    #: Categories the affinity channel spreads over (the user's top ones).
    affinity_categories: int = 5
    #: Categories the exploration channel draws from.
    explore_categories: int = 2


@dataclass(frozen=True, slots=True)
class CandidateInputs:
    """What the channels draw from, read by the caller. Ranked lists are best first."""

    #: (category, affinity), highest first.
    affinities: Sequence[tuple[str, float]] = ()
    #: Per category, its trending products.
    trending_by_category: Mapping[str, Sequence[str]] = field(default_factory=dict)
    trending_overall: Sequence[str] = ()
    #: The most recently listed products, per category ("" = every category).
    newest: Mapping[str, Sequence[str]] = field(default_factory=dict)
    #: The user's last-k: type -> products, newest first.
    last_k: Mapping[EventType, Sequence[str]] = field(default_factory=dict)
    #: Categories the user has not touched that exploration may draw from.
    unexplored: Sequence[str] = ()
    #: The user's language and each known product's language (the cold-start channel).
    language: str | None = None
    product_language: Mapping[str, str] = field(default_factory=dict)
    #: Trending overall among products in the user's language, when the caller has it
    #: (otherwise the cold start filters `trending_overall` by `product_language`).
    trending_in_language: Sequence[str] = ()


_REENGAGE_ORDER = (EventType.ADD_TO_CART, EventType.WISHLIST, EventType.VIEW)


def reengagement(last_k: Mapping[EventType, Sequence[str]]) -> list[str]:
    """Carted, then wishlisted, then viewed products (newest first in each), each once,
    without what the user ordered."""
    ordered = set(last_k.get(EventType.ORDER, ()))
    seen: set[str] = set()
    products = []
    for event_type in _REENGAGE_ORDER:
        for product in last_k.get(event_type, ()):
            if product not in ordered and product not in seen:
                seen.add(product)
                products.append(product)
    return products


def affinity_shares(affinities: Sequence[tuple[str, float]], budget: int) -> list[tuple[str, int]]:
    """The affinity channel's budget split over the categories in proportion to their
    affinity (largest remainders, so the shares add up to the budget exactly)."""
    positive = [(category, score) for category, score in affinities if score > 0]
    total = sum(score for _, score in positive)
    if not positive or budget <= 0:
        return []
    exact = [(category, budget * score / total) for category, score in positive]
    shares = {category: int(value) for category, value in exact}
    left = budget - sum(shares.values())
    by_remainder = sorted(exact, key=lambda pair: pair[1] - int(pair[1]), reverse=True)
    for category, _ in by_remainder[:left]:
        shares[category] += 1
    return [(category, shares[category]) for category, _ in positive if shares[category]]


def merge_candidates(
    inputs: CandidateInputs, budget: CandidateBudget, seed: int = 0
) -> list[Candidate]:
    """The de-duplicated candidates, channel by channel (see the module docstring), at
    most `budget.total`; never empty while any channel has a product the user did not
    order."""
    return list(candidates_by_id(inputs, budget, seed).values())


#: `Candidate(product, channel, rank)` without the named tuple's Python-level `__new__`
#: (a trigger builds a few hundred).
_candidate = functools.partial(tuple.__new__, Candidate)


def candidates_by_id(
    inputs: CandidateInputs, budget: CandidateBudget, seed: int = 0
) -> dict[str, Candidate]:
    """`merge_candidates` by product id, in the same order (the ranker's lookup of a
    product's channel)."""
    ordered = set(inputs.last_k.get(EventType.ORDER, ()))
    chosen: dict[str, Candidate] = {}
    total = budget.total

    def take(channel: Channel, products: Sequence[str], limit: int) -> None:
        room = min(limit, total - len(chosen))
        if room <= 0:
            return
        for rank, product in enumerate(products):
            if product in chosen or product in ordered:
                continue
            chosen[product] = _candidate((product, channel, rank))
            room -= 1
            if not room:
                return

    reengage = reengagement(inputs.last_k)
    top = list(inputs.affinities[: budget.affinity_categories])
    if not top and not reengage:
        in_language = list(inputs.trending_in_language) or [
            product
            for product in inputs.trending_overall
            if inputs.language is None or inputs.product_language.get(product) == inputs.language
        ]
        take(Channel.COLD_START, in_language, budget.total)
    take(Channel.REENGAGE, reengage, budget.reengage)
    for category, share in affinity_shares(top, budget.affinity):
        take(Channel.AFFINITY, inputs.trending_by_category.get(category, ()), share)
    newest = [p for category, _ in top for p in inputs.newest.get(category, ())]
    take(Channel.NEW, newest or inputs.newest.get("", ()), budget.new)
    if inputs.unexplored and budget.explore > 0:
        draw = random.Random(seed)
        count = min(budget.explore_categories, len(inputs.unexplored))
        categories = draw.sample(list(inputs.unexplored), count)
        for index, category in enumerate(categories):
            share = budget.explore // count + (1 if index < budget.explore % count else 0)
            take(Channel.EXPLORE, inputs.trending_by_category.get(category, ()), share)
    take(Channel.TRENDING, inputs.trending_overall, budget.total)
    return chosen


def channel_counts(candidates: Sequence[Candidate]) -> dict[Channel, int]:
    """How many candidates each channel brought (for the ranker's report)."""
    counts: dict[Channel, int] = {}
    for candidate in candidates:
        counts[candidate.channel] = counts.get(candidate.channel, 0) + 1
    return counts


@dataclass(frozen=True, slots=True)
class SharedView:
    """What every user's candidates draw from, read once per refresh."""

    trending_by_category: dict[str, list[str]]
    trending_overall: list[str]
    #: Trending overall among the products listed in each language (cold starts).
    trending_by_language: dict[str, list[str]]
    #: Categories by their most popular product's decayed score, most popular first.
    categories_by_popularity: list[str]
    newest: dict[str, list[str]]

    @classmethod
    def of(
        cls,
        categories: list[str],
        trending: list[list[tuple[str, float]]],
        newest: list[list[str]],
        overall: int,
        languages: Mapping[str, str] | None = None,
    ) -> SharedView:
        """`languages`: the listing language of (at least) the trending products."""
        scored = sorted(
            ((score, product) for top in trending for product, score in top), reverse=True
        )
        by_language: dict[str, list[str]] = {}
        for _score, product in scored:
            language = (languages or {}).get(product)
            if language is not None:
                listed = by_language.setdefault(language, [])
                if len(listed) < overall:
                    listed.append(product)
        best = {c: top[0][1] if top else 0.0 for c, top in zip(categories, trending, strict=True)}
        return cls(
            trending_by_category={
                c: [p for p, _ in top] for c, top in zip(categories, trending, strict=True)
            },
            trending_overall=[product for _, product in scored[:overall]],
            trending_by_language=by_language,
            categories_by_popularity=sorted(categories, key=lambda c: (-best[c], c)),
            newest={c or "": ids for c, ids in zip([*categories, None], newest, strict=True)},
        )

    def inputs_for(
        self,
        affinities: list[tuple[str, float]],
        last_k: dict[EventType, list[str]],
        budget: CandidateBudget,
        language: str | None = None,
    ) -> CandidateInputs:
        """One user's candidate inputs: exploration draws from the most popular
        categories the user has not touched; a cold start gets trending products in
        `language` (when known)."""
        touched = {category for category, _ in affinities}
        unexplored = itertools.islice(
            (
                c
                for c in self.categories_by_popularity
                if c not in touched and self.trending_by_category.get(c)
            ),
            4 * budget.explore_categories,
        )
        return CandidateInputs(
            affinities=affinities,
            trending_by_category=self.trending_by_category,
            trending_overall=self.trending_overall,
            newest=self.newest,
            last_k=last_k,
            unexplored=list(unexplored),
            language=language,
            trending_in_language=self.trending_by_language.get(language or "", ()),
        )
