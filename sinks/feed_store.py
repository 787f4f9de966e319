"""The served feeds on Redis (layout: `schemas.feed_layout`): the ranker writes, the feed
service reads."""

from __future__ import annotations

from collections.abc import Sequence

from schemas.feed_layout import FEED_TTL_MS, Feed, decode_feed, encode_feed, feed_key
from sinks.redis_scripts import HotRedis, SlotScript, by_slot

#: KEYS[1] the feed; ARGV[1] the new value, ARGV[2] its sequence, ARGV[3] the TTL. Writes
#: only over a feed of an earlier sequence (or none); returns 1 if written, 0 if stale.
_WRITE_LUA = """
local stored = redis.call('GETRANGE', KEYS[1], 0, 24)
local sequence = tonumber(string.match(stored, '^(%-?%d+)|'))
if sequence and sequence >= tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"""

#: KEYS the feeds; returns the head of each (its first 25 bytes, empty when missing): the
#: sequences of many users in one call (a pipeline costs ~10 us of Python per command).
_HEADS_LUA = """
local heads = {}
for i, key in ipairs(KEYS) do heads[i] = redis.call('GETRANGE', key, 0, 24) end
return heads
"""


class RedisFeedStore:
    def __init__(self, client: HotRedis, prefix: str, ttl_ms: int = FEED_TTL_MS) -> None:
        self._redis = client
        self._prefix = prefix
        self._ttl_ms = ttl_ms
        self._write = SlotScript(client, _WRITE_LUA)
        self._heads = SlotScript(client, _HEADS_LUA)

    async def write(self, feed: Feed) -> bool:
        """Store the feed unless one of the same or a later trigger is there already."""
        [written] = await self.write_many([feed])
        return written

    async def write_many(self, feeds: Sequence[Feed]) -> list[bool]:
        """`write` of each feed, in one round trip (one per node on a cluster)."""
        written = await self._write.run(
            [
                (
                    [feed_key(self._prefix, feed.user_id)],
                    [encode_feed(feed), feed.sequence, self._ttl_ms],
                )
                for feed in feeds
            ]
        )
        return [bool(result) for result in written]

    async def sequence(self, user_id: str) -> int | None:
        """The sequence of the user's stored feed (None: no feed): the ranker's stale check."""
        return _sequence_of(await self._redis.getrange(feed_key(self._prefix, user_id), 0, 24))

    async def sequences(self, user_ids: Sequence[str]) -> list[int | None]:
        """`sequence` of each user, in order, in one round trip (one script call per hash
        slot: one on a single Redis)."""
        keys = [feed_key(self._prefix, user_id) for user_id in user_ids]
        groups = by_slot(self._redis, range(len(keys)), keys.__getitem__)
        replies = await self._heads.run([([keys[i] for i in group], []) for group in groups])
        heads: list[int | None] = [None] * len(keys)
        for group, reply in zip(groups, replies, strict=True):
            for i, head in zip(group, reply, strict=True):
                heads[i] = _sequence_of(head)
        return heads

    async def read(self, user_id: str) -> Feed | None:
        value = await self._redis.get(feed_key(self._prefix, user_id))
        return decode_feed(user_id, value) if value is not None else None

    async def close(self) -> None:
        await self._redis.aclose()


def _sequence_of(head: bytes | str) -> int | None:
    """The sequence at the head of a stored feed (`<sequence>|...`); None: no feed."""
    text = head.decode() if isinstance(head, bytes) else str(head)
    number, bar, _ = text.partition("|")
    return int(number) if bar else None
