"""The interaction-store benchmark in one command: ingest, freshness, sessions, one table.

Runs `ingest_bench.py`, `freshness_bench.py` and `session_bench.py` one after the other
(each a subprocess with its own isolated topic/group/prefix/keyspace, cleaned up after),
then prints every issue target beside what was measured and the baseline measured in the
same run, and writes bench/results/summary.json. A bench that fails is reported as such;
the others still run. Takes about 3-4 minutes on the 2-core dev machine.

    .venv/bin/python bench/run_all.py [--ingest-events N] [--rate R] [--seconds S] [--users N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import RESULTS_DIR, ROOT, Table, format_value, read_results, write_results

BENCH = ROOT / "bench"
TARGET_INGEST = 20_000
TARGET_FRESH_RATE = 5_000


def run_step(name: str, script: str, args: list[str]) -> bool:
    """Run one bench; True when it exited 0 and wrote a fresh result file."""
    print(f"\n=== {name}: {script} {' '.join(args)}", flush=True)
    started = time.time()
    code = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=ROOT, check=False)
    result = RESULTS_DIR / f"{name}.json"
    fresh = result.exists() and result.stat().st_mtime >= started
    if code.returncode != 0 or not fresh:
        print(f"=== {name} FAILED (exit {code.returncode})", flush=True)
        return False
    return True


#: Ingest with features and triggers, against the interaction store alone (issue 12).
TARGET_FEATURES_RATIO = 0.75


def met(ok: bool) -> str:
    return "yes" if ok else "NO"


def n(value: float | int) -> str:
    return format_value(value)


def ingest_rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    clean = [w for w in r["workers"] if w["label"].startswith("worker, interaction store only")]
    rate = statistics.median(w["events_per_s"] for w in clean)
    rows: list[tuple[str, ...]] = [
        (
            "ingest, one worker",
            f">= {n(TARGET_INGEST)} events/s",
            f"{n(rate)} events/s",
            f"raw aiokafka {n(r.get('raw_consumer_msgs_per_s', 0))}/s, "
            f"+decode {n(r.get('raw_consumer_decode_msgs_per_s', 0))}/s",
            met(rate >= TARGET_INGEST),
        )
    ]
    if "features_vs_store_only" in r:
        rows.append(
            (
                "ingest with features and triggers",
                ">= 75% of the store alone",
                f"{r['features_vs_store_only']:.0%} of it",
                "same topic, same run (features are off by default)",
                met(r["features_vs_store_only"] >= TARGET_FEATURES_RATIO),
            )
        )
    if "bad_vs_clean" in r:
        rows.append(
            (
                f"ingest with {r['bad_share']:.0%} bad messages",
                "unaffected",
                f"{r['bad_vs_clean']:.0%} of the clean rate",
                f"CPU per event x{r['bad_vs_clean_cpu_per_event']:.2f} (same run)",
                "-",
            )
        )
    return rows


def freshness_rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    fresh, floor = r["freshness"], r["transport_floor"]
    at = f"@ {n(r['rate_achieved'])}/s"
    full_rate = r["rate_achieved"] >= 0.95 * TARGET_FRESH_RATE
    ok = fresh["n"] > 0 and fresh["p99_ms"] <= r["target_p99_ms"] and r["probes_lost"] == 0
    lost = f", {r['probes_lost']} probes never seen" if r["probes_lost"] else ""
    return [
        (
            f"freshness p99 {at}",
            f"<= {r['target_p99_ms']:.0f} ms @ {n(TARGET_FRESH_RATE)}/s",
            f"{n(fresh['p99_ms'])} ms{lost}",
            f"transport p99 {n(floor['p99_ms'])} ms",
            met(ok and full_rate),
        ),
        (
            f"freshness p50 {at}",
            "-",
            f"{n(fresh['p50_ms'])} ms",
            f"transport p50 {n(floor['p50_ms'])} ms",
            "-",
        ),
        (
            "worker keeps up (freshness run)",
            "applied = sent",
            f"{n(r['worker_applied_per_s'])} interactions/s",
            f"sent {n(r['interactions_sent_per_s'])}/s",
            met(r["worker_applied_per_s"] >= 0.95 * r["interactions_sent_per_s"]),
        ),
    ]


def session_rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    targets, hyd, load = r["targets"], r["rehydrate"], r["load_last_k"]
    rows: list[tuple[str, ...]] = [
        (
            "flush to cold tier",
            f">= {n(targets['flush_users_per_s'])} users/s",
            f"{n(r['flush_users_per_s'])} users/s",
            f"Redis snapshot read alone {n(r['snapshot_read_users_per_s'])} users/s",
            met(r["flush_users_per_s"] >= targets["flush_users_per_s"]),
        ),
        (
            "re-hydration p99 (1 user)",
            f"<= {targets['rehydrate_p99_ms']:.0f} ms",
            f"{n(hyd['p99_ms'])} ms (p50 {n(hyd['p50_ms'])})",
            f"load_last_k p99 {n(load['p99_ms'])} ms (p50 {n(load['p50_ms'])})",
            met(hyd["p99_ms"] <= targets["rehydrate_p99_ms"]),
        ),
    ]
    for label, mem in (("realistic", r["memory_realistic"]), ("full k", r["memory_full_k"])):
        rows.append(
            (
                f"Redis bytes/active user, {label}",
                "report",
                f"{n(mem['bytes_per_user'])} B",
                f"raw data {n(mem['raw_bytes_per_user'])} B",
                "-",
            )
        )
    encodings = [r["memory_realistic"]["encodings"], r["memory_full_k"]["encodings"]]
    sets = sum(sum(e.values()) for e in encodings)
    compact = sum(e.get("listpack", 0) for e in encodings)
    limits = r["listpack_limits"]
    rows.append(
        (
            "sets stay listpack at default k",
            "all listpack",
            f"{compact}/{sets} listpack",
            f"limit {limits.get('zset-max-listpack-entries')} entries / "
            f"{limits.get('zset-max-listpack-value')} B; max k {max(r['last_k'].values())}",
            met(compact == sets),
        )
    )
    return rows


ROWS: dict[str, Callable[[dict[str, Any]], list[tuple[str, ...]]]] = {
    "ingest": ingest_rows,
    "freshness": freshness_rows,
    "session": session_rows,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the ingest, freshness and session benches; print one table of "
        "target / measured / same-run baseline / met?.",
        epilog="Writes bench/results/summary.json (and each bench's own JSON).",
    )
    parser.add_argument("--ingest-events", type=int, default=100_000, help="(100000)")
    parser.add_argument("--rate", type=float, default=5000, help="freshness background/s (5000)")
    parser.add_argument("--seconds", type=float, default=30, help="freshness measured s (30)")
    parser.add_argument("--users", type=int, default=5000, help="session bench users (5000)")
    parser.add_argument("--skip", action="append", default=[], choices=sorted(ROWS), help="skip")
    args = parser.parse_args(argv)

    steps = {
        "ingest": ("ingest_bench.py", ["--events", str(args.ingest_events)]),
        "freshness": (
            "freshness_bench.py",
            ["--rate", f"{args.rate:g}", "--seconds", f"{args.seconds:g}"],
        ),
        "session": ("session_bench.py", ["--users", str(args.users)]),
    }
    started = time.monotonic()
    table = Table(
        "interaction store: targets vs this run (2-core shared machine; baselines same run)",
        head=("check", "target", "measured", "baseline (same run)", "met?"),
        align="lllll",
    )
    summary: dict[str, Any] = {"failed": []}
    for name, (script, step_args) in steps.items():
        if name in args.skip:
            continue
        if not run_step(name, script, step_args):
            summary["failed"].append(name)
            table.rows.append((name, "-", "FAILED (see output above)", "-", "NO"))
            continue
        result = read_results(name)
        summary[name] = result
        table.rows.extend(ROWS[name](result))
    summary["table"] = [dict(zip(table.head, row, strict=True)) for row in table.rows]
    summary["seconds"] = round(time.monotonic() - started)
    table.print()
    path = write_results("summary", summary)
    print(f"\n{summary['seconds']} s in all; wrote {path.relative_to(ROOT)}")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
