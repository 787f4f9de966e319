"""Who is in the hot tier, when they were last active, and moving them out safely.

Redis layout (documented in the README, readable from any language):

    <prefix>:active:{p<N>}   sorted set per events-topic partition N:
                             member = user id, score = newest event time (ms) of the session
    <prefix>:{<user>}:v      string, the user's write version: +1 on every batch that
                             touched the user (same hash tag as the user's last-k keys)

Users are marked active (and their versions bumped) by the batch write itself
(`RedisHotStore.record` with `activity`), in the same round trip as their last-k.
A user is *hot* exactly when they are in their partition's active set. The active set is
the per-partition index ordered by last activity: finding ended sessions is one
`ZRANGEBYSCORE` from the oldest end, never a scan of all users.

Eviction is conditional on both sides, so it can never throw away data it has not moved:
the user's keys are deleted only if their version is still the one whose data was written
to the cold tier, and the user leaves the active set only if their score is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from schemas.events import PRODUCT_EVENT_TYPES, EventType
from streams.logic.lastk import UserLastK, active_key, hot_key, version_key

RedisClient = Redis | RedisCluster

#: Product types in a fixed order: the order of a user's keys in the eviction script.
_TYPES: tuple[EventType, ...] = tuple(t for t in EventType if t in PRODUCT_EVENT_TYPES)

# KEYS[1] = version key, KEYS[2..] = the user's last-k keys; ARGV[1] = expected version.
_EVICT_USER = """
local current = redis.call('GET', KEYS[1]) or '0'
if current ~= ARGV[1] then return 0 end
redis.call('DEL', unpack(KEYS))
return 1
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
    """A user's hot last-k plus the version it was read at (the eviction condition)."""

    session: EndedSession
    last_k: UserLastK
    version: str


class RedisSessions:
    """The active sets and the user versions, next to the last-k keys of `RedisHotStore`."""

    def __init__(self, client: RedisClient, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix

    def active_key(self, partition: int) -> str:
        return active_key(self._prefix, partition)

    def version_key(self, user_id: str) -> str:
        return version_key(self._prefix, user_id)

    async def hot_users(self, users_by_partition: Mapping[int, Sequence[str]]) -> set[str]:
        """Which of these users are in the hot tier now (one round trip)."""
        order = [(p, list(users)) for p, users in users_by_partition.items() if users]
        if not order:
            return set()
        async with self._redis.pipeline(transaction=False) as pipe:
            for partition, users in order:
                pipe.zmscore(self.active_key(partition), users)
            replies = await pipe.execute()
        hot: set[str] = set()
        for (_partition, users), scores in zip(order, replies, strict=True):
            hot.update(user for user, score in zip(users, scores, strict=True) if score is not None)
        return hot

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

    async def snapshots(self, sessions: Sequence[EndedSession]) -> list[HotSnapshot]:
        """Read the ended users' last-k and versions (one round trip)."""
        if not sessions:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for session in sessions:
                pipe.get(self.version_key(session.user_id))
                for event_type in _TYPES:
                    pipe.zrevrange(
                        hot_key(self._prefix, session.user_id, event_type), 0, -1, withscores=True
                    )
            replies = await pipe.execute()
        width = 1 + len(_TYPES)
        result = []
        for index, session in enumerate(sessions):
            version, *sets = replies[index * width : (index + 1) * width]
            items = {
                event_type: [(_text(member), int(score)) for member, score in rows]
                for event_type, rows in zip(_TYPES, sets, strict=True)
                if rows
            }
            result.append(
                HotSnapshot(session, UserLastK(session.user_id, items), _text(version or b"0"))
            )
        return result

    async def evict(self, snapshots: Sequence[HotSnapshot]) -> list[EndedSession]:
        """Remove users whose data is safely in the cold tier; returns those evicted.

        Call only after the cold write of exactly these snapshots was acknowledged.
        """
        if not snapshots:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for snapshot in snapshots:
                user_id = snapshot.session.user_id
                keys = [self.version_key(user_id)] + [
                    hot_key(self._prefix, user_id, event_type) for event_type in _TYPES
                ]
                # EVAL, not EVALSHA: works in cluster pipelines and never hits NOSCRIPT.
                pipe.eval(_EVICT_USER, len(keys), *keys, snapshot.version)
            deleted = await pipe.execute()
        evicted = [s.session for s, ok in zip(snapshots, deleted, strict=True) if ok]
        by_partition: dict[int, list[EndedSession]] = {}
        for session in evicted:
            by_partition.setdefault(session.partition, []).append(session)
        if by_partition:
            async with self._redis.pipeline(transaction=False) as pipe:
                for partition, sessions in by_partition.items():
                    args = [
                        value for s in sessions for value in (s.user_id, str(s.last_activity_ms))
                    ]
                    pipe.eval(_LEAVE_ACTIVE, 1, self.active_key(partition), *args)
                await pipe.execute()
        return evicted


def group_by_partition(pairs: Iterable[tuple[int, str]]) -> dict[int, list[str]]:
    grouped: dict[int, dict[str, None]] = {}
    for partition, user_id in pairs:
        grouped.setdefault(partition, {})[user_id] = None
    return {partition: list(users) for partition, users in grouped.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
