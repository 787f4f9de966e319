"""The largest users the contract allows fit what the CQL server accepts (issue 17): every
type at the largest k with the longest product ids, flushed together and re-hydrated in
one read, against Cassandra 5 run with its own default batch failure threshold (50 KiB,
the stricter of it and ScyllaDB's 1 MiB; `infra/cassandra_server.py`)."""

from __future__ import annotations

import asyncio

from schemas.events import MAX_PRODUCT_ID_BYTES, PRODUCT_EVENT_TYPES
from schemas.hot_layout import Item
from streams.settings import MAX_LAST_K, Settings
from tests.stack.harness import Worker

T0 = 1_760_000_000_000
USERS = ["big-1", "big-2", "big-3"]


def longest_product_id(number: int) -> str:
    """A product id of exactly MAX_PRODUCT_ID_BYTES in UTF-8 whose JSON is as long as any
    valid id's: `"` is written as two bytes (printable ids have no longer escape)."""
    tail = f"-{number}"
    product_id = '"' * (MAX_PRODUCT_ID_BYTES - len(tail)) + tail
    assert len(product_id.encode()) == MAX_PRODUCT_ID_BYTES and product_id.isprintable()
    return product_id


def test_users_at_every_limit_are_flushed_and_re_hydrated_whole(provisioned: Settings) -> None:
    settings = provisioned.model_copy(
        update={"last_k": dict.fromkeys(provisioned.last_k, MAX_LAST_K)}
    )
    types = sorted(PRODUCT_EVENT_TYPES)

    async def scenario() -> None:
        worker = Worker(settings)
        try:
            expected: dict[str, dict] = {}
            for user in USERS:
                rows = [
                    (user, event_type, longest_product_id(n), T0 + n)
                    for event_type in types
                    for n in range(MAX_LAST_K)
                ]
                await worker.batch(rows)
                expected[user] = {t: await worker.hot_items(user, t) for t in types}
                assert all(len(items) == MAX_LAST_K for items in expected[user].values())
            assert await worker.flush() == len(USERS)
            loaded = await worker.cold.load_last_k(USERS)
            for user in USERS:
                got: dict = {t: loaded[user].items.get(t) for t in types}
                assert got == expected[user], f"{user}'s snapshot is not whole"
                history: list[Item] = await worker.cold.window(
                    user, types[0], T0, T0 + MAX_LAST_K, limit=10 * MAX_LAST_K
                )
                assert history == expected[user][types[0]]
        finally:
            await worker.close()

    asyncio.run(scenario())
