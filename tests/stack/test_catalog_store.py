"""The catalog on a real Redis and a real Redis Cluster (`sinks.catalog_store`): loaded
through the job's own path, read back in one round trip, reloaded idempotently."""

from __future__ import annotations

import asyncio

import pytest

from jobs.catalog import load_items
from schemas.catalog import CatalogItem
from streams.bootstrap import build_catalog_store
from streams.settings import Settings
from tests.conftest import on_backend


@pytest.mark.parametrize("backend", ["single", "cluster"])
def test_a_catalog_loads_reads_back_and_reloads_idempotently(
    backend: str, isolated_settings: Settings
) -> None:
    settings = on_backend(isolated_settings, backend, k=None)
    items = [
        CatalogItem(f"p{i}", f"c{i % 3}", 1_000 + i, f"s{i % 7}", "hi" if i % 2 else "en", 10 * i)
        for i in range(1, 1201)
    ]

    async def scenario() -> None:
        store = build_catalog_store(settings)
        try:
            assert await load_items(store, items, len(items), "test") == 1200
            wanted = [f"p{i}" for i in range(1, 600, 3)] + ["nope"]
            found = await store.items(wanted)
            assert found == {i.product_id: i for i in items if i.product_id in wanted}
            assert await store.newest(3) == ["p1200", "p1199", "p1198"]
            assert await store.newest(2, "c1") == ["p1198", "p1195"]
            # Loading again changes nothing but what changed: p1198 moves to c2.
            moved = items[-3]._replace(category_id="c2")
            assert await load_items(store, [*items[:-3], moved, *items[-2:]], 1200, "test") == 1200
            assert (await store.items(["p1198"]))["p1198"].category_id == "c2"
            assert await store.newest(1, "c1") == ["p1195"]
            assert await store.newest(2, "c2") == ["p1199", "p1198"]
        finally:
            await store.close()

    asyncio.run(scenario())
