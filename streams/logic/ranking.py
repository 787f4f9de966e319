"""What the ranking model sees: one feature row per (user, candidate) at a time T.

The live ranker builds the rows from the stores (`user_context` from the user's stored
features and last-k, `product_context` from a product's stored features and its catalog
item) and the training job builds the same rows from an event log replayed through the
same pure feature code; both call `feature_row`, so a feature cannot mean one thing
online and another offline. Pure: no I/O, time is an argument.

The columns (`FEATURES`, in order; a model file records them and the ranker refuses a
model whose list differs):

- `position`: the feed position the product is shown at. Shown positions get fewer
  clicks the lower they are; training sees the real position, serving scores every
  candidate at position 0, so the model ranks by click chance at the top of the feed
  rather than by where the old feed happened to put a product.
- user (the same for every candidate of a trigger): events per type in their windows,
  session events, distinct categories in 24h, minutes since the previous event;
- product: its share of all traffic per type and window (rate-free: a model trained on a
  quiet log serves a busy one), the smoothed 24h click-through and add-to-cart rates,
  log price, age in days since listed;
- user x product: the decayed affinity of the user for the product's category, that
  affinity's share of the user's total, the category's rank among the user's (0 = top,
  `UNRANKED` when the user never touched it), whether the product's language is the
  user's (missing when either is unknown), and whether the product is in the user's
  last-k views, wishlist or cart.

Missing values are NaN, which LightGBM routes down a learned default branch.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from schemas.catalog import CatalogItem
from schemas.events import EventType
from schemas.features import (
    FeatureConfig,
    ProductFeatures,
    UserFeatures,
    WindowCounts,
    decayed_value,
)

NAN = math.nan
DAY_MS = 86_400_000
MINUTE_MS = 60_000
#: The affinity rank of a category the user never touched.
UNRANKED = 50
#: Product shares are per 10,000 events of the type (readable numbers, same ranking).
SHARE_SCALE = 10_000.0

_V, _C, _A, _O = EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART, EventType.ORDER

USER_FEATURES: tuple[str, ...] = (
    "u_views_5m",
    "u_views_1h",
    "u_clicks_1h",
    "u_views_24h",
    "u_clicks_24h",
    "u_carts_24h",
    "u_orders_24h",
    "u_session_events",
    "u_categories_24h",
    "u_minutes_since_previous",
)
PRODUCT_FEATURES: tuple[str, ...] = (
    "p_view_share_1h",
    "p_click_share_1h",
    "p_view_share_24h",
    "p_click_share_24h",
    "p_cart_share_24h",
    "p_order_share_24h",
    "p_click_rate_24h",
    "p_cart_rate_24h",
    "p_log_price",
    "p_age_days",
)
PAIR_FEATURES: tuple[str, ...] = (
    "c_affinity",
    "c_affinity_share",
    "c_affinity_rank",
    "language_match",
    "seen_view",
    "seen_wishlist",
    "seen_cart",
)
FEATURES: tuple[str, ...] = ("position", *USER_FEATURES, *PRODUCT_FEATURES, *PAIR_FEATURES)


@dataclass(frozen=True, slots=True)
class UserContext:
    """One user at one time: their part of every row, and what the pairs need."""

    at_ms: int
    values: tuple[float, ...]
    affinity: Mapping[str, float]  # category -> decayed affinity at at_ms
    affinity_total: float
    category_rank: Mapping[str, int]
    language: str | None
    seen: tuple[frozenset[str], frozenset[str], frozenset[str]]  # views, wishlist, cart


@dataclass(frozen=True, slots=True)
class ProductContext:
    """One product at one time: its part of every row, and what the pairs need."""

    values: tuple[float, ...]
    category: str | None
    language: str | None
    created_ms: int | None


def user_context(
    features: UserFeatures,
    affinity_log: Mapping[str, float],
    last_k: Mapping[EventType, Iterable[str]],
    language: str | None,
    config: FeatureConfig,
) -> UserContext:
    """The user's part, from their features at T, their log2 affinity scores (the stored
    share's, or the offline replay's) and their last-k per type."""
    at = features.at_ms
    counts = features.counts
    five, hour, day = counts["5m"], counts["1h"], counts["24h"]
    since = features.ms_since_previous
    values = (
        float(five[_V]),
        float(hour[_V]),
        float(hour[_C]),
        float(day[_V]),
        float(day[_C]),
        float(day[_A]),
        float(day[_O]),
        float(features.session_events),
        float(features.distinct_categories_24h),
        NAN if since is None else since / MINUTE_MS,
    )
    half_life = config.affinity_half_life_ms
    affinity = {c: decayed_value(score, at, half_life) for c, score in affinity_log.items()}
    ranked = sorted(affinity.items(), key=lambda pair: (pair[1], pair[0]), reverse=True)
    return UserContext(
        at_ms=at,
        values=values,
        affinity=affinity,
        affinity_total=sum(affinity.values()),
        category_rank={c: rank for rank, (c, _) in enumerate(ranked[:UNRANKED])},
        language=language,
        seen=(
            frozenset(last_k.get(_V, ())),
            frozenset(last_k.get(EventType.WISHLIST, ())),
            frozenset(last_k.get(_A, ())),
        ),
    )


def _share(count: int, total: int) -> float:
    return SHARE_SCALE * count / total if total else 0.0


def product_context(
    features: ProductFeatures,
    global_counts: WindowCounts,
    item: CatalogItem | None,
    *,
    category: str | None = None,
) -> ProductContext:
    """The product's part at T (`features.at_ms`), from its features, every product's
    windows at T (`hash_window_counts` of the global hash) and its catalog item (None:
    not in the catalog; `category` then says which, when known)."""
    hour, day = features.counts["1h"], features.counts["24h"]
    every_hour, every_day = global_counts["1h"], global_counts["24h"]
    created = item.created_ms if item is not None else None
    values = (
        _share(hour[_V], every_hour[_V]),
        _share(hour[_C], every_hour[_C]),
        _share(day[_V], every_day[_V]),
        _share(day[_C], every_day[_C]),
        _share(day[_A], every_day[_A]),
        _share(day[_O], every_day[_O]),
        features.click_rate_24h,
        features.cart_rate_24h,
        math.log(item.price_paise + 1.0) if item is not None else NAN,
        (features.at_ms - created) / DAY_MS if created is not None else NAN,
    )
    return ProductContext(
        values=values,
        category=item.category_id if item is not None else category,
        language=item.language if item is not None else None,
        created_ms=created,
    )


def feature_row(
    user: UserContext, product_id: str, product: ProductContext, position: int = 0
) -> list[float]:
    """The model's input for one candidate, in `FEATURES` order."""
    category = product.category
    affinity = user.affinity.get(category, 0.0) if category is not None else 0.0
    total = user.affinity_total
    rank = user.category_rank.get(category, UNRANKED) if category is not None else UNRANKED
    if user.language is None or product.language is None:
        language_match = NAN
    else:
        language_match = 1.0 if product.language == user.language else 0.0
    views, wishlist, cart = user.seen
    return [
        float(position),
        *user.values,
        *product.values,
        affinity,
        affinity / total if total > 0 else 0.0,
        float(rank),
        language_match,
        1.0 if product_id in views else 0.0,
        1.0 if product_id in wishlist else 0.0,
        1.0 if product_id in cart else 0.0,
    ]


_USER_COLUMNS = slice(1, 1 + len(USER_FEATURES))
_PRODUCT_COLUMNS = slice(_USER_COLUMNS.stop, _USER_COLUMNS.stop + len(PRODUCT_FEATURES))
_PAIR_COLUMNS = slice(_PRODUCT_COLUMNS.stop, len(FEATURES))


class ProductTable:
    """Many products' parts as arrays, gathered per user by row number: every candidate
    of a round of triggers has a row (most users share most candidates). The ranker keeps
    one table across rounds and `put`s a product's context only when it is new (its
    cached features were read again), so a round re-uses the rows earlier rounds wrote
    instead of building thousands of them again."""

    __slots__ = ("_category", "_contexts", "_language", "_values", "categories", "languages", "row")

    def __init__(self, capacity: int = 1024) -> None:
        self.row: dict[str, int] = {}  # product id -> row
        self.categories: dict[str, int] = {}  # category -> its code in `category`
        self.languages: dict[str, int] = {}  # language -> its code in `language`
        self._contexts: list[ProductContext] = []  # what each row was written from
        self._values = np.empty((capacity, len(PRODUCT_FEATURES)), dtype=np.float64)
        self._category = np.empty(capacity, dtype=np.intp)
        self._language = np.empty(capacity, dtype=np.intp)

    @classmethod
    def of(cls, product_ids: Sequence[str], products: Sequence[ProductContext]) -> ProductTable:
        table = cls(max(len(product_ids), 1))
        table.put(product_ids, products)
        return table

    def __len__(self) -> int:
        return len(self.row)

    @property
    def values(self) -> NDArray[np.float64]:
        """The products' `ProductContext.values`, one row each."""
        return self._values[: len(self.row)]

    @property
    def category(self) -> NDArray[np.intp]:
        """Per row, its code in `categories`; -1: none."""
        return self._category[: len(self.row)]

    @property
    def language(self) -> NDArray[np.intp]:
        """Per row, its code in `languages`; -1: none."""
        return self._language[: len(self.row)]

    def put(self, product_ids: Sequence[str], products: Sequence[ProductContext]) -> None:
        """Give each product a row holding its context (rewritten when the context is
        not the one the row was written from)."""
        row, contexts = self.row, self._contexts
        for product_id, product in zip(product_ids, products, strict=True):
            at = row.get(product_id)
            if at is None:
                at = row[product_id] = len(contexts)
                contexts.append(product)
                if at == len(self._values):
                    self._grow()
            elif contexts[at] is product:
                continue
            else:
                contexts[at] = product
            self._values[at] = product.values
            self._category[at] = _code(self.categories, product.category)
            self._language[at] = _code(self.languages, product.language)

    def _grow(self) -> None:
        self._values = np.concatenate([self._values, np.empty_like(self._values)])
        self._category = np.concatenate([self._category, np.empty_like(self._category)])
        self._language = np.concatenate([self._language, np.empty_like(self._language)])


def _code(codes: dict[str, int], name: str | None) -> int:
    """`name`'s code in `codes` (a new one when it has none); -1 for None."""
    return -1 if name is None else codes.setdefault(name, len(codes))


def feature_matrix(
    user: UserContext, product_ids: Sequence[str], table: ProductTable, position: int = 0
) -> NDArray[np.float64]:
    """`feature_row` of every candidate (each a row of `table`) at one position, as one
    matrix: the ranker's call. Whole columns at a time: the user's part copied, the
    products' gathered from the table, the pairs looked up per category and language
    rather than per candidate."""
    rows = np.fromiter(map(table.row.__getitem__, product_ids), np.intp, len(product_ids))
    matrix = np.empty((len(rows), len(FEATURES)), dtype=np.float64)
    if not len(rows):
        return matrix
    matrix[:, 0] = position
    matrix[:, _USER_COLUMNS] = user.values
    matrix[:, _PRODUCT_COLUMNS] = table.values[rows]
    # Per category code (the last slot, code -1: no category): the user's affinity and
    # its rank.
    affinity = np.zeros(len(table.categories) + 1)
    ranks = np.full(len(table.categories) + 1, float(UNRANKED))
    for category, value in user.affinity.items():
        if (index := table.categories.get(category)) is not None:
            affinity[index] = value
    for category, rank in user.category_rank.items():
        if (index := table.categories.get(category)) is not None:
            ranks[index] = rank
    codes = table.category[rows]
    first = _PAIR_COLUMNS.start
    matrix[:, first] = affinity[codes]
    total = user.affinity_total
    matrix[:, first + 1] = matrix[:, first] / total if total > 0 else 0.0
    matrix[:, first + 2] = ranks[codes]
    language = table.language[rows]
    if user.language is None:
        matrix[:, first + 3] = NAN
    else:
        own = table.languages.get(user.language, -2)  # -2: no candidate has it
        matrix[:, first + 3] = np.where(language < 0, NAN, (language == own).astype(np.float64))
    for column, seen in enumerate(user.seen, start=first + 4):
        shown = [table.row[p] for p in seen if p in table.row]
        matrix[:, column] = np.isin(rows, shown) if shown else 0.0
    return matrix


def popularity(features: ProductFeatures, config: FeatureConfig) -> float:
    """A product's 24h events weighted like the affinity: the fallback ranking, and the
    baseline the training job measures the model against."""
    day = features.counts["24h"]
    return sum(config.weights.get(kind, 0.0) * count for kind, count in day.items())


#: Holdout buckets: a user's bucket is the CRC-32 of their id modulo this.
HOLDOUT_BUCKETS = 10_000


def in_holdout(user_id: str, share: float) -> bool:
    """Whether the user is in the control group that is served popularity on purpose (an
    experiment's holdout): the same answer in every ranker process, for the user's whole
    life, and about `share` of all users."""
    return zlib.crc32(user_id.encode()) % HOLDOUT_BUCKETS < share * HOLDOUT_BUCKETS
