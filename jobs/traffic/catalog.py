"""The product catalog: what exists to be shown, with heavy-tailed popularity.

Popularity is Zipf over a random permutation of products (so ids say nothing about rank);
category sizes are Zipf over category index; prices are log-normal around a per-category
level. The catalog carries the sampling tables the simulation draws from on every view.
"""

from __future__ import annotations

import csv
import math
import random
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from jobs.traffic.params import TrafficParams
from jobs.traffic.sampling import cumulative, zipf_cumulative, zipf_weights

PRODUCTS_FILE = "products.csv"
_YEAR_MS = 365 * 24 * 3600 * 1000


class Product(NamedTuple):
    """One listing. `popularity` is its share of the global feed (all products sum to 1)."""

    product_id: str
    category_id: str
    price_paise: int
    seller_id: str
    language: str
    created_ms: int
    popularity: float


def product_id(index: int) -> str:
    return f"p{index:07d}"


def category_id(index: int) -> str:
    return f"c{index:04d}"


def seller_id(index: int) -> str:
    return f"s{index:05d}"


@dataclass(frozen=True)
class Catalog:
    """All products, plus (not compared) the tables that make per-view sampling cheap."""

    products: tuple[Product, ...]
    #: Global feed: index into `products` = bisect_right(popular_cumulative, random()).
    popular_cumulative: list[float] = field(init=False, repr=False, compare=False)
    #: Per category: (product indices, cumulative popularity within the category).
    category_members: dict[str, tuple[list[int], list[float]]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not self.products:
            raise ValueError("a catalog needs at least one product")
        object.__setattr__(
            self, "popular_cumulative", cumulative([p.popularity for p in self.products])
        )
        grouped: dict[str, list[int]] = {}
        for index, product in enumerate(self.products):
            grouped.setdefault(product.category_id, []).append(index)
        members = {
            category: (
                indices,
                _cumulative_or_uniform([self.products[i].popularity for i in indices]),
            )
            for category, indices in grouped.items()
        }
        object.__setattr__(self, "category_members", members)

    @classmethod
    def build(cls, params: TrafficParams) -> Catalog:
        """The catalog for these parameters (deterministic in `params.seed`)."""
        rng = random.Random(f"catalog/{params.seed}")
        category_table = zipf_cumulative(params.categories, params.category_size_exponent)
        # Each category has a price level; products scatter around it.
        category_level = [
            params.reference_price_paise * rng.lognormvariate(-0.2, 0.6)
            for _ in range(params.categories)
        ]
        language_table = cumulative(params.language_weights)
        ranks = list(range(params.products))
        rng.shuffle(ranks)
        popularity = _popularity_by_rank(ranks, params.product_popularity_exponent)
        products = []
        for index in range(params.products):
            # The first products seed every category, so no favourite category is empty.
            category = (
                index if index < params.categories else bisect_right(category_table, rng.random())
            )
            price = category_level[category] * rng.lognormvariate(0.0, 0.45)
            products.append(
                Product(
                    product_id=product_id(index),
                    category_id=category_id(category),
                    price_paise=max(1_900, round(price / 100) * 100),
                    seller_id=seller_id(rng.randrange(params.sellers)),
                    language=params.languages[bisect_right(language_table, rng.random())],
                    created_ms=params.catalog_epoch_ms - rng.randrange(_YEAR_MS),
                    popularity=popularity[index],
                )
            )
        return cls(tuple(products))

    def write(self, directory: str | Path) -> Path:
        """Write `products.csv` (one row per product, floats exact) and return its path."""
        path = Path(directory) / PRODUCTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(Product._fields)
            for product in self.products:
                writer.writerow(
                    (*product[:-1], repr(product.popularity))  # repr: exact round trip
                )
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Catalog:
        """Read what `write` wrote."""
        path = Path(directory) / PRODUCTS_FILE
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            if tuple(reader.fieldnames or ()) != Product._fields:
                raise ValueError(f"{path}: expected columns {', '.join(Product._fields)}")
            products = tuple(
                Product(
                    product_id=row["product_id"],
                    category_id=row["category_id"],
                    price_paise=int(row["price_paise"]),
                    seller_id=row["seller_id"],
                    language=row["language"],
                    created_ms=int(row["created_ms"]),
                    popularity=float(row["popularity"]),
                )
                for row in reader
            )
        return cls(products)


def _popularity_by_rank(ranks: list[int], exponent: float) -> list[float]:
    """Each item's Zipf weight from its popularity rank, normalised to sum to 1."""
    by_rank = zipf_weights(len(ranks), exponent)
    total = math.fsum(by_rank)
    return [by_rank[rank] / total for rank in ranks]


def _cumulative_or_uniform(weights: list[float]) -> list[float]:
    return cumulative(weights) if sum(weights) > 0 else cumulative([1.0] * len(weights))
