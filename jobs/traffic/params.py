"""Every knob of the traffic generator in one frozen, JSON-serialisable value.

The parameters (with the seed) fully determine the catalog, the users and the event
stream, so writing them next to a generated data set is enough to regenerate it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrafficParams:
    """What to simulate. Defaults describe a mid-sized marketplace at 1000 events/s."""

    seed: int = 7

    # Catalog.
    products: int = 50_000
    categories: int = 200
    sellers: int = 5_000
    #: Zipf exponent of product popularity (rank r gets weight 1 / (r + 1) ** exponent).
    product_popularity_exponent: float = 1.05
    #: Zipf exponent of category sizes: category c0000 is the largest.
    category_size_exponent: float = 0.8
    #: Typical price level; users' price sensitivity is relative to it.
    reference_price_paise: int = 40_000
    #: Products were created during the year before this instant (2025-01-01 UTC).
    catalog_epoch_ms: int = 1_735_689_600_000

    # Users.
    users: int = 100_000
    #: Zipf exponent of how often a user starts a session (mild: 0 would be uniform).
    user_activity_exponent: float = 0.6
    languages: tuple[str, ...] = ("hi", "en", "ta", "te", "bn", "mr", "kn", "gu")
    language_weights: tuple[float, ...] = (0.38, 0.22, 0.09, 0.09, 0.08, 0.06, 0.04, 0.04)
    platforms: tuple[str, ...] = ("android", "ios", "web")
    platform_weights: tuple[float, ...] = (0.86, 0.09, 0.05)
    #: How many favourite categories a user has (inclusive range); all others get 0.
    min_favourite_categories: int = 1
    max_favourite_categories: int = 4
    #: Dirichlet concentration over the favourites: below 1, one favourite dominates.
    preference_concentration: float = 0.8

    # Sessions.
    #: Events per simulated second; sets the session arrival intensity.
    rate: float = 1000.0
    #: Two sessions of one user are separated by strictly more than this.
    session_gap_ms: int = 1_800_000
    mean_views_per_session: float = 12.0
    min_think_ms: int = 300
    mean_think_ms: int = 3_000
    max_think_ms: int = 30_000

    # The feed: the share of slots filled from global popularity, from the user's
    # favourite categories, and (the rest) uniformly at random (exploration).
    popular_feed_share: float = 0.35
    preferred_feed_share: float = 0.45

    # Behaviour: p(click) = base * (1 + boost * affinity) * position decay * price factor
    # (* mismatch factor if the product's language is not the user's), capped at 0.9.
    base_click_probability: float = 0.06
    affinity_click_boost: float = 8.0
    position_decay_exponent: float = 0.3
    language_mismatch_factor: float = 0.6
    add_to_cart_after_click: float = 0.25
    wishlist_after_click: float = 0.10
    order_after_add_to_cart: float = 0.20
    remove_from_cart_after_view: float = 0.04

    # Delivery defects, as retrying producers and offline mobile clients cause them.
    duplicate_share: float = 0.005
    duplicate_delay_ms: tuple[int, int] = (50, 5_000)
    out_of_order_share: float = 0.01
    out_of_order_delay_ms: tuple[int, int] = (1_000, 30_000)

    def __post_init__(self) -> None:
        problems = list(_problems(self))
        if problems:
            raise ValueError("bad traffic parameters: " + "; ".join(problems))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> TrafficParams:
        """Parse `to_json` output; unknown keys are an error (a typo must not be ignored)."""
        data: Any = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("traffic parameters must be a JSON object")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"unknown traffic parameters: {', '.join(unknown)}")
        values: dict[str, Any] = {
            name: tuple(value) if isinstance(value, list) else value for name, value in data.items()
        }
        return cls(**values)


def _problems(params: TrafficParams) -> list[str]:
    checks = [
        (params.products >= 1, "products must be >= 1"),
        (params.categories >= 1, "categories must be >= 1"),
        (params.sellers >= 1, "sellers must be >= 1"),
        (params.users >= 1, "users must be >= 1"),
        (params.reference_price_paise > 0, "reference_price_paise must be > 0"),
        (params.rate > 0 and math.isfinite(params.rate), "rate must be a positive number"),
        (len(params.languages) == len(params.language_weights) >= 1, "one weight per language"),
        (len(params.platforms) == len(params.platform_weights) >= 1, "one weight per platform"),
        (
            1 <= params.min_favourite_categories <= params.max_favourite_categories,
            "need 1 <= min_favourite_categories <= max_favourite_categories",
        ),
        (params.preference_concentration > 0, "preference_concentration must be > 0"),
        (params.mean_views_per_session >= 1, "mean_views_per_session must be >= 1"),
        (
            0 < params.min_think_ms < params.mean_think_ms < params.max_think_ms,
            "need 0 < min_think_ms < mean_think_ms < max_think_ms",
        ),
        (
            params.max_think_ms < params.session_gap_ms,
            "max_think_ms must be below session_gap_ms, or pauses would look like new sessions",
        ),
        (
            params.popular_feed_share + params.preferred_feed_share <= 1,
            "popular_feed_share + preferred_feed_share must be <= 1",
        ),
        (
            params.duplicate_share + params.out_of_order_share < 1,
            "duplicate_share + out_of_order_share must be < 1",
        ),
        (params.affinity_click_boost >= 0, "affinity_click_boost must be >= 0"),
        (params.position_decay_exponent >= 0, "position_decay_exponent must be >= 0"),
    ]
    shares = (
        "popular_feed_share",
        "preferred_feed_share",
        "base_click_probability",
        "language_mismatch_factor",
        "add_to_cart_after_click",
        "wishlist_after_click",
        "order_after_add_to_cart",
        "remove_from_cart_after_view",
        "duplicate_share",
        "out_of_order_share",
    )
    checks += [(0 <= getattr(params, name) <= 1, f"{name} must be in [0, 1]") for name in shares]
    for name in ("duplicate_delay_ms", "out_of_order_delay_ms"):
        low, high = getattr(params, name)
        checks.append((0 < low <= high, f"{name} must be (low, high) with 0 < low <= high"))
    return [message for ok, message in checks if not ok]
