"""Micro-benchmark: Avro event decoding on one core.

Builds N framed events, then times (a) the raw fastavro baseline, `schemaless_reader` over the
body of every payload, and (b) `schemas.wire.decode_event_avro` (unframe + decode + validate).
Each is the best of 3 runs. Prints a table and writes bench/results/decode.json.

    .venv/bin/python bench/decode_bench.py [--events N]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import fastavro  # noqa: E402

from schemas.events import Event, EventType  # noqa: E402
from schemas.registry import CURRENT_EVENT_SCHEMA_ID, schema_for  # noqa: E402
from schemas.wire import decode_event_avro, encode_event_avro  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "decode.json"
RUNS = 3


def build_payloads(count: int, seed: int = 7) -> list[bytes]:
    rnd = random.Random(seed)
    types = list(EventType)
    payloads = []
    for i in range(count):
        event_type = rnd.choice(types)
        product = event_type is not EventType.APP_OPEN
        event = Event(
            event_id=f"evt-{i:012d}",
            user_id=f"user-{rnd.randrange(100_000)}",
            event_type=event_type,
            event_time_ms=1_700_000_000_000 + i,
            product_id=f"prod-{rnd.randrange(1_000_000)}" if product else None,
            category_id=f"cat-{rnd.randrange(500)}" if product else None,
            price_paise=rnd.randrange(100, 500_000) if product else None,
            feed_position=rnd.randrange(200) if product else None,
            language=rnd.choice(("en", "hi", "ta")),
            order_id=f"ord-{i}" if event_type is EventType.ORDER else None,
            quantity=rnd.randrange(1, 4) if event_type is EventType.ORDER else None,
        )
        payloads.append(encode_event_avro(event))
    return payloads


def best_rate(payloads: list[bytes], decode_all: Callable[[list[bytes]], None]) -> float:
    best = float("inf")
    for _ in range(RUNS):
        start = time.perf_counter()
        decode_all(payloads)
        best = min(best, time.perf_counter() - start)
    return len(payloads) / best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events", type=int, default=200_000, help="number of events (default 200000)"
    )
    args = parser.parse_args(argv)
    if args.events <= 0:
        parser.error("--events must be positive")

    payloads = build_payloads(args.events)
    parsed = schema_for(CURRENT_EVENT_SCHEMA_ID)
    reader = fastavro.schemaless_reader

    def raw(items: list[bytes]) -> None:
        for payload in items:
            reader(BytesIO(payload[5:]), parsed)

    def ours(items: list[bytes]) -> None:
        for payload in items:
            decode_event_avro(payload)

    raw_rate = best_rate(payloads, raw)
    our_rate = best_rate(payloads, ours)
    ratio = our_rate / raw_rate

    width = 44
    print(f"{'decoder':<{width}} {'events/s':>12}")
    print(f"{'-' * width} {'-' * 12}")
    print(f"{'fastavro.schemaless_reader (baseline)':<{width}} {raw_rate:>12,.0f}")
    print(f"{'decode_event_avro (unframe+decode+validate)':<{width}} {our_rate:>12,.0f}")
    print(f"{'ratio (ours / baseline)':<{width}} {ratio:>12.2f}")
    print(f"events={args.events} best of {RUNS} runs, one core")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "events": args.events,
        "runs": RUNS,
        "baseline_events_per_s": round(raw_rate),
        "decode_event_avro_events_per_s": round(our_rate),
        "ratio": round(ratio, 3),
        "avg_payload_bytes": round(sum(map(len, payloads)) / len(payloads), 1),
        "python": platform.python_version(),
        "fastavro": fastavro.__version__,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
