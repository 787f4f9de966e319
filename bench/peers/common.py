"""What every peer of `bench/peers_bench.py` shares: arguments, decoding, the Redis write.

A peer is a standalone program. It consumes the events topic from the beginning in its
own consumer group and keeps, per user and event type, the last k products in a Redis
sorted set under the hot tier's public layout (`schemas/hot_layout.py`):
`<prefix>:{<user_id>}:<event_type>`, member = product id, score = event time (ms), written
with ZADD GT and trimmed to the newest k, one pipeline per batch, and offsets committed
after the pipeline returned (at least once). Each batch also adds its interactions to
`<prefix>:stats:applied`, which is how the benchmark sees progress, as it does for our
worker. It runs until it is sent SIGTERM.

Only fastavro, redis and the peer's own Kafka client are used here (no project code), so
a peer runs in the benchmark's separate environment too (Quix Streams is installed for
the benchmark only).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from io import BytesIO
from pathlib import Path
from typing import Any

import fastavro

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "avro" / "event-v1.avsc"
#: Confluent framing: magic byte and 4-byte schema id before the Avro body.
HEADER_SIZE = 5
PRODUCT_TYPES = frozenset({"view", "click", "add_to_cart", "remove_from_cart", "wishlist", "order"})
#: One interaction to write: (sorted-set key, product id, event time ms).
Write = tuple[str, str, int]


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    parser.add_argument("--topic", required=True, help="the events topic")
    parser.add_argument("--group", required=True, help="this peer's own consumer group")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", required=True, help="Redis key prefix of this peer")
    parser.add_argument(
        "--last-k", required=True, help='JSON object: event type -> k, e.g. {"view": 100}'
    )
    parser.add_argument("--batch", type=int, default=2000, help="records per batch")
    args = parser.parse_args()
    args.last_k = {str(kind): int(k) for kind, k in json.loads(args.last_k).items()}
    return args


class Decoder:
    """Framed Avro value -> the sorted-set write it makes, or None (no product)."""

    def __init__(self, prefix: str) -> None:
        self._schema = fastavro.parse_schema(json.loads(SCHEMA_FILE.read_text()))
        self._prefix = prefix

    def __call__(self, value: bytes) -> Write | None:
        record: dict[str, Any] = fastavro.schemaless_reader(  # type: ignore[assignment]
            BytesIO(value[HEADER_SIZE:]), self._schema, None
        )
        kind = record["event_type"]
        product = record["product_id"]
        if kind not in PRODUCT_TYPES or product is None:
            return None
        return f"{self._prefix}:{{{record['user_id']}}}:{kind}", product, record["event_time_ms"]


def queue_writes(pipe: Any, writes: Iterable[Write], last_k: dict[str, int], prefix: str) -> int:
    """Queue a batch on a redis-py pipeline: per sorted set touched, one ZADD GT of its
    products (the newest time of each) and one trim; then the applied counter. Returns
    the interactions queued."""
    members: dict[str, dict[str, int]] = {}
    count = 0
    for key, product, event_time_ms in writes:
        newest = members.setdefault(key, {})
        if event_time_ms > newest.get(product, -1):
            newest[product] = event_time_ms
        count += 1
    for key, mapping in members.items():
        pipe.zadd(key, mapping, gt=True)
        pipe.zremrangebyrank(key, 0, -(last_k[key.rsplit(":", 1)[1]] + 1))
    if count:
        pipe.incrby(f"{prefix}:stats:applied", count)
    return count
