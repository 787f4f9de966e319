"""Who is in the hot tier, when they were last active, and moving them out safely.

Redis layout (documented in the README, readable from any language):

    <prefix>:active:{p<N>}   sorted set per events-topic partition N:
                             member = user id, score = newest event time (ms) of the session
    <prefix>:{<user>}:v      string, the user's version, a time in microseconds: starts
                             at the server's clock (above the stored snapshot's write
                             timestamp), +1 on every batch that touched the user, and
                             max(+1, clock) when a flush reads the user; the write
                             timestamp of their next cold snapshot, so it never repeats
                             or goes back (same hash tag as the user's last-k keys)

Users are marked active (and their versions bumped) by the batch write itself
(`RedisHotStore.record` with `activity`), in the same round trip as their last-k.
A batch treats a user as *hot* when they are in their partition's active set (one ZMSCORE
per partition); its write then checks that each of them still has a version key, since
an eviction interrupted between its two steps (keys deleted, then leaving the active set)
leaves the user in the set without keys (`sinks.hot_store.HotUsers`).
The active set is the per-partition index ordered by last activity: finding ended
sessions is one `ZRANGEBYSCORE` from the oldest end, never a scan of all users.

Eviction is conditional on both sides, so it can never throw away data it has not moved:
the user's keys are deleted only if their version is still the one whose data was written
to the cold tier, and the user leaves the active set only if their score is unchanged.
The two steps are on different slots of a cluster, so another worker can write to the
user in between (a rebalance): a write that finds the keys gone re-creates them and moves
the score up (`sinks.hot_store.RedisHotStore.record`), so the second step then leaves
the user in the active set, where the next flush finds them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from schemas.events import PRODUCT_EVENT_TYPES, EventType
from schemas.hot_layout import UserLastK, active_key, hot_key, version_key
from sinks.redis_scripts import SlotScript, by_slot

RedisClient = Redis | RedisCluster

#: Product types in a fixed order: the order of a user's keys in the eviction script.
_TYPES: tuple[EventType, ...] = tuple(t for t in EventType if t in PRODUCT_EVENT_TYPES)

_WIDTH = 1 + len(_TYPES)

# Many users of one slot. KEYS = per user: the version key, then the user's last-k keys in
# `_TYPES` order; ARGV = k per type in that order. Per user, the version becomes a new
# snapshot timestamp: the greater of version + 1 and the server's clock in microseconds,
# so a snapshot's timestamp is above every earlier one of the user and above the time of
# a DELETE issued before the read (an operator's, an erasure's). Returns per user: that
# version ('0' if the user has no version key: nothing to bump, and the eviction
# condition), the snapshot's timestamp (the clock then), then each set's newest k
# (a set longer than k, left by a larger k before a restart, is read as its newest k) as
# a flat member, score, ... list. `allow-oom`: its one write (the version, a few bytes)
# must go through when Redis is full (`maxmemory` with `noeviction`), since the flush is
# what frees it; a script without flags is refused at its first such write then.
_READ_USERS = f"""#!lua flags=allow-oom
local now = redis.call('TIME')
local clock = tonumber(now[1]) * 1000000 + tonumber(now[2])
local out = {{}}
for i = 1, #KEYS, {_WIDTH} do
  local version = redis.call('GET', KEYS[i])
  if version then
    version = math.max(tonumber(version) + 1, clock)
    version = string.format('%.0f', version)
    redis.call('SET', KEYS[i], version)
    out[#out + 1] = version
    out[#out + 1] = version
  else
    out[#out + 1] = '0'
    out[#out + 1] = string.format('%.0f', clock)
  end
  for j = 1, {_WIDTH - 1} do
    out[#out + 1] = redis.call('ZREVRANGE', KEYS[i + j], 0, tonumber(ARGV[j]) - 1, 'WITHSCORES')
  end
end
return out
"""

# Same KEYS; ARGV = the version each user was read at. Deletes a user's keys only if the
# version is unchanged (nothing written since the snapshot). Returns 1/0 per user.
_EVICT_USERS = f"""
local out = {{}}
for i = 1, #KEYS, {_WIDTH} do
  local user = (i - 1) / {_WIDTH} + 1
  local current = redis.call('GET', KEYS[i]) or '0'
  if current == ARGV[user] then
    redis.call('DEL', unpack(KEYS, i, i + {_WIDTH - 1}))
    out[user] = 1
  else
    out[user] = 0
  end
end
return out
"""

# KEYS[1] = active set; ARGV = user, score, user, score, ...; removes a user only if the
# score is still the one seen when the flush started (no newer activity since).
_LEAVE_ACTIVE = """
local removed = 0
for i = 1, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    redis.call('ZREM', KEYS[1], ARGV[i])
    removed = removed + 1
  end
end
return removed
"""


@dataclass(frozen=True, slots=True)
class EndedSession:
    """A user whose session is over, as seen when the flush started."""

    user_id: str
    partition: int
    last_activity_ms: int


@dataclass(frozen=True, slots=True)
class HotSnapshot:
    """A user's hot last-k plus the version it was read at (the eviction condition).

    `last_k.version` is the snapshot's cold write timestamp (`_READ_USERS`)."""

    session: EndedSession
    last_k: UserLastK
    version: str


class RedisSessions:
    """The active sets and the user versions, next to the last-k keys of `RedisHotStore`."""

    def __init__(self, client: RedisClient, prefix: str, last_k: Mapping[EventType, int]) -> None:
        self._redis = client
        self._prefix = prefix
        self._read_k: list[str | int | bytes] = [last_k[event_type] for event_type in _TYPES]
        self._read_script = SlotScript(client, _READ_USERS)
        self._evict_script = SlotScript(client, _EVICT_USERS)
        self._leave_script = SlotScript(client, _LEAVE_ACTIVE)

    def active_key(self, partition: int) -> str:
        return active_key(self._prefix, partition)

    def version_key(self, user_id: str) -> str:
        return version_key(self._prefix, user_id)

    async def hot_users(self, users_by_partition: Mapping[int, Sequence[str]]) -> set[str]:
        """Which of these users are in their partition's active set now (one round trip)."""
        scores = await self._active_scores(users_by_partition)
        return {user for (_partition, user), score in scores.items() if score is not None}

    async def _active_scores(
        self, users_by_partition: Mapping[int, Sequence[str]]
    ) -> dict[tuple[int, str], float | None]:
        """Each user's score in their partition's active set (None: not in it), one
        ZMSCORE per partition, all in one round trip."""
        order = [(p, list(users)) for p, users in users_by_partition.items() if users]
        if not order:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for partition, users in order:
                pipe.zmscore(self.active_key(partition), users)
            replies = await pipe.execute()
        return {
            (partition, user): score
            for (partition, users), scores in zip(order, replies, strict=True)
            for user, score in zip(users, scores, strict=True)
        }

    async def ended(self, partition: int, before_ms: int, limit: int) -> list[EndedSession]:
        """Sessions in this partition whose last activity is strictly before `before_ms`."""
        rows = cast(
            "list[tuple[bytes, float]]",
            await self._redis.zrangebyscore(
                self.active_key(partition),
                "-inf",
                f"({before_ms}",
                start=0,
                num=limit,
                withscores=True,
            ),
        )
        return [EndedSession(_text(user), partition, int(score)) for user, score in rows]

    async def newest_activity(self, partition: int) -> int | None:
        """The newest last-activity in a partition's active set (restores its clock)."""
        rows = await self._redis.zrevrange(self.active_key(partition), 0, 0, withscores=True)
        return int(rows[0][1]) if rows else None

    async def active_counts(self, partitions: Iterable[int]) -> dict[int, int]:
        """Users in each partition's active set (the hot sessions), one round trip."""
        chosen = sorted(partitions)
        if not chosen:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for partition in chosen:
                pipe.zcard(self.active_key(partition))
            replies = await pipe.execute()
        return {partition: int(n) for partition, n in zip(chosen, replies, strict=True)}

    async def snapshots(self, sessions: Sequence[EndedSession]) -> list[HotSnapshot]:
        """Read the ended users' last-k (the newest k per type) and versions, and give each
        snapshot its write timestamp: one script call per slot (on a single Redis, one call
        for all), so each user's version and sets are read atomically."""
        if not sessions:
            return []
        groups = by_slot(self._redis, sessions, lambda s: self.version_key(s.user_id))
        replies = await self._read_script.run(
            [
                ([key for s in group for key in self._user_keys(s.user_id)], self._read_k)
                for group in groups
            ]
        )
        width = _WIDTH + 1
        result = []
        for group, reply in zip(groups, replies, strict=True):
            for index, session in enumerate(group):
                version, written_at, *sets = reply[index * width : (index + 1) * width]
                items = {
                    event_type: [
                        (_text(rows[i]), int(float(rows[i + 1]))) for i in range(0, len(rows), 2)
                    ]
                    for event_type, rows in zip(_TYPES, sets, strict=True)
                    if rows
                }
                last_k = UserLastK(session.user_id, items, version=int(written_at))
                result.append(HotSnapshot(session, last_k, _text(version)))
        return result

    async def evict(self, snapshots: Sequence[HotSnapshot]) -> list[EndedSession]:
        """Remove users whose data is safely in the cold tier; returns those evicted.

        Call only after the cold write of exactly these snapshots was acknowledged, and
        with no batch writing meanwhile (the worker's `SessionKeeper.turn`). A user is
        evicted only if both their last activity (read by `ended`) and their version (read
        by `snapshots`, later) are unchanged: activity in between (new events after
        `ended`) keeps them hot, even when the snapshot already holds those events;
        otherwise the keys would go while the user stays in the active set, and their next
        batch would not re-hydrate them.
        """
        snapshots = await self._still_idle(snapshots)
        if not snapshots:
            return []
        groups = by_slot(self._redis, snapshots, lambda s: self.version_key(s.session.user_id))
        replies = await self._evict_script.run(
            [
                (
                    [key for s in group for key in self._user_keys(s.session.user_id)],
                    [s.version for s in group],
                )
                for group in groups
            ]
        )
        evicted = [
            snapshot.session
            for group, flags in zip(groups, replies, strict=True)
            for snapshot, ok in zip(group, flags, strict=True)
            if ok
        ]
        by_partition: dict[int, list[EndedSession]] = {}
        for session in evicted:
            by_partition.setdefault(session.partition, []).append(session)
        await self._leave_script.run(
            [
                (
                    [self.active_key(partition)],
                    [v for s in sessions for v in (s.user_id, str(s.last_activity_ms))],
                )
                for partition, sessions in by_partition.items()
            ]
        )
        return evicted

    async def _still_idle(self, snapshots: Sequence[HotSnapshot]) -> list[HotSnapshot]:
        """The snapshots whose user's active-set score is still the one `ended` read."""
        scores = await self._active_scores(
            group_by_partition((s.session.partition, s.session.user_id) for s in snapshots)
        )
        return [
            snapshot
            for snapshot in snapshots
            if (score := scores[(snapshot.session.partition, snapshot.session.user_id)]) is not None
            and int(score) == snapshot.session.last_activity_ms
        ]

    def _user_keys(self, user_id: str) -> list[str]:
        """The version key, then the last-k keys in `_TYPES` order (the scripts' layout)."""
        return [self.version_key(user_id)] + [
            hot_key(self._prefix, user_id, event_type) for event_type in _TYPES
        ]


#: A search by prefix stops after this many matches.
MAX_MATCHES = 200


async def recently_active(
    client: RedisClient, prefix: str, partitions: int, n: int, starting: str | None = None
) -> list[tuple[str, int]]:
    """The `n` most recently active hot-tier users over every partition's active set, as
    (user, newest event ms); with `starting`, those whose id starts with it (a ZSCAN per
    partition, at most MAX_MATCHES)."""
    keys = [active_key(prefix, p) for p in range(partitions)]
    found: dict[str, int] = {}
    if starting:
        pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in starting) + "*"
        for key in keys:
            async for member, score in client.zscan_iter(key, match=pattern, count=500):
                found[_text(member)] = int(score)
                if len(found) >= MAX_MATCHES:
                    break
    else:
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zrevrange(key, 0, n - 1, withscores=True)
            replies = await pipe.execute()
        for rows in replies:
            for member, score in rows:
                found[_text(member)] = int(score)
    return sorted(found.items(), key=lambda pair: (-pair[1], pair[0]))[:n]


async def random_hot_users(client: RedisClient, prefix: str, partitions: int, n: int) -> list[str]:
    """About `n` users drawn at random from the hot tier, the same share of each
    partition's active set (ZRANDMEMBER, one round trip)."""
    keys = [active_key(prefix, p) for p in range(partitions)]
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.zcard(key)
        sizes = [int(n) for n in await pipe.execute()]
    total = sum(sizes)
    if total == 0:
        return []
    async with client.pipeline(transaction=False) as pipe:
        for key, size in zip(keys, sizes, strict=True):
            pipe.zrandmember(key, max(1, round(n * size / total)) if size else 0)
        replies = await pipe.execute()
    return [_text(member) for members in replies if members for member in members]


def group_by_partition(pairs: Iterable[tuple[int, str]]) -> dict[int, list[str]]:
    grouped: dict[int, dict[str, None]] = {}
    for partition, user_id in pairs:
        grouped.setdefault(partition, {})[user_id] = None
    return {partition: list(users) for partition, users in grouped.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
