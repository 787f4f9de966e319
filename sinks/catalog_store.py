"""The catalog on Redis (layout: `schemas.catalog`): loaded by `signals catalog load`,
read by the ranker (items of many candidates in one round trip, the newest listings)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from schemas.catalog import (
    CatalogItem,
    catalog_bucket,
    catalog_categories_key,
    catalog_items_key,
    catalog_meta_key,
    catalog_newest_key,
    decode_catalog_item,
    encode_catalog_item,
)
from sinks.redis_scripts import HotRedis


class RedisCatalogStore:
    def __init__(self, client: HotRedis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix

    async def put(self, items: Sequence[CatalogItem]) -> None:
        """Write (or overwrite) these items: one read of what they were (a product moved
        to another category leaves the old one's newest list), one pipelined write."""
        if not items:
            return
        before = await self.items(item.product_id for item in items)
        by_bucket: dict[int, list[str | bytes]] = {}
        newest: dict[str, dict[str, int]] = {}
        for item in items:
            fields = by_bucket.setdefault(catalog_bucket(item.product_id), [])
            fields += (item.product_id, encode_catalog_item(item))
            newest.setdefault(item.category_id, {})[item.product_id] = item.created_ms
        every = {pid: created for group in newest.values() for pid, created in group.items()}
        moved = [
            (old.category_id, item.product_id)
            for item in items
            if (old := before.get(item.product_id)) and old.category_id != item.category_id
        ]
        async with self._redis.pipeline(transaction=False) as pipe:
            for category, product_id in moved:
                pipe.zrem(catalog_newest_key(self._prefix, category), product_id)
            for bucket, fields in by_bucket.items():
                pipe.hset(catalog_items_key(self._prefix, bucket), items=fields)
            for category, scores in newest.items():
                pipe.zadd(catalog_newest_key(self._prefix, category), scores)
            pipe.zadd(catalog_newest_key(self._prefix), every)
            pipe.sadd(catalog_categories_key(self._prefix), *newest)
            await pipe.execute()

    async def finish_load(self, source: str) -> int:
        """Record the load (items now held, when, from where); returns the item count."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zcard(catalog_newest_key(self._prefix))
            [count] = await pipe.execute()
        await self._redis.hset(
            catalog_meta_key(self._prefix),
            mapping={"items": count, "loaded_at_ms": int(time.time() * 1000), "source": source},
        )
        return int(count)

    async def items(self, product_ids: Iterable[str]) -> dict[str, CatalogItem]:
        """The items of these ids that the catalog has, one HMGET per bucket, pipelined."""
        by_bucket: dict[int, list[str]] = {}
        for product_id in dict.fromkeys(product_ids):
            by_bucket.setdefault(catalog_bucket(product_id), []).append(product_id)
        if not by_bucket:
            return {}
        buckets = list(by_bucket.items())
        async with self._redis.pipeline(transaction=False) as pipe:
            for bucket, ids in buckets:
                pipe.hmget(catalog_items_key(self._prefix, bucket), ids)
            replies = await pipe.execute()
        found: dict[str, CatalogItem] = {}
        for (_bucket, ids), values in zip(buckets, replies, strict=True):
            for product_id, value in zip(ids, values, strict=True):
                if value is not None:
                    found[product_id] = decode_catalog_item(product_id, value)
        return found

    async def newest(self, n: int, category_id: str | None = None) -> list[str]:
        """The `n` most recently listed products (of a category), newest first."""
        [ids] = await self.newest_many([category_id], n)
        return ids

    async def newest_many(self, category_ids: Sequence[str | None], n: int) -> list[list[str]]:
        """`newest` of each category (None: every category), in one pipelined round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for category_id in category_ids:
                pipe.zrevrange(catalog_newest_key(self._prefix, category_id), 0, n - 1)
            replies = await pipe.execute()
        return [[_text(row) for row in rows] for rows in replies]

    async def categories(self) -> list[str]:
        """Every category of the catalog, sorted."""
        members = await self._redis.smembers(catalog_categories_key(self._prefix))
        return sorted(_text(m) for m in members)

    async def close(self) -> None:
        await self._redis.aclose()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
