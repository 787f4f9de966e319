"""The served feeds on Redis (layout: `schemas.feed_layout`): the ranker writes, the feed
service reads."""

from __future__ import annotations

from schemas.feed_layout import FEED_TTL_MS, Feed, decode_feed, encode_feed, feed_key
from sinks.redis_scripts import HotRedis, SlotScript

#: KEYS[1] the feed; ARGV[1] the new value, ARGV[2] its sequence, ARGV[3] the TTL. Writes
#: only over a feed of an earlier sequence (or none); returns 1 if written, 0 if stale.
_WRITE_LUA = """
local stored = redis.call('GETRANGE', KEYS[1], 0, 24)
local sequence = tonumber(string.match(stored, '^(%-?%d+)|'))
if sequence and sequence >= tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"""


class RedisFeedStore:
    def __init__(self, client: HotRedis, prefix: str, ttl_ms: int = FEED_TTL_MS) -> None:
        self._redis = client
        self._prefix = prefix
        self._ttl_ms = ttl_ms
        self._write = SlotScript(client, _WRITE_LUA)

    async def write(self, feed: Feed) -> bool:
        """Store the feed unless one of the same or a later trigger is there already."""
        key = feed_key(self._prefix, feed.user_id)
        [written] = await self._write.run(
            [([key], [encode_feed(feed), feed.sequence, self._ttl_ms])]
        )
        return bool(written)

    async def sequence(self, user_id: str) -> int | None:
        """The sequence of the user's stored feed (None: no feed): the ranker's stale check."""
        head = await self._redis.getrange(feed_key(self._prefix, user_id), 0, 24)
        text = head.decode() if isinstance(head, bytes) else str(head)
        number, bar, _ = text.partition("|")
        return int(number) if bar else None

    async def read(self, user_id: str) -> Feed | None:
        value = await self._redis.get(feed_key(self._prefix, user_id))
        return decode_feed(user_id, value) if value is not None else None

    async def close(self) -> None:
        await self._redis.aclose()
