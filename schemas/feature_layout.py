"""The online feature store's layout: a public contract, like the hot tier's.

    <prefix>:f:u:{<user_id>}     hash: one user's windowed counts, session and recency
    <prefix>:f:a:{<user_id>}     sorted set: the user's category affinity, member =
                                 category id, score = log2 decayed score (see below)
    <prefix>:f:p:{<product_id>}  hash: one product's windowed counts
    <prefix>:f:g                 hash: the same counts over every product (the global
                                 rates products are smoothed toward) and each events
                                 partition's watermark
    <prefix>:f:t:{<category_id>} sorted set: the category's trending products, member =
                                 product id, score = log2 decayed popularity
    <prefix>:f:tf:{<category_id>} hash: the fences of that sorted set

A user's keys carry the same hash tag as their last-k keys (one Redis Cluster slot), a
category's two keys share theirs. Ids in keys have `%`, `{` and `}` written as `%25`,
`%7B` and `%7D` (`key_part`), so no id can split or empty a hash tag.

Hash fields:

    n:<type>:<width>:<tile>   events of that type in tile <tile> = event time // width,
                              for the tile widths 1m, 5m and 1h (users: all three and
                              every type; products and the global hash: 5m and 1h of
                              view, click, add_to_cart and order)
    t                         the newest event time applied (ms)
    s, sn                     (users) the current session's start time and its events
    c:<category_id>           (users) the newest event time in that category
    e:<event_id>              (users) the offset the event was first read at: a later
                              record with the same id within DEDUPE_OFFSETS of it is a
                              duplicate and counts in no feature
    top, ts, ac               (users) the top category, its log2 score, and how many
                              categories the affinity set holds
    late                      (users) events beyond the allowed lateness, in no tile
    w:<partition>             (global) the newest event time the partition delivered
    o:<partition>             the highest events-topic offset of that partition applied
                              to this key: the fence
    pt                        the 5-minute step of the last pruning: tiles no window
                              at the newest event covers, categories out of the 24h
                              window and event ids beyond DEDUPE_OFFSETS are dropped

Decayed scores are stored as `L = log2(sum(w * 2 ** (t / h)))` (`schemas.features`): the
score at time T is `2 ** (L - T / h)`, and ordering by L is ordering by score at any T.

Every write is fenced: per key and source partition the write carries each event's
offset, and the script applies only events above the key's fence, then raises it. A
batch read again after a crash or a rebalance (in part or whole) changes nothing; a
user's events come from one partition, a product's from all, hence one fence per
partition. The fence lives in the key it guards (the affinity set in the user's hash,
a trending set in its `tf` hash), so check and write are one script call per slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from schemas.events import EventType

#: Tile widths by field name: the user windows' tiles (5 min in 1-min tiles, 1 h in 5-min
#: tiles, 24 h in 1-h tiles); products keep the last two.
TILE_WIDTHS: dict[str, int] = {"1m": 60_000, "5m": 300_000, "1h": 3_600_000}
WIDTH_NAMES: dict[int, str] = {width: name for name, width in TILE_WIDTHS.items()}
USER_TILE_WIDTHS = ("1m", "5m", "1h")
PRODUCT_TILE_WIDTHS = ("5m", "1h")
PRODUCT_COUNTED_TYPES = frozenset(
    {EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART, EventType.ORDER}
)
#: Old tiles are pruned from a hash at most once per this much event time.
PRUNE_EVERY_MS = 300_000
#: How far back (in offsets of the user's partition) a repeated event id is a duplicate:
#: an app's retry of an event it already sent is another record, at another offset, with
#: the same id. At 5k events/s over 8 partitions, 100,000 offsets are ~2.7 minutes.
DEDUPE_OFFSETS = 100_000

#: A counts hash expires this long after its last write: the longest window (24 h) plus
#: its tile (1 h), so every tile a read can cover outlives it, plus an hour of slack for
#: late events and clock skew.
COUNTER_TTL_MS = 26 * 3_600_000
#: Decayed sets expire this many half-lives after their last write: by then every score
#: in them is below 2^-10 of what it was, indistinguishable from gone.
DECAYED_TTL_HALF_LIVES = 10

LATE_FIELD = "late"
NEWEST_FIELD = "t"
SESSION_START_FIELD = "s"
SESSION_EVENTS_FIELD = "sn"


class WriteKind(StrEnum):
    """What the write script does with a key's events (its one-letter wire name)."""

    USER = "u"
    PRODUCT = "p"
    GLOBAL = "g"
    TRENDING = "t"


_NEEDS_ESCAPE = re.compile(r"[%{}]").search


def key_part(entity_id: str) -> str:
    """An id as it appears inside a key's hash tag."""
    if _NEEDS_ESCAPE(entity_id) is None:  # nearly always: one C call instead of three
        return entity_id
    return entity_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def user_features_key(prefix: str, user_id: str) -> str:
    return f"{prefix}:f:u:{{{key_part(user_id)}}}"


def user_affinity_key(prefix: str, user_id: str) -> str:
    return f"{prefix}:f:a:{{{key_part(user_id)}}}"


def product_features_key(prefix: str, product_id: str) -> str:
    return f"{prefix}:f:p:{{{key_part(product_id)}}}"


def global_features_key(prefix: str) -> str:
    return f"{prefix}:f:g"


def trending_key(prefix: str, category_id: str) -> str:
    return f"{prefix}:f:t:{{{key_part(category_id)}}}"


def trending_fence_key(prefix: str, category_id: str) -> str:
    return f"{prefix}:f:tf:{{{key_part(category_id)}}}"


def count_field(event_type: EventType | str, width: str, event_time_ms: int) -> str:
    return f"n:{EventType(event_type).value}:{width}:{event_time_ms // TILE_WIDTHS[width]}"


def category_field(category_id: str) -> str:
    return f"c:{category_id}"


def fence_field(partition: int) -> str:
    return f"o:{partition}"


def watermark_field(partition: int) -> str:
    return f"w:{partition}"


def too_late(event_time_ms: int, watermark_ms: int | None, allowed_lateness_ms: int) -> bool:
    """An event further behind its partition's watermark (the newest event time the
    partition delivered before it) than the allowed lateness: its tiles may have been read
    as final, so it is counted apart instead of added."""
    return watermark_ms is not None and event_time_ms < watermark_ms - allowed_lateness_ms


def advanced(watermark_ms: int | None, event_time_ms: int) -> int:
    """A partition's watermark after one more event."""
    return event_time_ms if watermark_ms is None else max(watermark_ms, event_time_ms)


class CountedEvent(NamedTuple):
    """What the features need of an event, with where it was read from (a named tuple:
    the worker builds one per event, and a frozen dataclass costs ~2.5 us more)."""

    user_id: str
    event_type: EventType
    event_time_ms: int
    product_id: str | None
    category_id: str | None
    partition: int
    offset: int
    event_id: str = ""


#: One event of a write: (partition, offset, event type, event time, member, too late,
#: event id). The member is the category (user writes), the product (trending writes) or
#: "" (none); the event id is sent with user writes only ("" otherwise).
WriteEvent = tuple[int, int, str, int, str, int, str]


@dataclass(slots=True)
class FencedWrite:
    """One key's share of a batch, in read order (each event names its partition: a
    product's come from all of them); `also` are the keys its fences also guard, in its
    slot (users: the affinity set; trending: the products)."""

    kind: WriteKind
    entity: str  # the user, product or category id ("" for the global hash)
    key: str
    partition: int  # of its first event (a user's events all come from one)
    also: tuple[str, ...] = ()
    events: list[WriteEvent] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return [self.key, *self.also]
