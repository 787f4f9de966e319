"""The cold tier's newest snapshot always wins, and deleting a user's rows really deletes
them (issue 17, defects 1, 2 and 7). A snapshot row's write timestamp decides which
snapshot a CQL server keeps; it used to be the sum of the items' event times, which
lowering k, a plain DELETE, a large k and equal sums all broke."""

from __future__ import annotations

import asyncio

from schemas.events import EventType
from streams.settings import Settings
from tests.stack.harness import Worker, cql_execute

VIEW = EventType.VIEW
T0 = 1_760_000_000_000


def with_k(settings: Settings, k: int) -> Settings:
    return settings.model_copy(update={"last_k": {**settings.last_k, VIEW: k}})


def test_lowering_k_keeps_every_later_snapshot(provisioned: Settings) -> None:
    """Flushed with view k=100, the user comes back twice under k=10: both new views are
    in the cold tier (the old sum-of-times timestamp kept the 100-item row for ever). A set
    longer than the new k is flushed as its newest k."""

    async def scenario() -> None:
        before = Worker(with_k(provisioned, 100))
        after = Worker(with_k(provisioned, 10))
        try:
            await before.batch([("u1", VIEW, f"p{i}", T0 + i) for i in range(100)])
            await before.batch([("u2", VIEW, f"p{i}", T0 + i) for i in range(100)])
            assert await before.flush() == 2
            assert len(await before.cold_items("u1", VIEW)) == 100
            # u2 is hot again, with 100 views, when the worker restarts with k=10.
            await before.batch([("u2", VIEW, "q0", T0 + 1_000)])
            assert len(await before.hot_items("u2", VIEW)) == 100

            after.newest_ms = T0 + 1_000
            assert await after.flush() == 1  # u2, read as its newest 10
            assert await after.cold_items("u2", VIEW) == [("q0", T0 + 1_000)] + [
                (f"p{i}", T0 + i) for i in range(99, 90, -1)
            ]
            for visit in (1, 2):
                await after.batch([("u1", VIEW, f"n{visit}", T0 + 10_000 * visit)])
                assert await after.flush() == 1
            assert await after.cold_items("u1", VIEW) == [
                ("n2", T0 + 20_000),
                ("n1", T0 + 10_000),
                *((f"p{i}", T0 + i) for i in range(99, 91, -1)),
            ]
        finally:
            await before.close()
            await after.close()

    asyncio.run(scenario())


def test_a_plain_delete_of_a_users_snapshot_removes_it_and_later_snapshots_show(
    provisioned: Settings,
) -> None:
    """An operator's (or an erasure's) DELETE at the current time removes the user's
    snapshot rows, with the default k and with a large one, and the user's next session
    is stored and read as usual afterwards."""

    async def scenario() -> None:
        small, large = Worker(provisioned), Worker(with_k(provisioned, 1500))
        try:
            await small.batch([("u1", VIEW, f"p{i}", T0 + i) for i in range(3)])
            await large.batch([("u2", VIEW, f"p{i}", T0 + i) for i in range(1500)])
            assert await small.flush() == 1
            assert await large.flush() == 1
            assert len(await large.cold_items("u2", VIEW)) == 1500
            for user in ("u1", "u2"):
                await asyncio.to_thread(
                    cql_execute, provisioned, "DELETE FROM lastk_by_user WHERE user_id = %s", [user]
                )
            assert await small.cold_items("u1", VIEW) == []
            assert await large.cold_items("u2", VIEW) == []

            await small.batch([("u1", VIEW, "back", T0 + 5_000)])
            assert await small.flush() == 1
            assert await small.cold_items("u1", VIEW) == [("back", T0 + 5_000)]
        finally:
            await small.close()
            await large.close()

    asyncio.run(scenario())


def test_a_newer_list_with_the_same_times_replaces_the_stored_one(
    provisioned: Settings,
) -> None:
    """With k=1, 'a"' then 'a#' at the same time: Redis keeps 'a#' (the higher member),
    and so must the cold tier. Both lists summed to the same timestamp, and the server
    then kept the larger blob, where JSON's escape (`"` is written `\\"`, and `\\` > `#`)
    ordered the lists unlike Redis."""

    async def scenario() -> None:
        worker = Worker(with_k(provisioned, 1))
        try:
            await worker.batch([("u1", VIEW, 'a"', T0)])
            assert await worker.flush() == 1
            await worker.batch([("u1", VIEW, "a#", T0)])
            assert await worker.hot_items("u1", VIEW) == [("a#", T0)]
            assert await worker.flush() == 1
            assert await worker.cold_items("u1", VIEW) == [("a#", T0)]
        finally:
            await worker.close()

    asyncio.run(scenario())
