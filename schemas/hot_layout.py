"""Last-k interactions per user and type: the hot-tier key layout and the write plan.

The layout is a public contract (the feed service and other languages read it directly):

    <prefix>:{<user_id>}:<event_type>   sorted set, member = product id, score = event time (ms)

    <prefix>:{<user_id>}:v             string, the user's version: a time in us, +1 per
                                       batch, the next cold snapshot's write timestamp
    <prefix>:active:{p<N>}             sorted set per events-topic partition N of the users
                                       in the hot tier: member = user id, score = newest
                                       event time (ms) of their session
    <prefix>:coldidx:m<M>k<K>:{c<N>}   string (a bitmap) per bucket N < COLD_INDEX_BUCKETS:
                                       a Bloom filter of the users the cold tier may hold
                                       a snapshot of (`ColdIndexShape`); bit 0 = the bucket
                                       is complete (trusted), bits 1..M = K bits per user

The `{user_id}` hash tag keeps all of a user's keys on one Redis Cluster slot, so one
user's writes can share a pipeline or a Lua script even on a cluster.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from schemas.events import PRODUCT_EVENT_TYPES, Event, EventType


class Interaction(NamedTuple):
    """What the hot tier keeps of an event: who, what kind, which product, when.

    A named tuple, not a frozen dataclass: the worker builds one per event, and a frozen
    dataclass's constructor (one `object.__setattr__` per field) cost ~1 us more.
    """

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


#: Buckets of the cold-tier index: each its own key (and hash slot, on a cluster).
COLD_INDEX_BUCKETS = 64


@dataclass(frozen=True, slots=True)
class ColdIndexShape:
    """The cold-tier index: a Bloom filter, in buckets, of the users whose last-k the cold
    tier may hold, so that a user it has never stored is not read from it at
    re-hydration (a new user's first batch costs one Redis call instead of a CQL read).

    No false negatives, by construction: every cold write sets its users' bits first, and
    a bucket is trusted only once its bit 0 says it is complete (set when the cold tier
    was empty, or after a rebuild scanned it). A lost bucket key (a Redis restart, a
    cluster node's data) reads as incomplete: its users are read from the cold tier, as
    without the index. False positives (about `false_positive_rate` at `expected_users`)
    only cost the read the index would have saved.
    """

    bucket_bits: int  # M: bits per bucket after the completeness bit
    hashes: int  # K: bits per user

    @classmethod
    def sized(cls, expected_users: int, false_positive_rate: float) -> ColdIndexShape:
        """The standard Bloom filter sizes: M*B = -n ln p / ln(2)^2 bits, K = M*B/n ln 2."""
        total = math.ceil(-expected_users * math.log(false_positive_rate) / math.log(2) ** 2)
        bucket_bits = max(64, math.ceil(total / COLD_INDEX_BUCKETS))
        hashes = max(1, round(total / expected_users * math.log(2)))
        return cls(bucket_bits, hashes)

    def key(self, prefix: str, bucket: int) -> str:
        # The shape is in the name: bits set under another shape are never misread.
        return f"{prefix}:coldidx:m{self.bucket_bits}k{self.hashes}:{{c{bucket}}}"

    def bits(self, user_id: str) -> tuple[int, list[int]]:
        """The user's bucket and bit offsets in it: double hashing over one digest, in
        64-bit arithmetic (as `bits_of_many` computes it for a whole batch)."""
        first, step, bucket = _digest_words(user_id)
        m = self.bucket_bits
        return bucket % COLD_INDEX_BUCKETS, [
            1 + ((first + i * step) & _U64) % m for i in range(self.hashes)
        ]

    def bits_of_many(
        self, user_ids: Sequence[str]
    ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
        """`bits` for many users at once: their buckets, and a row of offsets per user."""
        words = np.frombuffer(
            b"".join(blake2b(u.encode(), digest_size=24).digest() for u in user_ids),
            dtype="<u8",
        ).reshape(-1, 3)
        first, step = words[:, 0], words[:, 1] | np.uint64(1)
        spread = np.arange(self.hashes, dtype=np.uint64)
        offsets = (first[:, None] + spread[None, :] * step[:, None]) % np.uint64(self.bucket_bits)
        return words[:, 2] % np.uint64(COLD_INDEX_BUCKETS), offsets + np.uint64(1)


_U64 = (1 << 64) - 1


def _digest_words(user_id: str) -> tuple[int, int, int]:
    digest = blake2b(user_id.encode(), digest_size=24).digest()
    return (
        int.from_bytes(digest[:8], "little"),
        int.from_bytes(digest[8:16], "little") | 1,
        int.from_bytes(digest[16:], "little"),
    )


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
    writes: dict[tuple[str, EventType], KeyWrite] = {}
    for user_id, event_type, product_id, event_time_ms in interactions:
        # Keyed by (user, type): the key's text is built once per set, not per event.
        write = writes.get((user_id, event_type))
        if write is None:
            write = writes[user_id, event_type] = KeyWrite(
                key=hot_key(prefix, user_id, event_type), keep=last_k[event_type]
            )
        members = write.members
        previous = members.get(product_id)
        if previous is None or event_time_ms > previous:
            members[product_id] = event_time_ms
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
