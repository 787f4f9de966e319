"""The product catalog the ranker reads: one item per product, and its Redis layout.

A catalog comes in as a CSV file with a header row and at least these columns (others,
such as the traffic generator's `popularity`, are ignored: a ranker must not see the
simulator's hidden truth):

    product_id    the id events carry
    category_id   the product's category
    price_paise   the price in paise (a whole number >= 0)
    seller_id     who sells it (the re-ranking caps items per seller)
    language      the listing's language code (e.g. hi, en, ta)
    created_ms    when it was listed, ms since the epoch (for "recently added")

The generator writes exactly this (`jobs/traffic`, `products.csv`), so a real catalog is
loaded the same way (`signals catalog load FILE`). A row with a missing or malformed field
is refused with its line number and the reason, never half-loaded.

Redis layout (a contract, like the stores' layouts):

    <prefix>:cat:i:{<bucket>}      hash: product id -> JSON [category, price_paise,
                                   seller, language, created_ms]; bucket = CRC-32 of
                                   the UTF-8 id mod CATALOG_BUCKETS (16 hashes, so a
                                   cluster spreads them and 500 ids read in 16 HMGETs)
    <prefix>:cat:new               sorted set: product id, score = created_ms (all)
    <prefix>:cat:new:{<category>}  sorted set: the same, per category
    <prefix>:cat:cats              set: every category id
    <prefix>:cat:meta              hash: items, loaded_at_ms, source

Loading is idempotent (a product's fields are overwritten, never duplicated) and keys do
not expire: the catalog is reference data, replaced by loading again.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import NamedTuple

import orjson

from schemas.feature_layout import key_part

CATALOG_BUCKETS = 16
CATALOG_COLUMNS = (
    "product_id",
    "category_id",
    "price_paise",
    "seller_id",
    "language",
    "created_ms",
)


class CatalogItem(NamedTuple):
    product_id: str
    category_id: str
    price_paise: int
    seller_id: str
    language: str
    created_ms: int


class BadCatalogRow(ValueError):
    """A catalog row that cannot be loaded, with the reason."""


def catalog_item_of(row: Mapping[str, str | None]) -> CatalogItem:
    """A CSV row (column -> text) as an item; BadCatalogRow names what is wrong."""
    values: dict[str, str] = {}
    for column in CATALOG_COLUMNS:
        value = (row.get(column) or "").strip()
        if not value:
            raise BadCatalogRow(f"missing {column}")
        values[column] = value
    numbers: dict[str, int] = {}
    for column in ("price_paise", "created_ms"):
        try:
            numbers[column] = int(values[column])
        except ValueError:
            raise BadCatalogRow(f"{column} is not a whole number: {values[column]!r}") from None
        if numbers[column] < 0:
            raise BadCatalogRow(f"{column} is negative: {numbers[column]}")
    return CatalogItem(
        values["product_id"],
        values["category_id"],
        numbers["price_paise"],
        values["seller_id"],
        values["language"],
        numbers["created_ms"],
    )


def catalog_bucket(product_id: str) -> int:
    return zlib.crc32(product_id.encode()) % CATALOG_BUCKETS


def catalog_items_key(prefix: str, bucket: int) -> str:
    return f"{prefix}:cat:i:{{{bucket}}}"


def catalog_newest_key(prefix: str, category_id: str | None = None) -> str:
    if category_id is None:
        return f"{prefix}:cat:new"
    return f"{prefix}:cat:new:{{{key_part(category_id)}}}"


def catalog_categories_key(prefix: str) -> str:
    return f"{prefix}:cat:cats"


def catalog_meta_key(prefix: str) -> str:
    return f"{prefix}:cat:meta"


def encode_catalog_item(item: CatalogItem) -> bytes:
    return orjson.dumps(list(item[1:]))


def decode_catalog_item(product_id: str, value: bytes | str) -> CatalogItem:
    category, price, seller, language, created = orjson.loads(value)
    return CatalogItem(product_id, category, price, seller, language, created)
