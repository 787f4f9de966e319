"""A small deterministic traffic generator for the walking skeleton.

Each user browses in sessions: an app-open, views of products at feed positions, and
now and then a click, add-to-cart, wishlist or order on something they viewed. The
realistic generator (catalog, preferences, duplicates, reordering) replaces this in the
contracts issue; its interface (an iterator of Events from a seed) stays.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator

from schemas.events import Event, EventType

_FOLLOW_UPS: list[tuple[EventType, float]] = [
    (EventType.CLICK, 0.30),
    (EventType.ADD_TO_CART, 0.08),
    (EventType.WISHLIST, 0.05),
    (EventType.ORDER, 0.02),
]


def user_ids(users: int) -> list[str]:
    return [f"u{index:06d}" for index in range(users)]


def synthetic_events(
    *,
    users: int,
    products: int,
    seed: int,
    start_ms: int,
    step_ms: int = 50,
    clock_ms: Callable[[], int] | None = None,
) -> Iterator[Event]:
    """An endless, reproducible stream of events.

    Event time advances `step_ms` per event from `start_ms`; with `clock_ms` (live
    traffic) it is the clock's reading instead, so events are stamped when they are sent.
    """
    rng = random.Random(seed)
    ids = user_ids(users)
    simulated = start_ms

    def now() -> int:
        nonlocal simulated
        simulated += step_ms
        return clock_ms() if clock_ms is not None else simulated

    while True:
        user = rng.choice(ids)
        yield _event(rng, user, EventType.APP_OPEN, now(), None)
        for position in range(rng.randint(1, 8)):
            product = f"p{int(rng.paretovariate(1.2)) % products:06d}"
            yield _event(rng, user, EventType.VIEW, now(), product, position)
            for event_type, probability in _FOLLOW_UPS:
                if rng.random() < probability:
                    yield _event(rng, user, event_type, now(), product, position)


def _event(  # noqa: PLR0917  (private helper, every call site is in this module)
    rng: random.Random,
    user: str,
    event_type: EventType,
    at_ms: int,
    product: str | None,
    position: int | None = None,
) -> Event:
    return Event(
        event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        user_id=user,
        event_type=event_type,
        event_time_ms=at_ms,
        product_id=product,
        category_id=None if product is None else f"c{int(product[1:]) % 40:03d}",
        price_paise=None if product is None else 9900 + int(product[1:]) % 50 * 1000,
        feed_position=position,
        order_id=f"o-{rng.getrandbits(48):012x}" if event_type is EventType.ORDER else None,
        quantity=1 if event_type in (EventType.ORDER, EventType.ADD_TO_CART) else None,
    )
