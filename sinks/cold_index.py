"""The cold-tier index on Redis: which users the cold tier may hold (`ColdIndexShape`).

Re-hydration reads the cold tier for every user of a batch who is not hot. For a user
the cold tier has never stored (a new user; every user of a fresh deployment or a
what-if run) that read finds nothing, and it was most of a worker's time on traffic
with many new users. The index answers "certainly not stored" from Redis, in the round
trip after the hot check, so those reads are skipped.

It never says "not stored" for a user who is: every cold write adds its users first
(`add`, before the CQL write; a crash in between leaves a harmless false positive), and
a bucket is trusted only when its completeness bit is set (`mark_complete`: when the cold
tier was empty, or after `signals cold-index rebuild` scanned it). A bucket key that is
gone reads as incomplete, so a Redis that lost its data falls back to reading everyone.
A check is one Lua call (one per bucket's hash slot on a cluster), in one pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence

import numpy as np

from schemas.hot_layout import COLD_INDEX_BUCKETS, ColdIndexShape
from sinks.redis_scripts import HotRedis, ScriptCall, SlotScript, by_slot

# KEYS = buckets (of one slot on a cluster; any on a single Redis); ARGV[1] = JSON: per
# bucket, a flat list of bit offsets, K per user; ARGV[2] = K. Returns per bucket -1 when
# it is not complete (every user may be stored), else the 0-based indexes of the users
# whose K bits are all set. One call for many buckets: a call's fixed cost (~17 us) was
# most of the index's Redis time with one call per bucket. Reads only: runs under OOM
# and on replicas.
_MAY_HOLD = """#!lua flags=no-writes
local lists = cjson.decode(ARGV[1])
local k = tonumber(ARGV[2])
local replies = {}
for b = 1, #KEYS do
  if redis.call('GETBIT', KEYS[b], 0) == 0 then
    replies[b] = -1
  else
    local bits = lists[b]
    local out = {}
    for user = 0, #bits / k - 1 do
      local all = true
      for j = 1, k do
        if redis.call('GETBIT', KEYS[b], bits[user * k + j]) == 0 then
          all = false
          break
        end
      end
      if all then
        out[#out + 1] = user
      end
    end
    replies[b] = out
  end
end
return replies
"""

# KEYS[1] = a bucket; ARGV[1] = JSON list of bit offsets to set. `allow-oom`: the flush
# adds its users before it writes them to the cold tier and evicts them, and the
# eviction is what frees a full Redis (`maxmemory` with `noeviction`), so this must not
# be refused then; a bucket grows at most to its size (`ColdIndexShape.bucket_bits`).
_ADD = """#!lua flags=allow-oom
for _, bit in ipairs(cjson.decode(ARGV[1])) do
  redis.call('SETBIT', KEYS[1], bit, 1)
end
return 0
"""

# KEYS = buckets. Sets each bucket's completeness bit (0).
_MARK_COMPLETE = """#!lua flags=allow-oom
redis.call('SETBIT', KEYS[1], 0, 1)
return 0
"""

# KEYS[1] = a bucket. 1 when its completeness bit is set.
_IS_COMPLETE = """#!lua flags=no-writes
return redis.call('GETBIT', KEYS[1], 0)
"""


#: Below this many users a call hashes them one by one: NumPy's fixed cost per call
#: (~0.1 ms) is more than a few users' hashing (a paced topic's small batches).
VECTOR_MIN_USERS = 64


class RedisColdIndex:
    """The index's buckets under `prefix`, with the given shape (from the settings)."""

    def __init__(self, client: HotRedis, prefix: str, shape: ColdIndexShape) -> None:
        self.shape = shape
        self._prefix = prefix
        self._client = client
        self._may_hold = SlotScript(client, _MAY_HOLD)
        self._add = SlotScript(client, _ADD)
        self._mark = SlotScript(client, _MARK_COMPLETE)
        self._is_complete = SlotScript(client, _IS_COMPLETE)

    def key(self, bucket: int) -> str:
        return self.shape.key(self._prefix, bucket)

    def _by_bucket(self, user_ids: Collection[str]) -> list[tuple[int, list[str], str]]:
        """Per bucket touched: its users and the JSON list of their bit offsets (K each)."""
        users = list(user_ids)
        if len(users) < VECTOR_MIN_USERS:
            grouped: dict[int, tuple[list[str], list[int]]] = {}
            for user in users:
                bucket, bits = self.shape.bits(user)
                group = grouped.setdefault(bucket, ([], []))
                group[0].append(user)
                group[1].extend(bits)
            return [(b, members, _json(bits)) for b, (members, bits) in grouped.items()]
        buckets, offsets = self.shape.bits_of_many(users)
        order = np.argsort(buckets, kind="stable")
        cuts = np.flatnonzero(np.diff(buckets[order])) + 1
        groups = []
        for rows in np.split(order, cuts):
            if len(rows):
                groups.append(
                    (
                        int(buckets[rows[0]]),
                        [users[i] for i in rows.tolist()],
                        _json(offsets[rows].ravel().tolist()),
                    )
                )
        return groups

    async def may_hold(self, user_ids: Collection[str]) -> list[str]:
        """The users the cold tier may hold a last-k of: all of those in an incomplete
        bucket, and those whose bits are all set in a complete one."""
        if not user_ids:
            return []
        calls = by_slot(self._client, self._by_bucket(user_ids), lambda g: self.key(g[0]))
        k = str(self.shape.hashes)
        replies = await self._may_hold.run(
            [
                (
                    [self.key(bucket) for bucket, _users, _bits in call],
                    ["[" + ",".join(bits for _b, _u, bits in call) + "]", k],
                )
                for call in calls
            ]
        )
        maybe: list[str] = []
        for call, reply in zip(calls, replies, strict=True):
            for (_bucket, users, _bits), found in zip(call, reply, strict=True):
                if found == -1:
                    maybe.extend(users)
                else:
                    maybe.extend(users[int(index)] for index in found)
        return maybe

    async def add(self, user_ids: Collection[str]) -> None:
        """Mark these users as (about to be) stored in the cold tier."""
        if not user_ids:
            return
        calls: list[ScriptCall] = [
            ([self.key(b)], [bits]) for b, _users, bits in self._by_bucket(user_ids)
        ]
        await self._add.run(calls)

    async def mark_complete(self) -> None:
        """Trust every bucket from now on: call only when every user the cold tier holds
        was added (it was empty, or a rebuild scanned it after cold writers started adding)."""
        await self._mark.run([([self.key(b)], []) for b in range(COLD_INDEX_BUCKETS)])

    async def complete_buckets(self) -> int:
        """How many buckets are trusted (all of them once built; fewer after data loss)."""
        replies = await self._is_complete.run(
            [([self.key(b)], []) for b in range(COLD_INDEX_BUCKETS)]
        )
        return sum(int(reply) for reply in replies)


def _json(bits: Sequence[int]) -> str:  # one argument: packed by json in C, not redis-py
    return json.dumps(bits, separators=(",", ":"))
