"""Last-k interactions per user and type: the hot-tier key layout and the write plan.

The layout is a public contract (the feed service and other languages read it directly):

    <prefix>:{<user_id>}:<event_type>   sorted set, member = product id, score = event time (ms)

    <prefix>:{<user_id>}:v             string, the user's version: a time in us, +1 per
                                       batch, the next cold snapshot's write timestamp
    <prefix>:active:{p<N>}             sorted set per events-topic partition N of the users
                                       in the hot tier: member = user id, score = newest
                                       event time (ms) of their session

The `{user_id}` hash tag keeps all of a user's keys on one Redis Cluster slot, so one
user's writes can share a pipeline or a Lua script even on a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from schemas.events import PRODUCT_EVENT_TYPES, Event, EventType


@dataclass(frozen=True, slots=True)
class Interaction:
    """What the hot tier keeps of an event: who, what kind, which product, when."""

    user_id: str
    event_type: EventType
    product_id: str
    event_time_ms: int


def hot_key(prefix: str, user_id: str, event_type: EventType | str) -> str:
    return f"{prefix}:{{{user_id}}}:{EventType(event_type).value}"


def version_key(prefix: str, user_id: str) -> str:
    return f"{prefix}:{{{user_id}}}:v"


def active_key(prefix: str, partition: int) -> str:
    return f"{prefix}:active:{{p{partition}}}"


def interaction_of(event: Event) -> Interaction | None:
    """The hot-tier view of an event, or None for events without a product (app-open)."""
    if event.event_type not in PRODUCT_EVENT_TYPES or event.product_id is None:
        return None
    return Interaction(event.user_id, event.event_type, event.product_id, event.event_time_ms)


@dataclass(slots=True)
class KeyWrite:
    """Everything one batch does to one sorted set: add members, then keep the newest k."""

    key: str
    keep: int
    members: dict[str, int] = field(default_factory=dict)


def plan_writes(
    interactions: Iterable[Interaction], prefix: str, last_k: Mapping[EventType, int]
) -> list[KeyWrite]:
    """Group a batch into one write per sorted set.

    Within a batch the newest time per product wins, which is what `ZADD GT` does across
    batches, so replaying or reordering events never moves a product back in time.
    """
    writes: dict[str, KeyWrite] = {}
    for item in interactions:
        key = hot_key(prefix, item.user_id, item.event_type)
        write = writes.get(key)
        if write is None:
            write = writes[key] = KeyWrite(key=key, keep=last_k[item.event_type])
        previous = write.members.get(item.product_id)
        if previous is None or item.event_time_ms > previous:
            write.members[item.product_id] = item.event_time_ms
    return list(writes.values())


#: One remembered interaction in a last-k list: (product id, event time ms).
Item = tuple[str, int]


@dataclass(slots=True)
class UserLastK:
    """A user's last-k per type, newest first: what a flush moves and a re-hydration loads.

    `version` is the snapshot's cold write timestamp (microseconds, from the user's Redis
    version when flushed, the stored rows' WRITETIME when loaded; 0: none yet).
    """

    user_id: str
    items: dict[EventType, list[Item]] = field(default_factory=dict)
    version: int = field(default=0, compare=False)  # not content: equal lists are equal

    def newest_time_ms(self) -> int:
        """The most recent event time in the snapshot (0 when empty)."""
        return max((rows[0][1] for rows in self.items.values() if rows), default=0)


def merge_items(first: Iterable[Item], second: Iterable[Item], keep: int) -> list[Item]:
    """The newest `keep` of two last-k lists, newest first, one entry per product.

    The same rule as the sorted sets: a product's newest time wins, and ties on time are
    broken like Redis does (higher product id first; trimming drops the lowest), so the
    result equals what ZREVRANGE would return and never depends on argument order.
    """
    newest: dict[str, int] = {}
    for product_id, event_time_ms in (*first, *second):
        if event_time_ms > newest.get(product_id, -1):
            newest[product_id] = event_time_ms
    ranked = sorted(newest.items(), key=lambda item: (item[1], item[0]), reverse=True)
    return ranked[:keep]


def reference_last_k(
    events: Iterable[Event], last_k: Mapping[EventType, int]
) -> dict[tuple[str, EventType], list[Item]]:
    """The oracle: what every user's last-k per type must be after these events.

    Order, duplicates, session boundaries and tiers do not matter; only the events do.
    The stores (hot, cold, merged) are tested against this.
    """
    everything: dict[tuple[str, EventType], list[Item]] = {}
    for event in events:
        item = interaction_of(event)
        if item is not None:
            rows = everything.setdefault((item.user_id, item.event_type), [])
            rows.append((item.product_id, item.event_time_ms))
    return {
        (user_id, event_type): merge_items(rows, (), last_k[event_type])
        for (user_id, event_type), rows in everything.items()
    }


#: Bytes CPython spends on a snapshot, apart from its product ids' characters: the
#: object, its dict, and per type and per item (a list slot, a tuple, a str header, an
#: int); measured with tracemalloc by `tests/unit/test_lastk.py`.
SNAPSHOT_BYTES, TYPE_BYTES, ITEM_BYTES = 450, 30, 146


def approximate_bytes(snapshot: UserLastK) -> int:
    """What a snapshot costs in memory (within a few percent for ASCII product ids; ~5 KB
    for a realistic user, ~54 KB with every type full at the default k): what bounds the
    worker's cache of stored snapshots (`SessionKeeper.stored`)."""
    size = SNAPSHOT_BYTES + len(snapshot.user_id)
    for items in snapshot.items.values():
        size += TYPE_BYTES + ITEM_BYTES * len(items)
        size += sum(len(product_id) for product_id, _time in items)
    return size
