"""Light re-ranking after scoring: the rules a feed must obey whatever the model says.

Applied in this order to the scored candidates (highest score first):

1. nothing the user already ordered;
2. at most `per_seller` products of one seller in the top `window` (the seller's
   next products move to just below the window, in their order);
3. at most `foreign` products in the top `window` whose language is neither the user's
   nor one of `shared_languages` (English by default: every UI shows it), moved the same
   way; a product without a known language counts as shared.

Ties keep the scored order, so the result is deterministic for a given input. Pure: the
ranker and the offline evaluation both call it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RerankRules:
    window: int = 20
    per_seller: int = 3
    foreign: int = 4
    shared_languages: frozenset[str] = frozenset({"en"})


def rerank(
    ranked: Sequence[str],
    *,
    seller_of: Mapping[str, str],
    language_of: Mapping[str, str],
    ordered: Iterable[str] = (),
    language: str | None = None,
    rules: RerankRules = RerankRules(),
) -> list[str]:
    """`ranked` (best first) with the rules applied; every product that is not ordered
    stays in the feed, only its place changes."""
    bought = set(ordered)
    top: list[str] = []
    held: list[str] = []  # kept out of the window by a rule, in their order
    sellers: dict[str, int] = {}
    foreign = 0
    rest = iter(ranked)
    for product in rest:
        if product in bought:
            continue
        if len(top) >= rules.window:
            held.append(product)
            held.extend(p for p in rest if p not in bought)  # past the window: as ranked
            break
        seller = seller_of.get(product)
        if seller is not None and sellers.get(seller, 0) >= rules.per_seller:
            held.append(product)
            continue
        product_language = language_of.get(product)
        is_foreign = (
            language is not None
            and product_language is not None
            and product_language != language
            and product_language not in rules.shared_languages
        )
        if is_foreign and foreign >= rules.foreign:
            held.append(product)
            continue
        top.append(product)
        foreign += is_foreign
        if seller is not None:
            sellers[seller] = sellers.get(seller, 0) + 1
    return top + held
