"""Micro-benchmark: the synthetic traffic generator alone (no Avro, no Kafka), one core.

Times `jobs.traffic.simulate` over N events (after setup: catalog, calibration, warm
start) beside the fixed cost every generator pays, constructing (and so validating) N
`Event`s. Best of 3 runs each.

    .venv/bin/python bench/traffic_bench.py [--events N] [--rate R]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jobs.traffic import TrafficParams, default_catalog, session_shape, simulate  # noqa: E402
from schemas.events import Event, EventType  # noqa: E402

RUNS = 3
START_MS = 1_760_000_000_000


def best_rate(count: int, run: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(RUNS):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return count / best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300_000, help="events per run (300000)")
    parser.add_argument("--rate", type=float, default=1000.0, help="simulated events/s (1000)")
    args = parser.parse_args(argv)
    if args.events <= 0 or args.rate <= 0:
        parser.error("--events and --rate must be positive")

    params = TrafficParams(rate=args.rate)
    setup_started = time.perf_counter()
    shape = session_shape(params, default_catalog(params))
    setup_s = time.perf_counter() - setup_started

    def generate() -> None:
        stream = simulate(params, START_MS)
        next(stream)  # the warm start (sessions already under way) happens here
        for _ in itertools.islice(stream, args.events):
            pass

    def construct() -> None:
        for index in range(args.events):
            Event(
                "0f3c2d1e-aaaa-4bbb-8ccc-123456789012", "u0000042", EventType.VIEW,
                START_MS + index, "p0000123", "c0042", 12_900, 3, "android", "hi",
            )  # fmt: skip

    construct_rate = best_rate(args.events, construct)
    generate_rate = best_rate(args.events, generate)

    width = 46
    print(f"{'what':<{width}} {'events/s':>12}")
    print(f"{'-' * width} {'-' * 12}")
    print(f"{'Event(...) construction alone (fixed cost)':<{width}} {construct_rate:>12,.0f}")
    print(f"{'jobs.traffic.simulate (incl. construction)':<{width}} {generate_rate:>12,.0f}")
    print(
        f"events={args.events} rate={args.rate:g}/s simulated, best of {RUNS} runs, one core; "
        f"setup (catalog {params.products} products + calibration) {setup_s:.2f}s once; "
        f"{shape.events_per_session:.1f} events per session"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
