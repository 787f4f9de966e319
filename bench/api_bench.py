"""The HTTP read API under load: latency at a fixed 1,000 requests/s, and the most one
process serves, beside a trivial endpoint of the same server and beside the same routes
written on Starlette alone (the framework FastAPI builds on, without its validation and
response models).

Set-up: an isolated namespace on the local stack with a generated stream in the hot
tier and the features, and a served feed for the most active user. Then, for each server
(`signals api` with one uvicorn worker; the Starlette app with one worker, the same
stores) and each route (`/healthz`, `/users/{u}/feed?limit=20`,
`/users/{u}/interactions?k=20`): `hey` at 1,000 requests/s for `--seconds` (4
connections x 250/s, per-request times from its CSV), then `wrk` (2 threads, 32
connections) for the maximum rate. Load tools from Debian's packages (`apt-get install
hey wrk`; installed here when missing and root). Writes bench/results/api.json.

    .venv/bin/python bench/api_bench.py [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import itertools
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ROOT, Isolated, Table, ensure_stack, percentiles, write_results

PARAMS_SEED = 9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="bench", choices=["bench", "starlette"])
    parser.add_argument("--seconds", type=float, default=15.0, help="per fixed-rate run (15)")
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mode == "starlette":
        return serve_starlette(args.port)
    ensure_tools()
    ensure_stack(print)
    iso = Isolated.create("api", topics=False)
    try:
        return run(iso, args.seconds)
    finally:
        iso.cleanup()


def ensure_tools() -> None:
    missing = [tool for tool in ("hey", "wrk") if shutil.which(tool) is None]
    if missing and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True)
    elif missing:
        raise SystemExit(f"needs {' and '.join(missing)}: sudo apt-get install {' '.join(missing)}")


def seed(settings: Any) -> str:
    """A generated stream through the hot tier and the features, and a feed; returns
    the most active user."""
    from jobs.seed import apply_events  # noqa: PLC0415
    from jobs.traffic import TrafficParams, simulate  # noqa: PLC0415
    from schemas.feed_layout import Feed  # noqa: PLC0415
    from streams.bootstrap import (  # noqa: PLC0415
        build_feature_store,
        build_feed_store,
        build_hot_store,
    )

    params = TrafficParams(seed=PARAMS_SEED, users=500, products=5000, categories=50, rate=50.0)
    stream = list(itertools.islice(simulate(params, int(time.time() * 1000) - 600_000), 20_000))

    async def write() -> str:
        features, hot, feeds = (
            build_feature_store(settings),
            build_hot_store(settings),
            build_feed_store(settings),
        )
        try:
            await apply_events(stream, features, hot)
            users = [e.user_id for e in stream]
            user = max(set(users), key=users.count)
            products = [f"p{i:07d}" for i in range(100)]
            feed = Feed(user, 1, products, ["trending"] * 100, "popularity", True, "views", 1, 2)
            await feeds.write(feed)
            return user
        finally:
            for store in (features, hot, feeds):
                await store.close()

    return asyncio.run(write())


def serve_starlette(port: int) -> int:
    """The feed and last-k routes on Starlette alone, over the same stores."""
    import orjson  # noqa: PLC0415
    import uvicorn  # noqa: PLC0415
    from starlette.applications import Starlette  # noqa: PLC0415
    from starlette.requests import Request  # noqa: PLC0415
    from starlette.responses import Response  # noqa: PLC0415
    from starlette.routing import Route  # noqa: PLC0415

    from streams.api import (  # noqa: PLC0415
        build_api_stores,
        feed_body,
        interactions_body,
    )
    from streams.settings import Settings  # noqa: PLC0415

    stores = build_api_stores(Settings.load())

    def as_json(body: object, status: int = 200) -> Response:
        return Response(orjson.dumps(body), status, media_type="application/json")

    async def healthz(_request: Request) -> Response:
        return as_json({"status": "ok"})

    async def feed(request: Request) -> Response:
        user = request.path_params["user_id"]
        limit = int(request.query_params.get("limit", 20))
        found = await stores.feeds.read(user)
        if found is None:
            return as_json({"error": f"no feed for user {user}"}, 404)
        return as_json(feed_body(user, found, limit))

    async def interactions(request: Request) -> Response:
        user = request.path_params["user_id"]
        k = int(request.query_params.get("k", 20))
        found = await stores.interactions.last_k_many(user, k=k)
        return as_json(interactions_body(found))

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/users/{user_id}/feed", feed),
            Route("/users/{user_id}/interactions", interactions),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    return 0


def free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(command: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    import httpx  # noqa: PLC0415

    process = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{command} did not answer on port {port}")


def fixed_rate(url: str, seconds: float) -> dict[str, Any]:
    """hey at 1,000 requests/s (4 connections x 250/s): per-request times from its CSV.
    (hey's workers fire on synchronised tickers: 10 x 100/s sends bursts of 10 at once
    every 10 ms, which alone puts a trivial endpoint's p50 at 2 ms here.)"""
    done = subprocess.run(
        ["hey", "-z", f"{seconds:g}s", "-c", "4", "-q", "250", "-o", "csv", url],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    times = [float(row["response-time"]) * 1000 for row in rows]
    errors = sum(1 for row in rows if row["status-code"] != "200")
    return {**percentiles(times), "requests_per_s": len(rows) / seconds, "errors": errors}


def most(url: str) -> float:
    """wrk's requests/s: 2 threads, 32 connections, 8 s."""
    done = subprocess.run(
        ["wrk", "-t2", "-c32", "-d8s", url], capture_output=True, text=True, check=True
    )
    found = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    return float(found.group(1)) if found else 0.0


def run(iso: Isolated, seconds: float) -> int:
    print("set-up: a generated stream into the hot tier and the features ...", flush=True)
    user = seed(iso.settings)
    routes = {
        "healthz (baseline)": "/healthz",
        "feed": f"/users/{user}/feed?limit=20",
        "interactions": f"/users/{user}/interactions?k=20",
    }
    servers: dict[str, Callable[[int], list[str]]] = {
        "fastapi (signals api)": lambda port: [
            sys.executable, "-m", "jobs.cli", "api", "--port", str(port), "--loglevel", "warning",
        ],
        "starlette alone": lambda port: [
            sys.executable, str(Path(__file__).resolve()), "starlette", "--port", str(port),
        ],
    }  # fmt: skip
    result: dict[str, Any] = {"user": user, "seconds": seconds, "servers": {}}
    for name, command in servers.items():
        port = free_port()
        process = start(command(port), iso.env, port)
        try:
            measured: dict[str, Any] = {}
            for route, path in routes.items():
                url = f"http://127.0.0.1:{port}{path}"
                print(f"{name}: {route} at 1,000 requests/s for {seconds:g}s, then flat out ...")
                measured[route] = {"fixed": fixed_rate(url, seconds), "max_per_s": most(url)}
            result["servers"][name] = measured
        finally:
            process.terminate()
            process.wait(timeout=20)
    table = Table(
        "read API: one uvicorn worker, loopback, single Redis",
        head=("server", "route", "p50 ms", "p99 ms", "errors", "max req/s"),
        align="llrrrr",
    )
    for name, measured in result["servers"].items():
        for route, figures in measured.items():
            fixed = figures["fixed"]
            table.add_row(
                name,
                route,
                fixed["p50_ms"],
                fixed["p99_ms"],
                fixed["errors"],
                figures["max_per_s"],
            )
    table.print()
    print("target: p99 <= 5 ms for feed and interactions at 1,000 requests/s")
    print(f"wrote {write_results('api', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
