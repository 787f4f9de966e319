"""A hot user's keys live exactly as long as the user is in an active set (issue 17,
defects 3 and 4): nothing expires them meanwhile, however long the session or a worker's
outage, and the flush's eviction never leaves them behind outside every active set, even
when another worker writes to the user between the eviction's two steps."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from schemas.events import EventType
from schemas.hot_layout import hot_key
from streams.settings import Settings
from tests.conftest import on_backend
from tests.stack.harness import Worker

T0 = 1_760_000_000_000
VIEW, CLICK = EventType.VIEW, EventType.CLICK


@pytest.mark.parametrize("backend", ["single", "cluster"])
def test_no_key_of_a_user_in_an_active_set_expires(backend: str, provisioned: Settings) -> None:
    """A click, then only views: the click key (written once, long ago in a long session)
    and the version key carry no TTL, so the reader never answers "hot, click=[]" and the
    flush never writes an emptied list."""
    settings = on_backend(provisioned, backend, k=None)

    async def scenario() -> None:
        worker = Worker(settings)
        try:
            await worker.batch([("u1", CLICK, "c1", T0)])
            for step in range(1, 4):
                await worker.batch([("u1", VIEW, f"v{step}", T0 + step)])
            prefix = settings.redis_key_prefix
            keys = [
                hot_key(prefix, "u1", CLICK),
                hot_key(prefix, "u1", VIEW),
                worker.sessions.version_key("u1"),
            ]
            ttls = {key: await worker.client.ttl(key) for key in keys}
            assert ttls == {key: -1 for key in keys}, f"keys that would expire: {ttls}"
            assert await worker.flush() == 1
            assert await worker.cold_items("u1", CLICK) == [("c1", T0)]
        finally:
            await worker.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("backend", ["single", "cluster"])
def test_a_write_between_an_evictions_two_steps_keeps_the_user_findable(
    backend: str, provisioned: Settings
) -> None:
    """A rebalance: the partition's old owner is evicting u1 (keys deleted, not yet out of
    the active set) when the new owner applies a late event for u1. The new owner finds u1
    hot without keys and re-hydrates it; the old owner's second step must then leave u1 in
    the active set, or u1's keys (with the late event) would belong to no active set, no
    flush would ever find them, and their newest events would never reach the cold tier."""
    settings = on_backend(provisioned, backend, k=None)

    async def scenario() -> None:
        old_owner, new_owner = Worker(settings), Worker(settings)
        leave = old_owner.sessions._leave_script
        original = leave.run

        async def new_owner_writes_first(*args: Any, **kwargs: Any) -> Any:
            await new_owner.batch([("u1", VIEW, "late", T0 - 500)])
            return await original(*args, **kwargs)

        leave.run = new_owner_writes_first  # type: ignore[method-assign]
        try:
            await old_owner.batch([("u1", VIEW, "p1", T0)])
            assert await old_owner.flush() == 1  # stored, keys deleted, then the race
            assert new_owner.keeper.counters.hot_without_keys == 1
            assert await new_owner.hot_items("u1", VIEW) == [("p1", T0), ("late", T0 - 500)]
            assert await new_owner.is_active("u1"), "u1's keys belong to no active set"
            new_owner.newest_ms = T0 + 10  # the clock moves on; u1's score moved up 1 ms
            assert await new_owner.flush() == 1
            assert await new_owner.cold_items("u1", VIEW) == [("p1", T0), ("late", T0 - 500)]
            assert await new_owner.hot_items("u1", VIEW) == []
        finally:
            await old_owner.close()
            await new_owner.close()

    asyncio.run(scenario())
