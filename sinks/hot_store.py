"""The Redis hot tier: each user's last-k interactions per type in sorted sets.

The key layout and the write plan are pure (`schemas.hot_layout`); this adapter only
carries a plan out, one round trip (one Lua script call) per batch; on a Redis Cluster,
one round trip per node the batch touches.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, cast

import orjson
import redis.asyncio as aioredis
from redis.crc import key_slot

from schemas.events import EventType
from schemas.hot_layout import (
    Interaction,
    KeyWrite,
    active_key,
    hot_key,
    plan_writes,
    version_key,
)
from sinks.redis_scripts import HotRedis, ScriptCall, SlotScript

log = logging.getLogger(__name__)

#: Partition -> user -> newest event time of that user in a batch.
Activity = Mapping[int, Mapping[str, int]]


@dataclass(frozen=True, slots=True)
class Rehydrated:
    """Users' cold last-k as interactions to write, and per user the write timestamp of
    their stored snapshot: the version their keys start at must be above it (a version
    is the next snapshot's write timestamp, and must win over the stored one even if the
    Redis server's clock is behind the one that wrote it)."""

    rows: Sequence[Interaction] = ()
    floors: Mapping[str, int] = field(default_factory=dict)


#: Loads these users' cold last-k (re-hydration).
Rehydrate = Callable[[Collection[str]], Awaitable[Rehydrated]]

T = TypeVar("T")


class Retry(Protocol):
    """Runs a call until it succeeds (the worker's `until_applied`), or just once."""

    def __call__(self, call: Callable[[], Awaitable[T]], /) -> Awaitable[T]: ...


async def run_once(call: Callable[[], Awaitable[T]]) -> T:
    return await call()


@dataclass(frozen=True, slots=True)
class HotUsers:
    """The users of a batch its caller found hot (so it loaded no history for them), and
    how to load their history if their keys turn out to be gone.

    Found hot means in the partition's active set. Their keys can still be gone: an
    eviction deletes a user's keys, then removes them from the active set, and a crash or
    an error between the two steps leaves them in the set without keys. And during a
    rebalance the partition's previous owner, still flushing, can evict a user between
    this worker's hot check and its write (the lock that orders them is per worker). The
    write checks, in the same script call, that each of these users still has a version
    key. Every one of them must be in the batch's activity.
    `retry` runs the history load and the second write: the first write's effects (the
    applied counter on a cluster) must not be repeated by a retry of the whole call.
    """

    users: Collection[str]
    rehydrate: Rehydrate
    retry: Retry = run_once


class HotStore(Protocol):
    """What the agents and readers need from the hot tier."""

    async def record(
        self,
        interactions: Sequence[Interaction],
        activity: Activity | None = None,
        *,
        counted: int | None = None,
        hot: HotUsers | None = None,
        floors: Mapping[str, int] | None = None,
    ) -> int:
        """Apply a batch idempotently; returns how many interactions were counted."""
        ...

    async def last_k(self, user_id: str, event_type: EventType, k: int) -> list[tuple[str, int]]:
        """Newest first: (product id, event time ms)."""
        ...

    async def last_k_many(
        self, user_id: str, event_types: Sequence[EventType], k: int
    ) -> list[list[tuple[str, int]]]:
        """`last_k` of each type, in order, in one round trip."""
        ...

    async def last_k_users(
        self, user_ids: Sequence[str], event_types: Sequence[EventType], k: int
    ) -> list[list[list[tuple[str, int]]]]:
        """`last_k_many` of each user, in order, in one round trip (one per node)."""
        ...

    async def close(self) -> None: ...


class RedisHotStore:
    """HotStore on a single Redis or a Redis Cluster (keys carry a per-user hash tag).

    A user's keys have no TTL: they stay exactly as long as the user is in an active set
    and leave Redis only through the session flush, after their cold write was
    acknowledged (`sinks.hot_sessions`). An expiry would drop the types a long session
    (or a worker outage) had not written lately, and the flush would then store the
    emptied lists.
    """

    def __init__(self, client: HotRedis, prefix: str, last_k: Mapping[EventType, int]) -> None:
        self._redis = client
        self._prefix = prefix
        self._last_k = dict(last_k)
        self._script = client.register_script(_APPLY_LUA)
        self._cluster_script = SlotScript(client, _APPLY_LUA)
        self._one_slot = not isinstance(client, aioredis.RedisCluster)

    @property
    def stats_key(self) -> str:
        """Counter of interactions applied, read by the demo and the benchmark."""
        return f"{self._prefix}:stats:applied"

    async def record(
        self,
        interactions: Sequence[Interaction],
        activity: Activity | None = None,
        *,
        counted: int | None = None,
        hot: HotUsers | None = None,
        floors: Mapping[str, int] | None = None,
    ) -> int:
        """Apply a batch in one round trip (one per node on a cluster).

        `activity` (partition -> user -> newest event time) marks those users active in
        their partition's active set and bumps their versions in the same call, so a user
        is never in the hot tier without being findable by the session flush. `counted`
        is what the applied counter grows by (default: every interaction; re-hydrated
        history is written but not counted). `floors` (user -> the write timestamp of
        their stored snapshot, from re-hydration) keep their versions above it.

        `hot` users must still have their keys: a script call (the whole batch on a single
        Redis, one slot on a cluster) that finds one of them without a version key writes
        nothing; those users are re-hydrated through `hot.rehydrate` and the batch is
        applied again with their history. The check is one EXISTS per hot user inside the
        script: no extra round trip. That second write also moves each such user's score
        in the active set up (by 1 ms if their events are older than it), so an eviction
        whose keys step already ran cannot then take them out of the set: its leave step
        only removes an unchanged score.
        """
        applied = len(interactions) if counted is None else counted
        activity = activity or {}
        if not interactions and not any(activity.values()):
            return 0
        expected = set(hot.users) if hot is not None else set()
        plan = _Plan(interactions, activity, expected, dict(floors or {}), set(), applied)
        missing = await self._apply(plan)
        # Only `hot` users are checked, so without them nothing is ever missing.
        while missing and hot is not None:
            log.warning(
                "%d users were in the active set without their keys (an interrupted "
                "eviction, or another worker's eviction during a rebalance): "
                "re-hydrating them before applying their events",
                len(missing),
            )
            history = await hot.retry(functools.partial(hot.rehydrate, missing))
            plan = _Plan(
                [*history.rows, *plan.interactions],
                activity,
                plan.expected - missing,
                {**plan.floors, **history.floors},
                plan.touched | missing,
                # The cluster's counter went beside the refused calls: already counted.
                plan.applied if self._one_slot else 0,
            )
            missing = await hot.retry(functools.partial(self._apply, plan))
        return applied

    async def _apply(self, plan: _Plan) -> set[str]:
        """One attempt; returns the expected-hot users whose keys were gone (their script
        calls wrote nothing)."""
        writes = plan_writes(plan.interactions, self._prefix, self._last_k)
        versions = _Versions()
        owners: dict[str, str] = {}  # checked version key -> user
        for partition, latest in plan.activity.items():
            if not latest:
                continue
            key = active_key(self._prefix, partition)
            moved = {user: at for user, at in latest.items() if user in plan.touched}
            if len(moved) < len(latest):
                members = {user: at for user, at in latest.items() if user not in moved}
                writes.append(KeyWrite(key=key, keep=_ACTIVE, members=members))
            if moved:
                writes.append(KeyWrite(key=key, keep=_ACTIVE_MOVED, members=moved))
            for user_id in latest:
                key = version_key(self._prefix, user_id)
                if user_id in plan.floors:
                    versions.floors[key] = plan.floors[user_id]
                if user_id in plan.expected:
                    versions.checked.append(key)
                    owners[key] = user_id
                else:
                    versions.unchecked.append(key)
        if len(owners) != len(plan.expected):
            # A hot user outside the activity would go unchecked: a caller's mistake.
            raise ValueError("every user in `hot` must be in the batch's activity")
        if not writes:
            return set()
        if self._one_slot:
            # One script call for the whole batch: with a pipeline, redis-py's per-command
            # cost (3 commands per key, packed and parsed in Python) was most of the write.
            keys, args = self._script_call(writes, versions, self.stats_key, plan.applied)
            refused = await self._script(keys=keys, args=args)
            return _missing_users(refused, owners)
        return await self._apply_on_cluster(writes, versions, owners, plan.applied)

    async def _apply_on_cluster(
        self,
        writes: Sequence[KeyWrite],
        versions: _Versions,
        owners: Mapping[str, str],
        applied: int,
    ) -> set[str]:
        """A script may only touch one slot: one call per slot (a user's hash tag or a
        partition's), all in one pipeline; the counter (another slot) goes beside them."""
        by_slot: dict[int, tuple[list[KeyWrite], _Versions]] = {}

        def group_of(key: str) -> tuple[list[KeyWrite], _Versions]:
            slot = key_slot(key.encode())
            group = by_slot.get(slot)
            if group is None:
                group = by_slot[slot] = ([], _Versions())
            return group

        for write in writes:
            group_of(write.key)[0].append(write)
        for key in versions.checked:
            group_of(key)[1].checked.append(key)
        for key in versions.unchecked:
            group_of(key)[1].unchecked.append(key)
        for key, floor in versions.floors.items():
            group_of(key)[1].floors[key] = floor
        calls = []
        for group, group_versions in by_slot.values():
            # The first key only routes the call; with a count of 0 it is left alone.
            router = (
                group[0].key if group else (group_versions.checked or group_versions.unchecked)[0]
            )
            calls.append(self._script_call(group, group_versions, router, 0))
        counter = [("INCRBY", self.stats_key, applied)] if applied else []
        results = await self._cluster_script.run(calls, extra=counter)
        return {user for refused in results for user in _missing_users(refused, owners)}

    def _script_call(
        self, writes: Sequence[KeyWrite], versions: _Versions, counter: str, applied: int
    ) -> ScriptCall:
        """KEYS and the one JSON argument of `_APPLY_LUA`."""
        version_keys = [*versions.checked, *versions.unchecked]
        keys = [counter, *(write.key for write in writes), *version_keys]
        first = len(writes) + 2  # 1-based index in KEYS of the first version key
        index = {key: first + i for i, key in enumerate(version_keys)} if versions.floors else {}
        floors = [[index[key], floor] for key, floor in versions.floors.items()]
        entries = []
        for write in writes:
            flat: list[str] = []
            for member, score in write.members.items():
                flat += (str(score), member)  # a string: see `_APPLY_LUA`
            entries.append([write.keep, flat])
        batch = [applied, len(versions.checked), floors, entries]
        return keys, [orjson.dumps(batch)]

    async def last_k(self, user_id: str, event_type: EventType, k: int) -> list[tuple[str, int]]:
        key = hot_key(self._prefix, user_id, event_type)
        rows = cast(
            "list[tuple[bytes, float]]", await self._redis.zrevrange(key, 0, k - 1, withscores=True)
        )
        return [(_text(member), int(score)) for member, score in rows]

    async def last_k_many(
        self, user_id: str, event_types: Sequence[EventType], k: int
    ) -> list[list[tuple[str, int]]]:
        # One pipeline: a user's keys share a hash tag, so on a cluster it is one node too.
        [lists] = await self.last_k_users([user_id], event_types, k)
        return lists

    async def last_k_users(
        self, user_ids: Sequence[str], event_types: Sequence[EventType], k: int
    ) -> list[list[list[tuple[str, int]]]]:
        if not user_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                for event_type in event_types:
                    pipe.zrevrange(
                        hot_key(self._prefix, user_id, event_type), 0, k - 1, withscores=True
                    )
            replies = cast("list[list[tuple[bytes, float]]]", await pipe.execute())
        lists = [[(_text(member), int(score)) for member, score in rows] for rows in replies]
        width = len(event_types)
        return [lists[i : i + width] for i in range(0, len(lists), width)]

    async def close(self) -> None:
        await self._redis.aclose()

    async def applied_count(self) -> int:
        value = await self._redis.get(self.stats_key)
        return int(value or 0)


#: `KeyWrite.keep` of an active set: ZADD GT (a session's end never moves back).
_ACTIVE = 0
#: `KeyWrite.keep` of an active set's members that must change score: each becomes the
#: greater of its event time and its current score + 1.
_ACTIVE_MOVED = -1

#: One batch in one round trip. KEYS[1] is the applied counter (left alone when the count
#: is 0; on a cluster it is just the call's first key, for routing), then one key per
#: sorted-set write, then version keys, the first `checked` of them of users the caller
#: found hot. ARGV[1] is JSON: [applied count, checked, [[version key's index in KEYS,
#: floor], ...], [[keep, [score, member, score, member, ...]], ...]] with one entry per
#: write key, in KEYS order. One JSON argument, not one argument per member and score:
#: each argument costs the client a packing step (in Python on the cluster client) and
#: the server an argument object, while orjson encodes in C and cjson decodes in C;
#: each write's flat pairs go to ZADD straight from the decoded array (`unpack`),
#: without a Lua loop per member. Scores are event times in ms sent as JSON
#: strings, so they reach ZADD as they were written: as JSON numbers, cjson parsed each
#: into a double and `redis.call` formatted it back into a string for ZADD to parse
#: again, about a quarter of the script's time on batches replayed from the peers bench.
#: Versions first, one INCR per version key (the call count per event is most of the
#: script's cost): a new one (INCR gives 1) starts at the server's clock in microseconds,
#: and a floor (the stored snapshot's write timestamp) lifts it above that. The version
#: is the write timestamp of the user's next cold snapshot (`sinks.hot_sessions`), so it
#: must never repeat or go back, also across evictions (an eviction retried with the
#: version of before must not match the keys a new session wrote since). A checked key
#: that INCR finds missing (it gives 1) means that user's keys were evicted: the script
#: then deletes the version keys it just created, writes nothing else (the other bumps
#: only change versions: harmless) and returns the missing keys. Versions are written
#: with %.0f: Lua numbers are doubles, exact for integers below 2^53 (year 2255 in us).
#: Per last-k key (keep > 0): ZADD GT (a redelivered or late event never moves a product
#: back in time; new members are always added), then keep only the newest `keep` by score
#: (event time). Per active set (keep = 0): ZADD GT only; (keep = -1) every member's
#: score goes up (see `RedisHotStore.record`). No key gets a TTL. At most 1000 pairs per
#: ZADD (Lua's unpack limit). Idempotent except the version bump, which only has to
#: change. Returns the missing version keys (empty when written).
_APPLY_LUA = """
local batch = cjson.decode(ARGV[1])
local writes = batch[4]
local first = #writes + 2
local checked = first + batch[2]
local created = {}
local missing = {}
for i = first, #KEYS do
  if redis.call('INCR', KEYS[i]) == 1 then
    created[#created + 1] = i
    if i < checked then
      missing[#missing + 1] = KEYS[i]
    end
  end
end
if #missing > 0 then
  for _, i in ipairs(created) do
    redis.call('DEL', KEYS[i])
  end
  return missing
end
if #created > 0 then
  local now = redis.call('TIME')
  local clock = string.format('%.0f', tonumber(now[1]) * 1000000 + tonumber(now[2]))
  for _, i in ipairs(created) do
    redis.call('SET', KEYS[i], clock)
  end
end
for _, floor in ipairs(batch[3]) do
  if tonumber(redis.call('GET', KEYS[floor[1]])) <= floor[2] then
    redis.call('SET', KEYS[floor[1]], string.format('%.0f', floor[2] + 1))
  end
end
for w = 1, #writes do
  local key = KEYS[w + 1]
  local keep = writes[w][1]
  local flat = writes[w][2]
  if keep < 0 then
    for i = 1, #flat, 2 do
      local score = tonumber(flat[i])
      local current = tonumber(redis.call('ZSCORE', key, flat[i + 1]))
      if current and current >= score then
        score = current + 1
      end
      redis.call('ZADD', key, score, flat[i + 1])
    end
  else
    for i = 1, #flat, 2000 do
      redis.call('ZADD', key, 'GT', unpack(flat, i, math.min(i + 1999, #flat)))
    end
    if keep > 0 then
      redis.call('ZREMRANGEBYRANK', key, 0, -(keep + 1))
    end
  end
end
if batch[1] > 0 then
  redis.call('INCRBY', KEYS[1], batch[1])
end
return missing
"""


@dataclass(frozen=True, slots=True)
class _Plan:
    """One attempt at a batch: what to write, whom to check, lift and move up."""

    interactions: Sequence[Interaction]
    activity: Activity
    expected: set[str]  # users found hot: their version key must exist
    floors: dict[str, int]  # user -> their version must be above this
    touched: set[str]  # users whose active-set score must change
    applied: int


@dataclass(slots=True)
class _Versions:
    """The version keys a batch bumps: of users found hot (checked: they must exist) and
    of the others."""

    checked: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    floors: dict[str, int] = field(default_factory=dict)  # version key -> floor


def _missing_users(refused: object, owners: Mapping[str, str]) -> set[str]:
    """The users whose version keys a script call reported missing."""
    return {owners[_text(key)] for key in cast("list[bytes | str]", refused or [])}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
