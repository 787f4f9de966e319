"""Helpers for the stack tests that drive the real worker and compare the merged hot +
cold state with the pure oracle (`schemas.hot_layout.reference_last_k`): the read side
(`Store`), sending events with times relative to now, and waiting for the state to settle.
The fixtures built on them (`session_settings`, `store`) are in `tests/stack/conftest.py`.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable

from schemas.events import PRODUCT_EVENT_TYPES, Event, EventType
from schemas.hot_layout import Item, reference_last_k
from sinks.events_producer import DeliveryReport, EventProducer
from sinks.interaction_reader import InteractionReader
from streams.bootstrap import build_interaction_reader
from streams.settings import Settings
from tests.conftest import wait_for

LAST_K = {"view": 4, "click": 3, "add_to_cart": 2, "remove_from_cart": 2, "wishlist": 2, "order": 2}
TYPES = sorted(PRODUCT_EVENT_TYPES)
GAP_S = 2.0
# Short session gap, quiet-partition grace and flush interval, so sessions end in seconds.
SESSION_ENV = {
    "SIGNALS_INACTIVITY_GAP_S": str(GAP_S),
    "SIGNALS_SESSION_IDLE_GRACE_S": "0.5",
    "SIGNALS_FLUSH_INTERVAL_S": "0.2",
    "SIGNALS_LAST_K": json.dumps(LAST_K),
}
SETTLE_S = 60.0
# Events are built with times relative to the moment they are sent: RELATIVE + offset
# (offset <= 0 for late events); `send_phase` makes them absolute.
RELATIVE = 1_000_000_000


class Store:
    """The read side of the test: one event loop, long-lived clients."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.reader: InteractionReader = build_interaction_reader(settings)

    def state(self, users: set[str]) -> dict[tuple[str, EventType], list[Item]]:
        async def read() -> dict[tuple[str, EventType], list[Item]]:
            found: dict[tuple[str, EventType], list[Item]] = {}
            for user in sorted(users):
                answer = await self.reader.last_k_many(user, TYPES, k=100)
                for event_type, items in answer.items.items():
                    if items:
                        found[(user, event_type)] = items
            return found

        return self.loop.run_until_complete(read())

    def tiers(self, users: set[str]) -> dict[str, str]:
        return {u: self.loop.run_until_complete(self.reader.tier_of(u)) for u in sorted(users)}

    def close(self) -> None:
        self.loop.run_until_complete(self.reader.close())
        self.loop.close()


def send_phase(
    settings: Settings, events: list[Event], on_delivery: set[int] | None = None
) -> list[Event]:
    """Send one phase with times relative to now; returns the events as sent (and adds
    the partitions they landed on to `on_delivery`)."""
    now_ms = int(time.time() * 1000)
    sent = [_at(event, now_ms + event.event_time_ms - RELATIVE) for event in events]
    landed = on_delivery if on_delivery is not None else set()

    def delivered(report: DeliveryReport) -> None:
        if report.partition is not None:
            landed.add(report.partition)

    with EventProducer(settings.kafka_bootstrap, settings.events_topic) as producer:
        for event in sent:
            producer.send(event, delivered)
    return sent


def _at(event: Event, event_time_ms: int) -> Event:
    return Event(
        event.event_id,
        event.user_id,
        event.event_type,
        event_time_ms,
        product_id=event.product_id,
        order_id=event.order_id,
    )


def settle(store: Store, sent: list[Event], on_fail: Callable[[], str]) -> None:
    """Wait until the merged state equals the oracle for everything sent so far."""
    expected = reference_last_k(sent, store.settings.last_k)
    users = {e.user_id for e in sent}
    wait_for(
        lambda: store.state(users) == expected,
        SETTLE_S,
        "the merged hot + cold state to equal the oracle",
        on_fail=lambda: difference(store, expected, users) + on_fail(),
    )


def difference(
    store: Store, expected: dict[tuple[str, EventType], list[Item]], users: set[str]
) -> str:
    got = store.state(users)
    tiers = store.tiers(users)
    lines = [
        f"  {user} {event_type.value} ({tiers[user]}): got {got.get((user, event_type))} "
        f"expected {expected.get((user, event_type))}"
        for user, event_type in sorted(set(got) | set(expected))
        if got.get((user, event_type)) != expected.get((user, event_type))
    ]
    return "differences:\n" + "\n".join(lines[:20]) + "\n"


def all_cold(store: Store, users: set[str], on_fail: Callable[[], str]) -> None:
    wait_for(
        lambda: set(store.tiers(users).values()) == {"cold"},
        SETTLE_S,
        "every session to end and be flushed to the cold tier",
        on_fail=lambda: f"tiers {store.tiers(users)}\n{on_fail()}",
    )


def random_events(rng: random.Random, tag: str, users: list[str], size: int) -> list[Event]:
    """`size` product events of random types for these users, up to 3 s late."""
    events = []
    for index in range(size):
        event_type = rng.choice(TYPES)
        events.append(
            Event(
                f"{tag}-{index}",
                rng.choice(users),
                event_type,
                RELATIVE - rng.randrange(3_000),
                product_id=f"p{rng.randrange(12)}",
                order_id="o" if event_type is EventType.ORDER else None,
            )
        )
    return events
