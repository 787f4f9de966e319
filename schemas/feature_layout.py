"""The online feature store's layout: a public contract, like the hot tier's.

    <prefix>:f:u:{<user_id>}     string: one user's features, `<fence>|<JSON>` (below)
    <prefix>:f:p:{<product_id>}  hash: one product's windowed counts
    <prefix>:f:g                 hash: the same counts over every product (the global
                                 rates products are smoothed toward) and each events
                                 partition's watermark
    <prefix>:f:t:{<category_id>} sorted set: the category's trending products, member =
                                 product id, score = log2 decayed popularity
    <prefix>:f:tf:{<category_id>} hash: the fences of that sorted set

A user's key carries the same hash tag as their last-k keys (one Redis Cluster slot), a
category's two keys share theirs. Ids in keys have `%`, `{` and `}` written as `%25`,
`%7B` and `%7D` (`key_part`), so no id can split or empty a hash tag.

A user's value is the highest offset of their events partition applied (the fence), a
`|`, and a JSON object (`schemas.features.encode_user_share`):

    p        the events partition the user's events come from
    t        the newest event time applied (ms); null before any
    s, sn    the current session's start time and its events
    late     events beyond the allowed lateness, in no tile
    pt       the 5-minute step of the last pruning (below)
    n        {"n:<type>:<width>:<tile>": events}: the tiles, for the widths 1m, 5m, 1h
    c        {category id: the newest event time in that category}
    e        {event id: the offset it was first read at}: a later record with the same
             id within DEDUPE_OFFSETS of it is a duplicate and counts in no feature
    a        {category id: log2 decayed affinity}, at most `affinity_keep` categories

The user's partition owns the value: the worker reads it, applies the batch in Python
(`schemas.features.advance_user`) and writes it back only if the stored fence is still
the one it read (a check-and-set in one script call), so a batch read again after a crash
or a rebalance changes nothing, and a worker that lost the partition cannot overwrite its
successor's writes. The key expires `DECAYED_TTL_HALF_LIVES` affinity half-lives after
its last write (the affinity must outlive the counts; reads ignore tiles out of window).

Product, global and trending-fence hash fields:

    n:<type>:<width>:<tile>   events of that type in tile <tile> = event time // width,
                              for the tile widths 5m and 1h, of view, click,
                              add_to_cart and order
    t                         the newest event time applied (ms)
    w:<partition>             (global) the newest event time the partition delivered
    o:<partition>             the highest events-topic offset of that partition applied
                              to this key: the fence
    pt                        the 5-minute step of the last pruning: tiles no window
                              at the newest event covers are dropped

Decayed scores are stored as `L = log2(sum(w * 2 ** (t / h)))` (`schemas.features`): the
score at time T is `2 ** (L - T / h)`, and ordering by L is ordering by score at any T.

These keys collect events from every partition, so they take increments, fenced: per key
and source partition a batch's events arrive as one group with their lowest and highest
offsets, and the script adds the group whole when all of it is above the key's fence for
that partition, skips it when none is, and otherwise hands it back to be cut at the fence
(only after a crash or a rebalance), then raises the fence. The fence lives in the key it
guards (a trending set's in its `tf` hash), so check and write are one script call per
slot. A hash's TTL is refreshed when its pruning step moves, so it outlives its last
write by at least COUNTER_TTL_MS.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import NamedTuple

from schemas.events import Event, EventType

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

    @classmethod
    def of(cls, event: Event, partition: int, offset: int) -> CountedEvent:
        """The features' view of an event read at `partition` and `offset`."""
        return cls(
            event.user_id,
            event.event_type,
            event.event_time_ms,
            event.product_id,
            event.category_id,
            partition,
            offset,
            event.event_id,
        )
