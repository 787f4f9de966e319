"""Loading a catalog (CSV in, `schemas.catalog` for the columns) into the Redis catalog."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from jobs.traffic.catalog import Catalog
from schemas.catalog import CATALOG_COLUMNS, BadCatalogRow, CatalogItem, catalog_item_of
from sinks.catalog_store import RedisCatalogStore

#: Items per pipelined write.
LOAD_CHUNK = 5_000


@dataclass
class CatalogFile:
    """A catalog file read whole: its items and the rows refused (line, reason)."""

    items: list[CatalogItem] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)


def read_catalog(path: str | Path) -> CatalogFile:
    """Every row of a CSV catalog; a row with a missing or malformed field, or a product
    listed twice, is refused with its line number (the header is line 1)."""
    result = CatalogFile()
    seen: dict[str, int] = {}
    with Path(path).open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in CATALOG_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise BadCatalogRow(f"{path}: no column {', '.join(missing)} in the header")
        for row in reader:
            line = reader.line_num
            try:
                item = catalog_item_of(row)
            except BadCatalogRow as exc:
                result.refused.append((line, str(exc)))
                continue
            first = seen.setdefault(item.product_id, line)
            if first != line:
                result.refused.append((line, f"{item.product_id} is already on line {first}"))
                continue
            result.items.append(item)
    return result


def generated_items(catalog: Catalog) -> Iterator[CatalogItem]:
    """The traffic generator's catalog as items (its hidden popularity left out)."""
    for product in catalog.products:
        yield CatalogItem(*product[:6])


async def load_items(
    store: RedisCatalogStore, items: Iterable[CatalogItem], total: int, source: str
) -> int:
    """Write the items in chunks with a progress bar (on a terminal); returns how many
    items the catalog holds afterwards."""
    chunk: list[CatalogItem] = []
    with tqdm(total=total, unit="item", desc="catalog", disable=not sys.stderr.isatty()) as bar:
        for item in items:
            chunk.append(item)
            if len(chunk) >= LOAD_CHUNK:
                await store.put(chunk)
                bar.update(len(chunk))
                chunk = []
        await store.put(chunk)
        bar.update(len(chunk))
    return await store.finish_load(source)
