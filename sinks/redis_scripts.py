"""Running one Lua script over many keys, on a single Redis or a Redis Cluster.

A script may only touch keys of one hash slot on a cluster, so a batch becomes one call
per slot it touches (on a single Redis: one call), all sent in one non-transactional
pipeline: one round trip per node, whatever the number of users. Scripts go by EVALSHA;
a node that does not have the script yet (new, restarted, flushed) gets it loaded and the
calls it refused are sent again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from hashlib import sha1
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import NoScriptError

#: The clients the hot tier runs on: one Redis, or a Redis Cluster.
HotRedis = aioredis.Redis | aioredis.RedisCluster
#: (keys, args) of one script call.
ScriptCall = tuple[list[str], list[str | int | bytes]]

T = TypeVar("T")


def by_slot(client: HotRedis, items: Iterable[T], key_of: Callable[[T], str]) -> list[list[T]]:
    """`items` grouped so that each group may go to one script call: per hash slot of
    `key_of(item)` on a cluster, all together on a single Redis. Order within a group is kept."""
    if not isinstance(client, aioredis.RedisCluster):
        group = list(items)
        return [group] if group else []
    groups: dict[int, list[T]] = {}
    for item in items:
        groups.setdefault(key_slot(key_of(item).encode()), []).append(item)
    return list(groups.values())


class SlotScript:
    """A Lua script and how to run a batch of calls of it in one round trip per node."""

    def __init__(self, client: HotRedis, source: str) -> None:
        self._client = client
        self.source = source
        self.sha = sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def run(
        self, calls: Sequence[ScriptCall], extra: Sequence[tuple[Any, ...]] = ()
    ) -> list[Any]:
        """Each call's result, in order. `extra` raw commands ride in the same pipeline
        (their results are not returned). Raises the first error a call or command met."""
        if not calls and not extra:
            return []
        results = await self._send(calls, extra)
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            # Loads on every primary of a cluster; then resend only the refused calls.
            await self._client.script_load(self.source)
            retried = await self._send([calls[i] for i in missing], ())
            for i, result in zip(missing, retried, strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def _send(
        self, calls: Sequence[ScriptCall], extra: Sequence[tuple[Any, ...]]
    ) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                # The raw command: redis-py refuses pipe.evalsha on cluster pipelines, and
                # a cluster routes EVALSHA by its first key like any other command.
                pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
            for command in extra:
                pipe.execute_command(*command)
            results = await pipe.execute(raise_on_error=False)
        for result in results[len(calls) :]:
            if isinstance(result, Exception):
                raise result
        return list(results[: len(calls)])
