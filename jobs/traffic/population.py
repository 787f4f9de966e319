"""Shoppers, derived lazily from (seed, index) so a population can be huge for free.

A user's profile is a pure function of the parameters and the user's index: nothing is
precomputed or stored, and anyone holding the parameters (the ranker, a test) can rebuild
the latent truth behind any user id seen in the stream. Index order is activity order:
u0000000 starts sessions most often (mild Zipf, see `TrafficParams.user_activity_exponent`).
Ids beyond `params.users` are valid too: the simulation uses them when the population is
busy (see `simulation.py`).
"""

from __future__ import annotations

import hashlib
import random
import struct
from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache

from jobs.traffic.catalog import category_id
from jobs.traffic.params import TrafficParams
from jobs.traffic.sampling import cumulative, zipf_cumulative


def user_id(index: int) -> str:
    return f"u{index:07d}"


def user_index(user: str) -> int:
    """Inverse of `user_id`; raises ValueError for ids this generator does not make."""
    if len(user) < 2 or user[0] != "u" or not user[1:].isdigit():
        raise ValueError(f"not a generated user id: {user!r}")
    return int(user[1:])


@dataclass(frozen=True, slots=True)
class UserProfile:
    """The latent truth about a shopper that the generated behaviour reveals.

    `preferences` is a sparse Dirichlet draw over categories: the favourite categories with
    their weights (summing to 1), strongest first; every other category has affinity 0.
    `price_sensitivity` is an elasticity: clicks scale with (reference price / price) ** it.
    """

    user_id: str
    language: str
    platform: str
    preferences: tuple[tuple[str, float], ...]
    price_sensitivity: float

    def affinity(self, category: str) -> float:
        for favourite, weight in self.preferences:
            if favourite == category:
                return weight
        return 0.0

    @property
    def top_category(self) -> str:
        return self.preferences[0][0]


def user_profile(params: TrafficParams, index: int) -> UserProfile:
    """The profile of user `index`: the same for the same (seed, index), in any process."""
    return population(params).profile(index)


@lru_cache(maxsize=8)
def population(params: TrafficParams) -> Population:
    return Population(params)


class Population:
    """Derives profiles for one parameter set; holds the tables so each derivation is cheap.

    Per-user randomness comes from a keyed hash of (seed, index) rather than a seeded
    `random.Random`: seeding a Mersenne Twister costs more than the rest of a profile, and
    the simulation derives one profile per session.
    """

    def __init__(self, params: TrafficParams) -> None:
        self.params = params
        self._key = f"{params.seed}/".encode()
        self._languages = cumulative(params.language_weights)
        self._platforms = cumulative(params.platform_weights)
        self._categories = zipf_cumulative(params.categories, params.category_size_exponent)
        self._category_ids = [category_id(c) for c in range(params.categories)]
        # Gamma(concentration) by table lookup: 4096 sorted draws approximate its quantiles.
        table_rng = random.Random(f"gamma/{params.seed}")
        self._gamma = sorted(
            max(table_rng.gammavariate(params.preference_concentration, 1.0), 1e-12)
            for _ in range(_GAMMA_LEVELS)
        )

    def profile(self, index: int) -> UserProfile:
        if index < 0:
            raise ValueError(f"user index must be >= 0, got {index}")
        params = self.params
        key = self._key + str(index).encode()
        draws = _block(key, 0)  # 32-bit integers: uniform = draw * 2 ** -32
        language = params.languages[bisect_right(self._languages, draws[0] * _SCALE)]
        platform = params.platforms[bisect_right(self._platforms, draws[1] * _SCALE)]
        price_sensitivity = 0.2 + 1.3 * draws[2] * _SCALE
        low, high = params.min_favourite_categories, params.max_favourite_categories
        wanted = min(low + int(draws[3] * _SCALE * (high - low + 1)), params.categories)
        # Big categories are more often someone's favourite, as in a real marketplace.
        favourites: list[int] = []
        used = 4
        while len(favourites) < wanted:
            if used == len(draws):
                draws += _block(key, used // _BLOCK)
            candidate = bisect_right(self._categories, draws[used] * _SCALE)
            used += 1
            if candidate not in favourites:
                favourites.append(candidate)
        # Dirichlet(concentration) over the favourites: normalised gamma draws.
        if used + wanted > len(draws):
            draws += _block(key, len(draws) // _BLOCK)
        gamma = self._gamma
        raw = [gamma[draws[used + i] >> _GAMMA_SHIFT] for i in range(wanted)]
        total = sum(raw)
        ranked = sorted(zip(raw, favourites, strict=True), reverse=True)
        return UserProfile(
            user_id=user_id(index),
            language=language,
            platform=platform,
            preferences=tuple((self._category_ids[c], weight / total) for weight, c in ranked),
            price_sensitivity=price_sensitivity,
        )


_GAMMA_LEVELS = 4096
_GAMMA_SHIFT = 32 - 12  # a 32-bit draw's top 12 bits index the 4096 levels
_PERSON = b"traffic-user"
#: Draws per BLAKE2b block (64 bytes, 4 bytes each).
_BLOCK = 16
_SCALE = 2.0**-32


def _block(key: bytes, block: int) -> list[int]:
    """Block `block` of a key's random 32-bit integers: BLAKE2b in counter mode."""
    digest = hashlib.blake2b(key + b"/%d" % block, digest_size=64, person=_PERSON).digest()
    return list(struct.unpack("<16I", digest))
