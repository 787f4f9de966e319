"""The catalog contract (`schemas.catalog`) and the file loader (`jobs.catalog`): what a
row needs, how a bad one is refused, and the generator's catalog without its hidden truth."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.crc import key_slot

from jobs.catalog import generated_items, read_catalog
from jobs.traffic import TrafficParams
from jobs.traffic.catalog import Catalog
from schemas.catalog import (
    CATALOG_BUCKETS,
    BadCatalogRow,
    CatalogItem,
    catalog_bucket,
    catalog_item_of,
    catalog_items_key,
    decode_catalog_item,
    encode_catalog_item,
)

ROW = {
    "product_id": "p1",
    "category_id": "c1",
    "price_paise": "24900",
    "seller_id": "s1",
    "language": "hi",
    "created_ms": "1760000000000",
}


def test_a_row_becomes_an_item_and_round_trips() -> None:
    item = catalog_item_of({**ROW, "popularity": "0.5"})  # extra columns are ignored
    assert item == CatalogItem("p1", "c1", 24_900, "s1", "hi", 1_760_000_000_000)
    assert decode_catalog_item("p1", encode_catalog_item(item)) == item


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"category_id": ""}, "missing category_id"),
        ({"seller_id": None}, "missing seller_id"),
        ({"price_paise": "249.00"}, "price_paise is not a whole number"),
        ({"created_ms": "-5"}, "created_ms is negative"),
    ],
)
def test_a_bad_row_is_refused_with_the_reason(change: dict[str, str | None], reason: str) -> None:
    with pytest.raises(BadCatalogRow, match=reason):
        catalog_item_of({**ROW, **change})


def test_a_file_is_read_whole_with_every_refused_line(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(
        "\ufeffproduct_id,category_id,price_paise,seller_id,language,created_ms,extra\n"
        "p1,c1,100,s1,hi,5,x\n"
        "p2,,100,s1,hi,5,x\n"
        "p1,c2,100,s1,hi,5,x\n"
        "p3,c1,100,s1,ta,7,x\n",
        encoding="utf-8",
    )
    read = read_catalog(path)
    assert [item.product_id for item in read.items] == ["p1", "p3"]
    assert read.refused == [(3, "missing category_id"), (4, "p1 is already on line 2")]


def test_a_file_without_a_column_is_refused_whole(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text("product_id,category_id,price_paise\np1,c1,100\n", encoding="utf-8")
    with pytest.raises(BadCatalogRow, match="no column seller_id, language, created_ms"):
        read_catalog(path)


def test_the_generated_catalog_loads_without_its_popularity() -> None:
    catalog = Catalog.build(TrafficParams(products=50, categories=5))
    items = list(generated_items(catalog))
    assert len(items) == 50
    assert all(
        item == CatalogItem(*product[:6])
        for item, product in zip(items, catalog.products, strict=True)
    )


def test_buckets_are_stable_and_spread_over_slots() -> None:
    assert catalog_bucket("p0000001") == catalog_bucket("p0000001")
    buckets = {catalog_bucket(f"p{i:07d}") for i in range(1000)}
    assert buckets == set(range(CATALOG_BUCKETS))
    slots = {key_slot(catalog_items_key("ix", b).encode()) for b in range(CATALOG_BUCKETS)}
    assert len(slots) == CATALOG_BUCKETS
