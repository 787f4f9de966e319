"""The event stream: a discrete-event simulation of shopper sessions in simulated time.

Why a simulation rather than independent random events: the ranker and the worker need
what real traffic has, namely sessions (app-open, a feed scrolled position by position,
clicks that depend on taste, position, price and language, carts and orders), one session
per user at a time with long quiet gaps between a user's sessions, and a steady aggregate
rate. Each active session is a generator of its own events; an agenda (a heap of the next
event times, each with the sessions due at that millisecond in scheduling order)
interleaves them, so events come out in event-time order. Sessions arrive
as a Poisson process whose intensity is `rate / (mean events per session)`, so the stream
carries about `rate` events per simulated second: a live caller that sends each event when
the wall clock reaches its event time (`start_ms` = now) sends about `rate` events/s.

The stream starts in steady state: at `start_ms` as many sessions are already under way as
the arrival rate sustains (they have no app-open, as their app was opened before
`start_ms`), instead of ramping up from zero for a session's length.

Cost grows with the rate: about `rate * mean_think_ms / 1000` sessions are under way at
once (3,000 at 1,000 events/s, 90,000 at 30,000/s), each a suspended generator, and the
first think time after `start_ms` creates nearly one session per event.

Users: each new session picks a user by (mildly skewed) activity who is not in a session
and whose quiet gap is over; after a few unlucky tries it takes the next never-used index
beyond `params.users` instead (ids u0100000, u0100001, ... for the default population).
High rates with small populations therefore still work, with more users than `users`.

Delivery defects come last: a share of events is emitted again later (duplicates, same
event id) and a share is held back 1-30 s of simulated time (out of order), as retrying
producers and offline mobile clients do.

Deterministic: one `random.Random` per purpose, seeded from `params.seed` (users: a keyed
hash of seed and index, see `population.py`); the same parameters give the same events,
byte for byte, and another `start_ms` only shifts their times and gives them other
event ids (mixed with the start), so a second run of `signals generate` or the demo is new
traffic to the features' de-duplication, not a replay of the first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import itertools
import math
import random
from bisect import bisect_right
from collections.abc import Callable, Iterator
from copy import copy
from functools import lru_cache
from typing import NamedTuple

from jobs.traffic.catalog import Catalog
from jobs.traffic.params import TrafficParams
from jobs.traffic.population import UserProfile, population, user_profile
from jobs.traffic.sampling import cumulative, zipf_cumulative
from schemas.events import Event, EventType

#: A session starts with a user picked by activity; after this many busy picks, a new user.
PICK_TRIES = 4
#: Sessions simulated to estimate the mean events per session (for the arrival rate).
CALIBRATION_SESSIONS = 1_000
#: Positions beyond this share the last position-decay value.
_DECAY_POSITIONS = 256
_PRICE_FACTOR_RANGE = (0.2, 3.0)
_MAX_CLICK_PROBABILITY = 0.9
#: Think times come from a table of 2 ** THINK_BITS quantiles.
THINK_BITS = 12
# UUID version 4: clear the version nibble and variant bits of a random 128-bit number,
# then set version 4 and the RFC 4122 variant (what uuid.UUID(int=..., version=4) does).
_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_SET = (0x4000 << 64) | (0x8000 << 48)

_APP_OPEN = EventType.APP_OPEN
_VIEW = EventType.VIEW
_CLICK = EventType.CLICK
_ADD_TO_CART = EventType.ADD_TO_CART
_REMOVE_FROM_CART = EventType.REMOVE_FROM_CART
_WISHLIST = EventType.WISHLIST
_ORDER = EventType.ORDER


class TrafficSimulation:
    """An endless, deterministic stream of Events; iterate it once.

    Also remembers which users appeared, so their profiles can be written next to the
    events (`users_seen`).
    """

    def __init__(
        self, params: TrafficParams, start_ms: int, catalog: Catalog | None = None
    ) -> None:
        if isinstance(start_ms, bool) or not isinstance(start_ms, int) or start_ms <= 0:
            raise ValueError(f"start_ms must be a positive integer (ms epoch), got {start_ms!r}")
        self.params = params
        self.start_ms = start_ms
        self.catalog = catalog if catalog is not None else default_catalog(params)
        self._seen_in_population: set[int] = set()
        self._next_new_user = params.users
        self._stream = self._events()

    def __iter__(self) -> Iterator[Event]:
        return self._stream

    def users_seen(self) -> list[UserProfile]:
        """Profiles of every user whose session began (its first event may be pending), by index."""
        indices = [
            *sorted(self._seen_in_population),
            *range(self.params.users, self._next_new_user),
        ]
        return [user_profile(self.params, index) for index in indices]

    def _events(self) -> Iterator[Event]:  # noqa: PLR0912, PLR0915  (hot loop, kept flat)
        params = self.params
        rng = random.Random(f"sessions/{params.seed}")
        random_ = rng.random
        model = SessionModel(params, self.catalog, rng, id_salt=f"{params.seed}/{self.start_ms}")
        session = model.session
        # Sessions do not depend on the rate or the delivery defects: share the estimate.
        shape = session_shape(_session_params(params), self.catalog)
        sessions_per_ms = params.rate / shape.events_per_session / 1000.0

        activity = zipf_cumulative(params.users, params.user_activity_exponent)
        population_size = params.users
        # User index -> earliest start of their next session (a huge value while in one).
        busy_until: dict[int, int] = {}
        in_session = 1 << 62
        seen = self._seen_in_population
        gap_ms = params.session_gap_ms
        profile_of = population(params).profile

        def pick_user(now_ms: int) -> int:
            for _ in range(PICK_TRIES):
                index = bisect_right(activity, random_())
                if busy_until.get(index, -1) <= now_ms:
                    seen.add(index)
                    break
            else:
                index = self._next_new_user
                self._next_new_user += 1
            busy_until[index] = in_session
            return index

        # The agenda: a heap of the distinct times at which some session acts next, and
        # per time the sessions due then, in the order they were scheduled (deterministic
        # ties). Grouping by millisecond keeps the heap small and its entries plain ints:
        # at high rates tens of thousands of sessions are under way at once.
        times: list[int] = []
        due_at: dict[int, list[tuple[Event, Iterator[Event], int]]] = {}
        order = itertools.count()
        # (emission time, tie-breaker, event): duplicates and held-back events.
        delayed: list[tuple[int, int, Event]] = []
        heappush, heappop = heapq.heappush, heapq.heappop

        def start_session(at_ms: int, *, already_running: bool) -> None:
            index = pick_user(at_ms)
            profile = profile_of(index)
            if already_running:
                # Under way at start_ms: app opened earlier, some way down the feed.
                position = int(-model.mean_views_before * math.log(1.0 - random_()))
                events = session(profile, at_ms, position, opens_app=False)
            else:
                events = session(profile, at_ms, 0, opens_app=True)
            first = next(events)
            due = due_at.get(first.event_time_ms)
            if due is None:
                due_at[first.event_time_ms] = [(first, events, index)]
                heappush(times, first.event_time_ms)
            else:
                due.append((first, events, index))

        # Steady state from the first moment: as many sessions under way at start_ms as the
        # arrival rate sustains (Little's law), each next acting after a memoryless pause.
        # Their first events are the order statistics of exponential pauses, drawn in time
        # order, so each such session is only created when it acts (cheap at high rates).
        running_left = round(sessions_per_ms * shape.duration_ms)
        pause_ms = model.mean_think_ms
        never = math.inf
        next_running = (
            self.start_ms + pause_ms * rng.expovariate(running_left) if running_left else never
        )
        next_arrival = self.start_ms + rng.expovariate(sessions_per_ms)

        duplicate_cut = params.out_of_order_share + params.duplicate_share
        out_of_order_cut = params.out_of_order_share
        late_low, late_high = params.out_of_order_delay_ms
        again_low, again_high = params.duplicate_delay_ms
        randint = rng.randint
        get_due, pop_due = due_at.get, due_at.pop

        while True:
            head = times[0] if times else never
            if next_running <= head or next_arrival <= head:
                if next_running < next_arrival:
                    start_session(int(next_running), already_running=True)
                    running_left -= 1
                    next_running = (
                        next_running + pause_ms * rng.expovariate(running_left)
                        if running_left
                        else never
                    )
                else:
                    start_session(int(next_arrival), already_running=False)
                    next_arrival += rng.expovariate(sessions_per_ms)
                continue
            now = heappop(times)
            while delayed and delayed[0][0] <= now:
                yield heappop(delayed)[2]
            for event, events, index in pop_due(now):
                draw = random_()
                if draw < out_of_order_cut:
                    heappush(delayed, (now + randint(late_low, late_high), next(order), event))
                else:
                    yield event
                    if draw < duplicate_cut:
                        # A copy: events are mutable values, and a caller changing the
                        # one it got must not change the redelivery.
                        again = copy(event)
                        heappush(
                            delayed, (now + randint(again_low, again_high), next(order), again)
                        )
                following = next(events, None)
                if following is None:
                    if index < population_size:
                        # Strictly longer than the gap: gap * (1 + exponential), plus 1 ms.
                        busy_until[index] = (
                            now + gap_ms + 1 + int(gap_ms * -math.log(1.0 - random_()))
                        )
                    else:
                        del busy_until[index]  # beyond the population: never picked again
                    continue
                at_ms = following.event_time_ms  # later than now: think times are > 0
                due = get_due(at_ms)
                if due is None:
                    due_at[at_ms] = [(following, events, index)]
                    heappush(times, at_ms)
                else:
                    due.append((following, events, index))


def simulate(
    params: TrafficParams, start_ms: int, catalog: Catalog | None = None
) -> Iterator[Event]:
    """The endless event stream for `params`, starting at `start_ms` (simulated time)."""
    return iter(TrafficSimulation(params, start_ms, catalog))


@lru_cache(maxsize=4)
def default_catalog(params: TrafficParams) -> Catalog:
    """`Catalog.build(params)`, shared by the simulations of the same parameters."""
    return Catalog.build(params)


class SessionShape(NamedTuple):
    """Mean events and simulated duration of one session; sets the arrival rate."""

    events_per_session: float
    duration_ms: float


def _session_params(params: TrafficParams) -> TrafficParams:
    return dataclasses.replace(params, rate=1.0, duplicate_share=0.0, out_of_order_share=0.0)


@lru_cache(maxsize=4)
def session_shape(params: TrafficParams, catalog: Catalog) -> SessionShape:
    """Estimate the session shape by simulating sessions with their own random stream.

    Click rates depend on tastes, prices and positions in ways no formula captures, so the
    mean event count is measured; every event after the first follows one think time, so
    the mean duration follows from it.
    """
    rng = random.Random(f"calibration/{params.seed}")
    model = SessionModel(params, catalog, rng)
    activity = zipf_cumulative(params.users, params.user_activity_exponent)
    profile_of = population(params).profile
    total = 0
    for _ in range(CALIBRATION_SESSIONS):
        profile = profile_of(bisect_right(activity, rng.random()))
        total += sum(1 for _ in model.session(profile, 1, 0, opens_app=True))
    events = total / CALIBRATION_SESSIONS
    return SessionShape(events, (events - 1) * model.mean_think_ms)


class SessionModel:
    """How one shopper behaves in one session; draws everything from one rng."""

    def __init__(
        self, params: TrafficParams, catalog: Catalog, rng: random.Random, id_salt: str = ""
    ) -> None:
        self.params = params
        self.rng = rng
        products = catalog.products
        self._ids = [p.product_id for p in products]
        self._categories = [p.category_id for p in products]
        self._prices = [p.price_paise for p in products]
        self._languages = [p.language for p in products]
        self._price_levels = [price_level(params, p.price_paise) for p in products]
        self._popular = catalog.popular_cumulative
        self._members = catalog.category_members
        self._decay = [position_decay(params, position) for position in range(_DECAY_POSITIONS)]
        # Views per session: 1 + geometric, so the number still to come is memoryless.
        keep_browsing = 1.0 - 1.0 / params.mean_views_per_session
        self._log_keep_browsing = math.log(keep_browsing) if keep_browsing > 0 else -math.inf
        #: Mean feed position of a session found under way (views already behind it).
        self.mean_views_before = params.mean_views_per_session - 1.0
        #: Pauses between a session's events: index with rng.getrandbits(THINK_BITS).
        self.think_table = _think_table(params)
        self.mean_think_ms = sum(self.think_table) / len(self.think_table)
        self.new_event_id = _event_ids(rng.getrandbits, id_salt)

    def session(  # noqa: PLR0912, PLR0915  (one flat generator, locals bound for speed)
        self, user: UserProfile, at_ms: int, first_position: int, *, opens_app: bool
    ) -> Iterator[Event]:
        """Events of one session from `at_ms`, the feed starting at `first_position`."""
        params = self.params
        random_ = self.rng.random
        getrandbits = self.rng.getrandbits
        new_id = self.new_event_id
        getrandbits = self.rng.getrandbits
        thinks = self.think_table
        ids, categories, prices = self._ids, self._categories, self._prices
        languages, price_levels = self._languages, self._price_levels
        popular, members = self._popular, self._members
        decay, last_position = self._decay, len(self._decay) - 1
        product_count = len(ids)
        uid, language, platform = user.user_id, user.language, user.platform
        affinity = dict(user.preferences)
        favourites = [category for category, _ in user.preferences if category in members]
        favourite_table = cumulative([affinity[c] for c in favourites]) if favourites else []
        popular_cut = params.popular_feed_share
        # Without a favourite in this catalog, those slots fall back to popular products.
        preferred_cut = popular_cut + params.preferred_feed_share
        if not favourites:
            popular_cut = preferred_cut
        elasticity = -user.price_sensitivity
        cart_chance = params.add_to_cart_after_click
        wishlist_chance = params.wishlist_after_click
        order_chance = params.order_after_add_to_cart
        remove_chance = params.remove_from_cart_after_view
        # (product index, feed position) carted, not yet ordered; made on the first add.
        cart: list[tuple[int, int]] | None = None
        t = at_ms
        if opens_app:
            yield Event(new_id(), uid, _APP_OPEN, t, None, None, None, None, platform, language)
            t += thinks[getrandbits(THINK_BITS)]
        views = 1 + int(math.log(1.0 - random_()) / self._log_keep_browsing)
        for position in range(first_position, first_position + views):
            slot = random_()
            if slot < popular_cut:
                item = bisect_right(popular, random_())
            elif slot < preferred_cut:
                indices, table = members[favourites[bisect_right(favourite_table, random_())]]
                item = indices[bisect_right(table, random_())]
            else:
                item = int(random_() * product_count)
            pid, category, price = ids[item], categories[item], prices[item]
            yield Event(new_id(), uid, _VIEW, t, pid, category, price, position, platform, language)
            t += thinks[getrandbits(THINK_BITS)]
            chance = click_probability(
                params,
                affinity.get(category, 0.0),
                elasticity * price_levels[item],
                decay[position if position < last_position else last_position],
                same_language=languages[item] == language,
            )
            if random_() < chance:
                yield Event(
                    new_id(), uid, _CLICK, t, pid, category, price, position, platform, language
                )
                t += thinks[getrandbits(THINK_BITS)]
                if random_() < cart_chance:
                    yield Event(
                        new_id(), uid, _ADD_TO_CART, t, pid, category, price, position,
                        platform, language, None, 1,
                    )  # fmt: skip
                    t += thinks[getrandbits(THINK_BITS)]
                    if random_() < order_chance:
                        quantity = 1 if random_() < 0.8 else 2 if random_() < 0.75 else 3
                        yield Event(
                            new_id(), uid, _ORDER, t, pid, category, price, position,
                            platform, language, f"o{getrandbits(64):016x}", quantity,
                        )  # fmt: skip
                        t += thinks[getrandbits(THINK_BITS)]
                    elif cart is None:
                        cart = [(item, position)]
                    else:
                        cart.append((item, position))
                if random_() < wishlist_chance:
                    yield Event(
                        new_id(), uid, _WISHLIST, t, pid, category, price, position,
                        platform, language,
                    )  # fmt: skip
                    t += thinks[getrandbits(THINK_BITS)]
            elif cart and random_() < remove_chance:
                gone, shown_at = cart.pop(int(random_() * len(cart)))
                yield Event(
                    new_id(), uid, _REMOVE_FROM_CART, t, ids[gone], categories[gone],
                    prices[gone], shown_at, platform, language,
                )  # fmt: skip
                t += thinks[getrandbits(THINK_BITS)]


def click_probability(
    params: TrafficParams,
    affinity: float,
    log_price_factor: float,
    position_decay: float,
    *,
    same_language: bool,
) -> float:
    """The chance that a shopper clicks a product shown to them: the behaviour the
    simulation draws from and the closed-loop benchmark's shoppers follow.

    `affinity` is the user's latent affinity for the product's category (0 to 1),
    `log_price_factor` is `-price_sensitivity * log(price / reference price)`
    (`price_level`), and `position_decay` is `position_decay(params, position)`."""
    price_factor = math.exp(log_price_factor)
    low, high = _PRICE_FACTOR_RANGE
    if price_factor < low:
        price_factor = low
    elif price_factor > high:
        price_factor = high
    chance = (
        params.base_click_probability
        * (1.0 + params.affinity_click_boost * affinity)
        * position_decay
        * price_factor
    )
    if not same_language:
        chance *= params.language_mismatch_factor
    return min(chance, _MAX_CLICK_PROBABILITY)


def price_level(params: TrafficParams, price_paise: int) -> float:
    """log(price / reference price): clicks scale with exp(-sensitivity * this)."""
    return math.log(max(price_paise, 1)) - math.log(params.reference_price_paise)


def position_decay(params: TrafficParams, position: int) -> float:
    """How much less a product is clicked at a feed position than at the top (0)."""
    return float((1 + min(position, _DECAY_POSITIONS - 1)) ** -params.position_decay_exponent)


def _think_table(params: TrafficParams) -> list[int]:
    """Quantiles of min + exponential pause (mean `mean_think_ms`), cut at `max_think_ms`.

    One table lookup per event instead of a log: 4096 levels are plenty for think times.
    """
    spread = params.mean_think_ms - params.min_think_ms
    cap = params.max_think_ms - params.min_think_ms
    levels = 1 << THINK_BITS
    return [
        params.min_think_ms + int(min(cap, -spread * math.log(1.0 - (level + 0.5) / levels)))
        for level in range(levels)
    ]


def _event_ids(getrandbits: Callable[[int], int], salt: str = "") -> Callable[[], str]:
    """Random version-4 UUID strings from the simulation's rng (3x faster than uuid.UUID),
    mixed with `salt` (the rng's draws, and so the rest of the stream, stay the same)."""
    mix = int.from_bytes(hashlib.blake2b(salt.encode(), digest_size=16).digest()) if salt else 0

    def new_event_id() -> str:
        bits = getrandbits(128) ^ mix
        digits = "%032x" % (bits & _UUID_CLEAR | _UUID_SET)  # %-format: fastest
        return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"

    return new_event_id


def synthetic_events(
    *, users: int, products: int, seed: int, start_ms: int, step_ms: float = 50
) -> Iterator[Event]:
    """The walking skeleton's generator interface, kept for callers written against it.

    `step_ms` was the spacing between events; here it sets the rate (1000 / step_ms events
    per simulated second). New code should build `TrafficParams` and call `simulate`.
    """
    if step_ms <= 0:
        raise ValueError(f"step_ms must be > 0, got {step_ms}")
    params = TrafficParams(users=users, products=products, seed=seed, rate=1000.0 / step_ms)
    return simulate(params, start_ms)
