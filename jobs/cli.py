"""`signals`: run the worker, produce events, read a user's last-k and features, run the demo.

Every address comes from settings (environment, or the local stack's env file written by
`signals-stack up`). Bad arguments get a one-line error and the usage, not a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from pydantic import ValidationError
from redis.exceptions import RedisError

from jobs.dead_letters import read_dead_letters
from jobs.generate import bounded, paced, send_all
from jobs.replay_cli import add_backfill_parser, add_replay_parser
from jobs.traffic import TrafficParams, TrafficSimulation, simulate, user_id, write_traffic
from schemas.catalog import BadCatalogRow, CatalogItem
from schemas.events import PRODUCT_EVENT_TYPES, Event, EventType, InvalidEvent, check_user_id
from schemas.features import ProductFeatures, UserFeatures
from schemas.feed_layout import Feed
from schemas.hot_layout import COLD_INDEX_BUCKETS
from sinks.connectivity import kafka_config, kafka_security
from sinks.events_producer import EventProducer
from sinks.hot_store import RedisHotStore
from sinks.interaction_reader import Interactions
from sinks.model_store import ModelStore
from streams.bootstrap import (
    build_catalog_store,
    build_feature_store,
    build_feed_store,
    build_hot_store,
    build_interaction_reader,
    build_ranker_app,
    build_worker_app,
)
from streams.settings import Settings

PROG = "signals"


class CliError(Exception):
    """A problem with what the user asked for: printed as one line, exit 2."""


def _positive_int(text: str) -> int:
    return int(_positive(text, int, "a whole number"))


def _positive_float(text: str) -> float:
    return _positive(text, float, "a number")


def _positive(text: str, kind: type[int] | type[float], described: str) -> float:
    """Parse a strictly positive number for argparse, with a one-line reason on failure."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {described}, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _user_id(text: str) -> str:
    try:
        return check_user_id(text)
    except InvalidEvent as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None


def _product_type(text: str) -> EventType:
    try:
        event_type = EventType(text)
    except ValueError:
        choices = ", ".join(sorted(t.value for t in PRODUCT_EVENT_TYPES))
        raise argparse.ArgumentTypeError(f"unknown type {text!r} (choose from {choices})") from None
    if event_type not in PRODUCT_EVENT_TYPES:
        raise argparse.ArgumentTypeError(f"{text} events carry no product and have no last-k")
    return event_type


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Real-time signals pipeline: worker, producers and readers. "
        "Addresses come from SIGNALS_* variables or the local stack's env file.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = commands.add_parser(
        "worker",
        help="run the stream worker (events topic -> Redis last-k)",
        description="Run the Faust worker that records every event in the user's last-k.",
    )
    worker.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])

    ranker = commands.add_parser(
        "ranker",
        help="run the feed ranker (trigger topic -> ranked feeds in Redis)",
        description="Run the ranker's Faust agent: for each rank-refresh trigger it merges "
        "candidates, scores them with the model published in SIGNALS_MODEL_DIR (swapped "
        "without a restart when `signals train` publishes another; popularity while there "
        "is none), re-ranks them and writes the user's feed to Redis.",
    )
    ranker.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])

    api = commands.add_parser(
        "api",
        help="run the HTTP read API (feeds, interactions, features as JSON)",
        description="Serve the feed, interactions (hot or cold tier), user and product "
        "features and trending products over HTTP, with an OpenAPI document at "
        "/openapi.json and interactive docs at /docs. Host, port and workers default to "
        "SIGNALS_API_HOST, SIGNALS_API_PORT and SIGNALS_API_WORKERS.",
    )
    api.add_argument("--host", default=None, help="address to listen on (127.0.0.1)")
    api.add_argument("--port", type=_positive_int, default=None, help="port (8080)")
    api.add_argument("--workers", type=_positive_int, default=None, help="processes (1)")
    api.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])

    produce = commands.add_parser(
        "produce",
        help="send events from a JSON-lines file or stdin",
        description="Send the events in a JSON-lines file (one event object per line, fields as "
        "in schemas/events.py) or stdin. Every line is validated first; bad lines are reported "
        "as `line N: field: reason` and not sent. Exits 1 if anything was rejected or failed.",
    )
    produce.add_argument("path", nargs="?", default=None, help="the file; '-' or nothing: stdin")
    produce.add_argument("--file", dest="file", default=None, help=argparse.SUPPRESS)

    generate = commands.add_parser(
        "generate",
        help="send realistic synthetic traffic to the events topic",
        description="Simulate shoppers (catalog, users with preferences, sessions with "
        "app-opens, views, clicks, carts, wishlists, orders, duplicates and late events) and "
        "send the events, keyed by user id. Paced by event time at --rate (event times are "
        "real times), or --unpaced as fast as possible. Same seed, same events.",
    )
    _traffic_arguments(generate, default_rate=1000.0)
    generate.add_argument("--count", type=_positive_int, help="stop after this many events")
    generate.add_argument(
        "--unpaced",
        action="store_true",
        help="send as fast as possible (needs --count); event times then end about now",
    )
    generate.add_argument(
        "--write-dataset",
        metavar="DIR",
        help="afterwards, write params.json, products.csv and users.csv (the users who "
        "appeared, with their latent preferences) to DIR for training and tests",
    )
    generate.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: when stderr is a terminal)",
    )

    dlq = commands.add_parser(
        "dlq",
        help="list the dead-letter topic",
        description="List rejected events with their reason and source. `--records` prints "
        "them as JSON lines that `signals produce --file` sends again once corrected.",
    )
    dlq.add_argument("action", choices=["list"], help="what to do")
    dlq.add_argument("--max", type=_positive_int, default=100, help="at most this many (100)")
    dlq.add_argument("--records", action="store_true", help="only the events, as JSON lines")
    dlq.add_argument(
        "--idle",
        type=_positive_float,
        default=3.0,
        help="stop after this many seconds without a new message (3)",
    )

    last_k = commands.add_parser(
        "last-k",
        help="print a user's most recent interactions",
        description="Print a user's last-k interactions per type, newest first, from Redis.",
    )
    last_k.add_argument("user_id", type=_user_id, help="for example u000001")
    last_k.add_argument(
        "--type",
        dest="types",
        type=_product_type,
        action="append",
        help="only this type (repeatable); default: every type",
    )
    last_k.add_argument("-k", type=_positive_int, default=10, help="how many per type (default 10)")

    features = commands.add_parser(
        "features",
        help="print a user's or products' features, or a category's trending products",
        description="Read the online feature store (written by the worker; see README, "
        "Features): `features user U`, `features product P [P ...]`, `features trending C`. "
        "Values are as of --at (ms since the epoch; default: now).",
    )
    features.add_argument("kind", choices=["user", "product", "trending"], help="what to read")
    features.add_argument("ids", nargs="+", help="the user id, product ids, or category id")
    features.add_argument("--at", type=_positive_int, default=None, help="ms since the epoch")
    features.add_argument("-n", type=_positive_int, default=10, help="trending: how many (10)")

    feed = commands.add_parser(
        "feed",
        help="print a user's served feed (written by the ranker)",
        description="Read the feed the ranker last wrote for a user: its products (best "
        "first) with the channel each came from, the model, and the trigger behind it.",
    )
    feed.add_argument("user_id", help="the user id")
    feed.add_argument("-n", type=_positive_int, default=10, help="how many products (10)")

    _add_model_commands(commands)

    catalog = commands.add_parser(
        "catalog",
        help="load the product catalog the ranker reads, or read it",
        description="`catalog load FILE`: a CSV with the columns product_id, category_id, "
        "price_paise, seller_id, language, created_ms (others ignored; see README, Catalog). "
        "`catalog load --generated`: the traffic generator's catalog (--products, --categories, "
        "--seed as for generate). `catalog show P [P ...]`, `catalog newest [--category C]`.",
    )
    catalog.add_argument("action", choices=["load", "show", "newest"], help="what to do")
    catalog.add_argument("ids", nargs="*", help="load: the CSV file; show: product ids")
    catalog.add_argument(
        "--generated", action="store_true", help="load: the generator's catalog, not a file"
    )
    catalog.add_argument(
        "--skip-bad", action="store_true", help="load: skip refused rows instead of refusing all"
    )
    catalog.add_argument("--category", default=None, help="newest: only this category")
    catalog.add_argument("-n", type=_positive_int, default=10, help="newest: how many (10)")
    catalog.add_argument("--seed", type=int, default=TrafficParams.seed, help=argparse.SUPPRESS)
    catalog.add_argument(
        "--products", type=_positive_int, default=TrafficParams.products, help=argparse.SUPPRESS
    )
    catalog.add_argument(
        "--categories", type=_positive_int, default=TrafficParams.categories, help=argparse.SUPPRESS
    )

    _add_demo_command(commands)
    return parser


def _add_demo_command(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="worker + ranker + synthetic traffic: a user's feed re-ranked live",
        description="Start the worker (features and triggers on) and the ranker (training a "
        "first model if none is published), send synthetic traffic for a while, show the "
        "rate at which events land in Redis and each new feed of one user with the model "
        "version that scored it, then print that user's last-k, features and feed. The API "
        "runs beside them: its live page (the address is printed) shows any user's feed, "
        "last-k and features updating, and the pipeline's rates. Needs the stack "
        "(signals-stack up).",
    )
    _traffic_arguments(demo, default_seconds=30.0, default_rate=400.0)
    demo.add_argument(
        "--stay",
        action="store_true",
        help="after the traffic, keep the worker, ranker and API (the live page) running "
        "until Ctrl-C",
    )


def _add_model_commands(commands: Any) -> None:
    """`train` and `model`."""
    train = commands.add_parser(
        "train",
        help="train the ranker's LightGBM model and publish it to running rankers",
        description="Build a point-in-time training set from an event log (one row per "
        "impression, features as of its time), train LightGBM on the older rows, evaluate "
        "on the newest (AUC, NDCG@20 against popularity, candidate recall), and write the "
        "model, a report (JSON) and a plot (PNG) to the model folder; running rankers serve "
        "it within seconds. The log: generated traffic (default; --events, --rate, --users, "
        "--products, --categories, --seed), a JSON-lines file (--file), or the events topic "
        "from its start (--topic).",
    )
    source = train.add_mutually_exclusive_group()
    source.add_argument("--file", default=None, help="events as JSON lines (as `produce` reads)")
    source.add_argument("--topic", action="store_true", help="read the events topic from its start")
    train.add_argument(
        "--events", type=_positive_int, default=400_000, help="generated: events (400000)"
    )
    train.add_argument(
        "--rate", type=_positive_float, default=20.0, help="generated: events/s (20)"
    )
    train.add_argument("--users", type=_positive_int, default=10_000, help="generated (10000)")
    train.add_argument("--products", type=_positive_int, default=5000, help="generated (5000)")
    train.add_argument("--categories", type=_positive_int, default=100, help="generated (100)")
    train.add_argument("--seed", type=int, default=7, help="generated: seed (7)")
    train.add_argument(
        "--catalog", default=None, help="catalog CSV (default: the generator's, for --seed)"
    )
    train.add_argument("--rounds", type=_positive_int, default=400, help="most boosting rounds")
    train.add_argument("--model-dir", default=None, help="default: SIGNALS_MODEL_DIR")
    train.add_argument(
        "--no-publish", action="store_true", help="write the model but leave CURRENT alone"
    )

    model = commands.add_parser(
        "model",
        help="list trained ranker models, or choose the one rankers serve",
        description="`model list`: every trained version with its test metrics (* = served). "
        "`model use VERSION`: serve that version (a rollback is `use` of an older one).",
    )
    model.add_argument("action", choices=["list", "use"], help="what to do")
    model.add_argument("version", nargs="?", default=None, help="use: the version")
    model.add_argument("--model-dir", default=None, help="default: SIGNALS_MODEL_DIR")

    add_replay_parser(commands)
    add_backfill_parser(commands)

    cold_index = commands.add_parser(
        "cold-index",
        help="see or rebuild the index of the users the cold tier holds",
        description="The worker skips the cold-tier read of users the index says were never "
        "stored (README, Sessions: the cold-tier index). `status`: how many of its buckets "
        "are trusted. `rebuild`: scan the cold tier's users into it and mark it complete "
        "(safe beside running workers; needed after Redis lost its data, or after the cold "
        "tier was written by anything else than the worker and `signals backfill`).",
    )
    cold_index.add_argument("action", choices=["status", "rebuild"], help="what to do")

    check = commands.add_parser(
        "check",
        help="check that Kafka, Redis and the cold tier accept this configuration",
        description="Connect to each server as configured (SIGNALS_* settings: addresses, "
        "SASL, TLS, logins) and print one line per server: ok, or which server refused and "
        "why (a wrong password, an untrusted certificate, TLS expected or not spoken, "
        "unreachable). Exits 1 if any is not ok. The worker, the ranker and the API run the "
        "same check at start and stop on a refusal (README, Production connectivity).",
    )
    check.add_argument("--no-cql", action="store_true", help="skip the CQL cold tier")

    forget = commands.add_parser(
        "forget",
        help="erase users' data from every store (right to erasure)",
        description="Erase each user's interactions from the hot tier, the cold tier "
        "(snapshot and history), the online features and the served feed, and keep them "
        "from coming back: from then on no event of theirs timed at or before now is kept, "
        "whether it arrives late, from a replay or from a backfill. The request goes on "
        "the events topic, keyed like the user's events; the worker that owns the user's "
        "partition carries it out (README, Erasure). Exits 1 if a user is not erased "
        "within --wait seconds (the request stays queued and is done when a worker runs).",
    )
    forget.add_argument("users", nargs="+", metavar="USER", help="user ids to erase")
    forget.add_argument(
        "--wait",
        type=float,
        default=60.0,
        help="seconds to wait for the workers to report each erasure (60; 0: do not wait)",
    )

    drift = commands.add_parser(
        "drift",
        help="compare the live ranking features with the model's training data (PSI)",
        description="Score the hot tier's most recently active users as the ranker would "
        "(nothing is written), compare each ranking feature's and the score's distribution "
        "with the one saved beside the serving model at training, print the population "
        "stability index per feature, store the report for the live page, and say whether "
        "retraining is due (a PSI above the threshold). Exits 1 when it is due.",
    )
    drift.add_argument(
        "--users", type=_positive_int, default=300, help="live users to sample (300)"
    )
    drift.add_argument(
        "--threshold",
        type=_positive_float,
        default=None,
        help="PSI that makes retraining due (SIGNALS_DRIFT_THRESHOLD, 0.25)",
    )
    drift.add_argument("--json", action="store_true", help="print the report as JSON")


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.replay import ReplayError  # noqa: PLC0415  (pyarrow: only replays load it)
    from jobs.replay_cli import cmd_replay as replay  # noqa: PLC0415

    try:
        return replay(args, settings)
    except ReplayError as exc:
        raise CliError(f"replay: {exc}") from None


def cmd_backfill(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.replay import ReplayError  # noqa: PLC0415
    from jobs.replay_cli import cmd_backfill as run  # noqa: PLC0415

    try:
        return run(args, settings)
    except ReplayError as exc:
        raise CliError(f"backfill: {exc}") from None


def cmd_cold_index(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.cold_index import IndexDisabled, index_status, rebuild_index  # noqa: PLC0415

    try:
        if args.action == "rebuild":
            users, seconds = asyncio.run(rebuild_index(settings, progress=sys.stderr.isatty()))
            print(f"cold-tier index rebuilt: {users:,} users in {seconds:.1f}s; trusted")
            return 0
        status = asyncio.run(index_status(settings))
    except IndexDisabled as exc:
        raise CliError(str(exc)) from None
    shape = status.shape
    print(
        f"cold-tier index: {status.complete_buckets} of {COLD_INDEX_BUCKETS} buckets trusted "
        f"({'in use' if status.trusted else 'not trusted: run `signals cold-index rebuild`'}); "
        f"{shape.bucket_bits * COLD_INDEX_BUCKETS / 8 / 2**20:.1f} MiB at full size, "
        f"{shape.hashes} bits per user"
    )
    return 0 if status.trusted else 1


def cmd_forget(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.forget import ForgetError, forget_users  # noqa: PLC0415

    if args.wait < 0:
        raise CliError("--wait must be 0 or more seconds")

    def erased(user_id: str, took_s: float) -> None:
        print(f"{user_id}: erased {took_s:.2f}s after the request", flush=True)

    try:
        report = forget_users(settings, args.users, wait_s=args.wait, on_erased=erased)
    except ForgetError as exc:
        raise CliError(f"forget: {exc}") from None
    if args.wait == 0:
        print(f"erasure of {len(report.waiting)} users requested; workers carry it out")
        return 0
    if report.waiting:
        print(
            f"{PROG}: {len(report.waiting)} users not erased after {args.wait:g}s "
            f"({', '.join(report.waiting[:5])}): is a worker running on "
            f"{settings.events_topic}? Their requests stay queued and are carried out when "
            "one reaches them",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_drift(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.drift import DriftUnavailable, check_drift, report_lines  # noqa: PLC0415

    threshold = args.threshold or settings.drift_threshold
    try:
        check = asyncio.run(check_drift(settings, args.users, threshold))
    except DriftUnavailable as exc:
        raise CliError(f"drift: {exc}") from None
    if args.json:
        print(json.dumps(check.report.to_json(), indent=2))
    else:
        print("\n".join(report_lines(check)))
    return 1 if check.report.retrain_due else 0


def _traffic_arguments(
    parser: argparse.ArgumentParser,
    default_seconds: float | None = None,
    default_rate: float = 1000.0,
) -> None:
    parser.add_argument(
        "--rate",
        type=_positive_float,
        default=default_rate,
        help=f"events per second (default {default_rate:g})",
    )
    parser.add_argument(
        "--seconds",
        type=_positive_float,
        default=default_seconds,
        help="how long to send" + (f" (default {default_seconds:g})" if default_seconds else ""),
    )
    parser.add_argument(
        "--users",
        type=_positive_int,
        default=10_000,
        help="user population (default 10000; more appear if the rate needs them)",
    )
    parser.add_argument(
        "--products", type=_positive_int, default=5000, help="catalog size (default 5000)"
    )
    parser.add_argument(
        "--categories", type=_positive_int, default=100, help="categories (default 100)"
    )
    parser.add_argument("--seed", type=int, default=7, help="same seed, same events (default 7)")


def _wall_ms() -> int:
    return int(time.time() * 1000)


def cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    return _produce_file(args.file or args.path or "-", settings)


def traffic_params(args: argparse.Namespace) -> TrafficParams:
    try:
        return TrafficParams(
            seed=args.seed,
            users=args.users,
            products=args.products,
            categories=min(args.categories, args.products),
            rate=args.rate,
        )
    except ValueError as exc:
        raise CliError(f"bad traffic parameters: {exc}") from None


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    if args.unpaced and args.count is None:
        raise CliError("--unpaced needs --count (how many events to send)")
    if args.count is None and args.seconds is None:
        args.count = 10_000
    params = traffic_params(args)
    now_ms = _wall_ms()
    start_ms = now_ms - int(args.count / args.rate * 1000) if args.unpaced else now_ms
    simulation = TrafficSimulation(params, start_ms)
    # The catalog and the sessions are many small long-lived objects: freezing what exists
    # and collecting young objects less often is worth ~30% of the send rate here.
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    events: Iterable[Event] = simulation if args.unpaced else paced(simulation, start_ms)
    expected = args.count or int(args.rate * args.seconds)
    pace = "unpaced" if args.unpaced else f"~{args.rate:g} events/s"
    limit = f"{args.count} events" if args.count else f"{args.seconds:g}s"
    print(
        f"generating {pace} ({limit}) -> {settings.events_topic} at {settings.kafka_bootstrap}",
        file=sys.stderr,
    )
    with EventProducer(
        settings.kafka_bootstrap, settings.events_topic, **kafka_security(settings)
    ) as producer:
        summary = send_all(
            producer,
            bounded(events, count=args.count, seconds=args.seconds),
            expected=expected,
            progress=args.progress,
        )
    print(summary.line(settings.events_topic))
    if args.write_dataset:
        root = write_traffic(
            args.write_dataset, params, simulation.catalog, simulation.users_seen()
        )
        print(f"wrote params.json, products.csv, users.csv to {root}")
    return 0 if summary.failed == 0 else 1


def _produce_file(path: str, settings: Settings) -> int:
    """Validate every line; send the good ones; report the bad ones by line and reason."""
    rejected: list[str] = []
    handle = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    with (
        handle,
        EventProducer(
            settings.kafka_bootstrap, settings.events_topic, **kafka_security(settings)
        ) as producer,
    ):
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                event = Event.from_dict(json.loads(line))
            except json.JSONDecodeError as exc:
                rejected.append(f"line {number}: not JSON ({exc.msg})")
                continue
            except (InvalidEvent, TypeError) as exc:
                rejected.append(f"line {number}: {exc}")
                continue
            producer.send(event)
    print(
        f"sent {producer.delivered}, rejected {len(rejected)}, failed {producer.failed} "
        f"-> {settings.events_topic}"
    )
    for reason in rejected[:20]:
        print(f"  rejected {reason}")
    if len(rejected) > 20:
        print(f"  ... and {len(rejected) - 20} more")
    return 0 if not rejected and producer.failed == 0 else 1


def cmd_dlq(args: argparse.Namespace, settings: Settings) -> int:
    letters = read_dead_letters(
        kafka_config(settings), settings.dead_letter_topic, args.max, args.idle
    )
    count = 0
    for letter in letters:
        count += 1
        if args.records:
            record = letter.record
            if record is not None:
                print(json.dumps(record))
        else:
            print(letter.summary())
    if not args.records:
        print(f"{count} dead letters on {settings.dead_letter_topic}")
    return 0


def cmd_last_k(args: argparse.Namespace, settings: Settings) -> int:
    types = args.types or sorted(PRODUCT_EVENT_TYPES, key=list(EventType).index)

    async def read() -> Interactions:
        reader = build_interaction_reader(settings)
        try:
            return await reader.last_k_many(args.user_id, types, args.k)
        finally:
            await reader.close()

    answer = asyncio.run(read())
    where = "Redis: session active" if answer.tier == "hot" else "cold tier: no active session"
    print(f"last-k for user {args.user_id} (newest first; from {where})")
    for event_type in types:
        items = answer.items.get(event_type, [])
        shown = ", ".join(f"{product}@{_clock(ms)}" for product, ms in items) or "-"
        print(f"  {event_type.value:<16} {len(items):>3}  {shown}")
    return 0


def cmd_features(args: argparse.Namespace, settings: Settings) -> int:
    if args.kind in ("user", "trending") and len(args.ids) != 1:
        raise CliError(f"features {args.kind} takes one id, got {len(args.ids)}")
    if args.kind == "user":
        _valid_user(args.ids[0])

    async def read() -> list[str]:
        store = build_feature_store(settings)
        try:
            if args.kind == "user":
                return _user_lines(await store.user_features(args.ids[0], args.at))
            if args.kind == "product":
                return [
                    line
                    for features in await store.product_features(args.ids, args.at)
                    for line in _product_lines(features)
                ]
            top = await store.trending(args.ids[0], args.n, args.at)
            return [f"trending in {args.ids[0]} (decayed popularity)"] + [
                f"  {rank:>3}. {product:<24} {score:10.3f}"
                for rank, (product, score) in enumerate(top, 1)
            ] or ["  -"]
        finally:
            await store.close()

    print("\n".join(asyncio.run(read())))
    return 0


def cmd_feed(args: argparse.Namespace, settings: Settings) -> int:
    _valid_user(args.user_id)

    async def read() -> Feed | None:
        store = build_feed_store(settings)
        try:
            return await store.read(args.user_id)
        finally:
            await store.close()

    print("\n".join(_feed_lines(args.user_id, asyncio.run(read()), args.n)))
    return 0


def _feed_lines(user: str, feed: Feed | None, n: int) -> list[str]:
    if feed is None:
        return [f"no feed for user {user} yet (the ranker writes one on their next trigger)"]
    how = f"{feed.model}{', fallback' if feed.fallback else ''}"
    lines = [
        f"feed of user {user}: {len(feed.products)} products, model {how}, trigger "
        f"{feed.trigger_reason} (sequence {feed.sequence}), "
        f"generated {_clock(feed.generated_at_ms)}"
    ]
    for rank, (product, channel) in enumerate(
        zip(feed.products[:n], feed.channels, strict=False), 1
    ):
        lines.append(f"  {rank:>3}. {product:<12} {channel}")
    return lines


def cmd_catalog(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "load":
        return _load_catalog(args, settings)
    if args.action == "show" and not args.ids:
        raise CliError("catalog show needs at least one product id")

    async def read() -> list[str]:
        store = build_catalog_store(settings)
        try:
            if args.action == "newest":
                ids = await store.newest(args.n, args.category)
            else:
                ids = args.ids
            found = await store.items(ids)
        finally:
            await store.close()
        return [
            f"  {pid:<12} {item.category_id:<8} {item.price_paise / 100:>10.2f} INR  "
            f"{item.seller_id:<8} {item.language:<4} listed "
            f"{time.strftime('%Y-%m-%d', time.localtime(item.created_ms / 1000))}"
            if (item := found.get(pid))
            else f"  {pid:<12} (not in the catalog)"
            for pid in ids
        ] or ["  (the catalog is empty)"]

    print("\n".join(asyncio.run(read())))
    return 0


def _load_catalog(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.catalog import generated_items, load_items, read_catalog  # noqa: PLC0415
    from jobs.traffic.catalog import Catalog  # noqa: PLC0415

    if args.generated == bool(args.ids):
        raise CliError("catalog load takes one CSV file, or --generated")
    if args.generated:
        params = traffic_params(
            argparse.Namespace(
                seed=args.seed,
                users=TrafficParams.users,
                products=args.products,
                categories=args.categories,
                rate=TrafficParams.rate,
            )
        )
        items: list[CatalogItem] = list(generated_items(Catalog.build(params)))
        source = f"generated (seed {params.seed}, {params.products} products)"
    else:
        if len(args.ids) != 1:
            raise CliError(f"catalog load takes one file, got {len(args.ids)}")
        try:
            read = read_catalog(args.ids[0])
        except (BadCatalogRow, UnicodeDecodeError) as exc:
            raise CliError(str(exc)) from None
        for line, reason in read.refused[:20]:
            print(f"{args.ids[0]}:{line}: {reason}", file=sys.stderr)
        if len(read.refused) > 20:
            print(f"... and {len(read.refused) - 20} more refused rows", file=sys.stderr)
        if read.refused and not args.skip_bad:
            raise CliError(
                f"{len(read.refused)} bad rows, nothing loaded (fix them, or --skip-bad)"
            )
        items, source = read.items, str(Path(args.ids[0]).resolve())

    async def load() -> int:
        store = build_catalog_store(settings)
        try:
            return await load_items(store, items, len(items), source)
        finally:
            await store.close()

    held = asyncio.run(load())
    print(f"loaded {len(items):,} items from {source}; the catalog holds {held:,}")
    return 0


def _valid_user(user: str) -> bool:
    try:
        check_user_id(user)
    except InvalidEvent as exc:
        raise CliError(str(exc)) from None
    return True


def _counts_line(name: str, counts: dict[EventType, int]) -> str:
    shown = "  ".join(f"{kind.value}={n}" for kind, n in counts.items() if n) or "-"
    return f"  {name:<4} {shown}"


def _user_lines(features: UserFeatures) -> list[str]:
    since = features.ms_since_previous
    lines = [
        f"features of user {features.user_id} at {_clock(features.at_ms)}",
        *(_counts_line(window, counts) for window, counts in features.counts.items()),
        f"  distinct categories (24h) {features.distinct_categories_24h}",
        f"  since the previous event  {'-' if since is None else f'{since / 1000:.1f}s'}",
        f"  events in the session     {features.session_events}",
        f"  too late for their tiles  {features.late_events}",
        "  top categories            "
        + (", ".join(f"{c} {v:.2f}" for c, v in features.top_categories) or "-"),
    ]
    return lines


def _product_lines(features: ProductFeatures) -> list[str]:
    return [
        f"features of product {features.product_id} at {_clock(features.at_ms)}",
        *(_counts_line(window, counts) for window, counts in features.counts.items()),
        f"  click rate (24h, smoothed)       {features.click_rate_24h:.4f}",
        f"  add-to-cart rate (24h, smoothed) {features.cart_rate_24h:.4f}",
    ]


def _clock(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) + f".{ms % 1000:03d}"


class ServerRefused(Exception):
    """Servers refused this configuration: one line each (`sinks.preflight`)."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


def service_failure(exc: Exception, settings: Settings) -> str:
    """One line for a Kafka or Redis error: which server and why, when a check can tell
    (librdkafka's exceptions only say "transport failure")."""
    from sinks.preflight import check_cql, check_kafka, check_redis  # noqa: PLC0415

    if isinstance(exc, KafkaException):
        reach = check_kafka(settings, 5)
    elif isinstance(exc, RedisError):
        reach = check_redis(settings)
    else:
        reach = check_cql(settings)
    if not reach.ok:
        return reach.line()
    where = "cold tier: " if type(exc).__module__.startswith("cassandra") else ""
    return f"{where}{type(exc).__name__}: {exc}"


def refuse_misconfigured(settings: Settings, *, cql: bool = True) -> None:
    """Stop before starting when a server refuses this configuration (a login, a
    certificate, TLS or not): no retry would help, and nothing has been read or written
    yet. A server that is only down is left to the process's retries."""
    from sinks.preflight import Trouble, check_all  # noqa: PLC0415

    for attempt in range(3):
        fatal = [reach for reach in check_all(settings, cql=cql) if reach.trouble.fatal]
        # A closed connection reads as "expects TLS" on a plaintext client, but a server
        # restarting closes connections too: only a refusal that lasts stops the process.
        if not fatal or any(r.trouble is not Trouble.PLAINTEXT for r in fatal) or attempt == 2:
            break
        time.sleep(2)
    if fatal:
        raise ServerRefused([reach.line() for reach in fatal])


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    """One line per server: reached as configured, or which server and why not."""
    from sinks.preflight import check_all  # noqa: PLC0415

    found = check_all(settings, cql=not args.no_cql)
    for reach in found:
        print(reach.line(), file=sys.stdout if reach.ok else sys.stderr)
    return 0 if all(reach.ok for reach in found) else 1


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    import faust  # noqa: PLC0415  (heavy import, only the worker needs it)

    refuse_misconfigured(settings)
    app = build_worker_app(settings)
    worker = faust.Worker(app, loglevel=args.loglevel)
    worker.execute_from_commandline()  # exits the process when the worker stops
    return 0


def cmd_ranker(args: argparse.Namespace, settings: Settings) -> int:
    import faust  # noqa: PLC0415  (heavy import, only the Faust apps need it)

    refuse_misconfigured(settings, cql=False)
    worker = faust.Worker(build_ranker_app(settings), loglevel=args.loglevel)
    worker.execute_from_commandline()  # exits the process when the ranker stops
    return 0


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn  # noqa: PLC0415  (only the API serves HTTP)

    host = args.host or settings.api_host
    port = args.port or settings.api_port
    workers = args.workers or settings.api_workers
    refuse_misconfigured(settings)
    print(f"read API on http://{host}:{port} ({workers} worker(s); docs at /docs)", flush=True)
    uvicorn.run(
        "streams.api:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=args.loglevel,
        access_log=args.loglevel == "debug",
    )
    return 0


def _demo_catalog(
    loop: asyncio.AbstractEventLoop, settings: Settings, params: TrafficParams
) -> None:
    """Load the generator's catalog for these parameters (the ranker reads it)."""
    from jobs.catalog import generated_items, load_items  # noqa: PLC0415
    from jobs.traffic.catalog import Catalog  # noqa: PLC0415

    catalog = build_catalog_store(settings)
    items = list(generated_items(Catalog.build(params)))
    try:
        held = loop.run_until_complete(load_items(catalog, items, len(items), "demo (generated)"))
    finally:
        loop.run_until_complete(catalog.close())
    print(f"catalog: {held:,} products (the traffic generator's)")


#: Events the demo trains its first model on, when none was published yet.
DEMO_TRAINING_EVENTS = 60_000


def _demo_model(settings: Settings, params: TrafficParams) -> None:
    """The ranker's model: the published one, or a quick first one trained now."""
    from jobs.catalog import generated_items  # noqa: PLC0415
    from jobs.traffic.catalog import Catalog  # noqa: PLC0415
    from jobs.train import run_training  # noqa: PLC0415

    store = ModelStore(settings.model_dir)
    current = store.current()
    if current is not None:
        print(f"ranker model: {current} (from {store.directory}; `signals model list`)")
        return
    print(
        f"no ranker model yet: training one on {DEMO_TRAINING_EVENTS:,} generated events "
        "(`signals train` trains a bigger one) ..."
    )
    start_ms = _wall_ms() - DEMO_TRAINING_EVENTS * 50 - 3_600_000
    world = TrafficParams(
        seed=params.seed, users=params.users, products=params.products,
        categories=params.categories, rate=20.0,
    )  # fmt: skip
    events = list(itertools.islice(simulate(world, start_ms), DEMO_TRAINING_EVENTS))
    catalog = {item.product_id: item for item in generated_items(Catalog.build(world))}
    trained = run_training(events, catalog, settings.feature_config(), store, progress=False)
    test = trained.report["test"]
    print(
        f"ranker model: {trained.version}, test NDCG@20 {test['ndcg@20']['model']:.3f} "
        f"(popularity {test['ndcg@20']['popularity']:.3f})"
    )


def _demo_processes(logs: Path) -> list[subprocess.Popen[bytes]]:
    """The worker (first), the ranker and the API, logging into `logs`."""
    print(f"starting the worker (features and triggers on), the ranker and the API (logs: {logs})")
    # Off by default for now (README, Rolling features); at the demo's rate they keep up.
    env = {**os.environ, "SIGNALS_FEATURES_ENABLED": "true", "SIGNALS_TRIGGERS_ENABLED": "true"}
    return [
        _background(command, logs / f"demo-{command}.log", env)
        for command in ("worker", "ranker", "api")
    ]


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    logs = Path(os.environ.get("SIGNALS_STATE_DIR", ".state")) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    store = build_hot_store(settings)
    feeds = build_feed_store(settings)
    loop = asyncio.new_event_loop()
    params = traffic_params(args)
    _demo_catalog(loop, settings, params)
    _demo_model(settings, params)
    applied_before = loop.run_until_complete(store.applied_count())
    processes = _demo_processes(logs)
    worker = processes[0]
    user = user_id(0)  # the most active user
    page = f"http://{settings.api_host}:{settings.api_port}/?user={user}"
    print(f"live page: {page}")
    # A feed left by an earlier run is not news: only feeds written from now on are shown.
    shown = loop.run_until_complete(feeds.read(user))
    try:
        start_ms = _wall_ms()
        events = bounded(
            paced(simulate(params, start_ms), start_ms),
            count=None,
            seconds=args.seconds,
        )
        print(f"sending ~{args.rate:g} events/s for {args.seconds:g}s to {settings.events_topic}")
        with EventProducer(
            settings.kafka_bootstrap, settings.events_topic, **kafka_security(settings)
        ) as producer:
            last_report = started = time.monotonic()
            last_applied = applied_before
            for event in events:
                producer.send(event)
                now = time.monotonic()
                if now - last_report >= 2.0:
                    applied = loop.run_until_complete(store.applied_count())
                    rate = (applied - last_applied) / (now - last_report)
                    print(
                        f"  t={now - started:5.1f}s  produced {producer.delivered:>8}  "
                        f"in Redis {applied - applied_before:>8}  ({rate:,.0f} interactions/s)"
                    )
                    last_report, last_applied = now, applied
                    shown = _show_new_feed(loop.run_until_complete(feeds.read(user)), shown)
        _wait_for_drain(loop, store, applied_before, worker)
        print()
        cmd_last_k(argparse.Namespace(user_id=user, types=None, k=5), settings)
        print()
        cmd_features(argparse.Namespace(kind="user", ids=[user], at=None), settings)
        print()
        time.sleep(1.0)  # the last triggers' feeds
        print("\n".join(_feed_lines(user, loop.run_until_complete(feeds.read(user)), 10)))
        if args.stay:
            _stay(processes, page)
        return 0
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        loop.run_until_complete(store.close())
        loop.run_until_complete(feeds.close())
        loop.close()


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.event_log import file_events, topic_events  # noqa: PLC0415
    from jobs.train import NotEnoughData, TrainOptions, run_training, summary_lines  # noqa: PLC0415

    params = traffic_params(args)
    if args.file:
        try:
            events, invalid = file_events(args.file)
        except FileNotFoundError:
            raise CliError(f"no such file: {args.file}") from None
        source = f"file {args.file}"
    elif args.topic:
        events, invalid = topic_events(kafka_config(settings), settings.events_topic)
        source = f"topic {settings.events_topic}"
    else:
        # Ending now: product ages then match what a ranker serving today sees.
        start_ms = _wall_ms() - int(args.events / args.rate * 1000)
        print(f"generating {args.events:,} events at {args.rate:g} events/s of simulated time")
        events, invalid = list(itertools.islice(simulate(params, start_ms), args.events)), 0
        source = f"generated: {args.events} events, rate {args.rate:g}, seed {args.seed}"
    if invalid:
        print(f"left out {invalid:,} records that are not valid events")
    items = _training_catalog(args, params)
    store = ModelStore(args.model_dir or settings.model_dir)
    print(f"training on {len(events):,} events, {len(items):,} catalog products")
    try:
        trained = run_training(
            events,
            {item.product_id: item for item in items},
            settings.feature_config(),
            store,
            options=TrainOptions(rounds=args.rounds),
            publish=not args.no_publish,
            total_events=len(events),
            source=source,
        )
    except NotEnoughData as exc:
        raise CliError(f"not enough data to train: {exc}") from None
    print("\n".join(summary_lines(trained)))
    return 0


def _training_catalog(args: argparse.Namespace, params: TrafficParams) -> list[CatalogItem]:
    from jobs.catalog import generated_items, read_catalog  # noqa: PLC0415
    from jobs.traffic.catalog import Catalog  # noqa: PLC0415

    if args.catalog is None:
        return list(generated_items(Catalog.build(params)))
    try:
        read = read_catalog(args.catalog)
    except FileNotFoundError:
        raise CliError(f"no such file: {args.catalog}") from None
    except BadCatalogRow as exc:
        raise CliError(str(exc)) from None
    if read.refused:
        line, reason = read.refused[0]
        print(f"left out {len(read.refused):,} catalog rows (first: line {line}: {reason})")
    return read.items


def cmd_model(args: argparse.Namespace, settings: Settings) -> int:
    store = ModelStore(args.model_dir or settings.model_dir)
    if args.action == "use":
        if not args.version:
            raise CliError("model use needs a VERSION (see `signals model list`)")
        try:
            store.publish(args.version)
        except FileNotFoundError as exc:
            raise CliError(str(exc)) from None
        print(f"serving {args.version}: running rankers switch within seconds")
        return 0
    current = store.current()
    versions = store.versions()
    if not versions:
        print(f"no trained models in {store.directory} (run `signals train`)")
        return 0
    for version in versions:
        mark = "*" if version == current else " "
        try:
            report = json.loads(store.files(version).report.read_text(encoding="utf-8"))
            test = report["test"]
            detail = (
                f"AUC {test['auc']['model']:.3f}  NDCG@20 {test['ndcg@20']['model']:.3f} "
                f"({test['ndcg@20']['model_vs_popularity']:.2f}x popularity)"
            )
        except (OSError, ValueError, KeyError, TypeError):
            detail = "(no readable report)"
        print(f"{mark} {version}  {detail}")
    return 0


def _show_new_feed(feed: Feed | None, shown: Feed | None) -> Feed | None:
    """Print the feed when it is newer than the one shown; returns the one shown now."""
    if feed is None or (shown is not None and feed.sequence == shown.sequence):
        return shown
    top = ", ".join(feed.products[:4])
    print(
        f"           {feed.user_id}'s feed re-ranked ({feed.trigger_reason}, "
        f"model {feed.model}): {top}, ..."
    )
    return feed


def _stay(processes: list[subprocess.Popen[bytes]], page: str) -> None:
    """Keep the demo's processes running until Ctrl-C (or one of them ends)."""
    print(f"\nstill running: the worker, the ranker and the live page {page}; Ctrl-C stops them")
    with contextlib.suppress(KeyboardInterrupt):
        while all(process.poll() is None for process in processes):
            time.sleep(1.0)


def _background(command: str, log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "jobs.cli", command, "--loglevel", "warning"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )


def _wait_for_drain(
    loop: asyncio.AbstractEventLoop,
    store: RedisHotStore,
    before: int,
    worker: subprocess.Popen[bytes],
) -> None:
    """Give the worker a moment to apply the tail of the traffic, reporting the total."""
    previous, stable_since = -1, time.monotonic()
    while time.monotonic() - stable_since < 2.0:
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with code {worker.returncode}; see its log")
        applied = loop.run_until_complete(store.applied_count()) - before
        if applied != previous:
            previous, stable_since = applied, time.monotonic()
        time.sleep(0.25)
    print(f"done: {previous} interactions in Redis")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command not in ("worker", "ranker", "api"):
        # The CQL driver logs every failed connection attempt with a traceback; a CLI
        # reports the outcome in one line instead (the worker keeps the driver's logs).
        logging.getLogger("cassandra").setLevel(logging.CRITICAL)
    try:
        settings = Settings.load()
        handler = {
            "worker": cmd_worker,
            "ranker": cmd_ranker,
            "api": cmd_api,
            "produce": cmd_produce,
            "generate": cmd_generate,
            "last-k": cmd_last_k,
            "features": cmd_features,
            "catalog": cmd_catalog,
            "feed": cmd_feed,
            "train": cmd_train,
            "model": cmd_model,
            "drift": cmd_drift,
            "replay": cmd_replay,
            "backfill": cmd_backfill,
            "cold-index": cmd_cold_index,
            "forget": cmd_forget,
            "check": cmd_check,
            "dlq": cmd_dlq,
            "demo": cmd_demo,
        }[args.command]
        return handler(args, settings)
    except CliError as exc:
        parser.error(str(exc))  # usage + one line, exit 2
    except ServerRefused as exc:
        for line in exc.lines:
            print(f"{PROG}: error: {line}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        # A rule across settings has no single field; its message names them.
        message = str(first["msg"]).removeprefix("Value error, ")
        where = f"bad setting SIGNALS_{field.upper()}" if field else "bad settings"
        print(f"{PROG}: error: {where}: {message}", file=sys.stderr)
    except BrokenPipeError:
        # The reader went away (`signals ... | head`): not an error; stop writing quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (KafkaException, RedisError) as exc:
        print(f"{PROG}: error: {service_failure(exc, settings)}", file=sys.stderr)
    except (OSError, RuntimeError) as exc:
        print(f"{PROG}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
    except Exception as exc:
        if not type(exc).__module__.startswith("cassandra"):
            raise
        # The CQL driver's errors (NoHostAvailable, timeouts) are service problems too.
        print(f"{PROG}: error: {service_failure(exc, settings)}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
