"""`signals cold-index`: see or rebuild the index of the users the cold tier holds.

The worker skips the cold-tier read of a user the index says was never stored
(`sinks.cold_index`). A new deployment starts with it complete (the cold tier is empty);
after Redis lost it, or when the cold tier was written by something that does not add
to it (an operator's CQL, an older release), `rebuild` scans the cold tier's users and
marks it complete. It is safe beside running workers: each of them adds a user before
writing them to the cold tier, so a user written during the scan is in the index either
way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tqdm import tqdm

from schemas.hot_layout import COLD_INDEX_BUCKETS, ColdIndexShape
from streams.settings import Settings


@dataclass(frozen=True)
class IndexStatus:
    complete_buckets: int
    shape: ColdIndexShape

    @property
    def trusted(self) -> bool:
        return self.complete_buckets == COLD_INDEX_BUCKETS


class IndexDisabled(RuntimeError):
    """SIGNALS_COLD_INDEX_ENABLED is off: there is no index to see or build."""


async def index_status(settings: Settings) -> IndexStatus:
    from streams.bootstrap import build_cold_index, build_redis  # noqa: PLC0415

    client = build_redis(settings)
    try:
        index = build_cold_index(settings, client)
        if index is None:
            raise IndexDisabled("the cold-tier index is off (SIGNALS_COLD_INDEX_ENABLED=false)")
        return IndexStatus(await index.complete_buckets(), index.shape)
    finally:
        await client.aclose()


async def rebuild_index(settings: Settings, *, progress: bool = True) -> tuple[int, float]:
    """Add every user the cold tier holds a last-k of, then mark the index complete.
    Returns the users added and the seconds it took."""
    from streams.bootstrap import build_cold_index, build_cold_store, build_redis  # noqa: PLC0415

    began = time.monotonic()
    client = build_redis(settings)
    cold = build_cold_store(settings)
    users = 0
    try:
        index = build_cold_index(settings, client)
        if index is None:
            raise IndexDisabled("the cold-tier index is off (SIGNALS_COLD_INDEX_ENABLED=false)")
        with tqdm(unit=" users", desc="cold-index rebuild", disable=not progress) as bar:
            async for page in cold.snapshot_users():
                await index.add(page)
                users += len(page)
                bar.update(len(page))
        await index.mark_complete()
    finally:
        await cold.close()
        await client.aclose()
    return users, time.monotonic() - began
