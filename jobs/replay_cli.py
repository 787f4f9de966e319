"""The `signals replay` command line: arguments, the run, the summary table."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

from schemas.replay_layout import EventTimeRange, parse_offsets, parse_partitions
from sinks.connectivity import kafka_config
from streams.settings import Settings

DESCRIPTION = """\
Read an events topic over an event-time range [START, END) (events at START included, at
END excluded; the record timestamps are broker time, so the scan covers
[START - max future skew, END + lateness) and filters on event time) or over explicit
offsets, with its own consumer (assigned partitions, no group joined, nothing committed
to a live group), and write it:

  --to-parquet DIR   hive-style Parquet: DIR/date=YYYY-MM-DD/event_type=TYPE/*.parquet,
                     a manifest, and an error report of records that did not decode;
                     an interrupted run resumes where it stopped when run again
  --to-topic TOPIC   the same keys, values, timestamps and headers, in the same partition
                     numbers, copied in transactions (resumable, no duplicates for
                     read_committed readers)
  --to-pipeline NAME an isolated what-if run: the range copied into the namespace NAME's
                     own topic, then the real worker run under NAME's Redis prefix, CQL
                     keyspace and consumer group until it has applied everything

Times are ISO 8601 (2026-12-01T10:00:00Z; a bare date is its UTC midnight) or ms since
the epoch. Exact counts per partition are printed at the end.
"""


def add_replay_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    replay = commands.add_parser(
        "replay",
        help="replay a topic's event-time range to Parquet, a topic or a what-if pipeline",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_range_arguments(replay)
    out = replay.add_argument_group("where to write (one of)")
    target = out.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-parquet", type=Path, metavar="DIR", help="Parquet folder")
    target.add_argument("--to-topic", metavar="TOPIC", help="another topic")
    target.add_argument("--to-pipeline", metavar="NAME", help="an isolated what-if run")
    target.add_argument(
        "--drop-pipeline", metavar="NAME", help="delete a what-if run's topics, keys, keyspace"
    )
    out.add_argument(
        "--target-bootstrap", default=None, help="--to-topic: another cluster's bootstrap servers"
    )
    out.add_argument(
        "--errors",
        type=Path,
        default=None,
        help="--to-topic/--to-pipeline: error report file (replay-errors-<target>.jsonl)",
    )
    out.add_argument("--json", action="store_true", help="print the summary as JSON")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_range_arguments(parser: argparse.ArgumentParser) -> None:
    """What to read: the same arguments for `replay` and `backfill`."""
    parser.add_argument("--topic", default=None, help="topic to read (SIGNALS_EVENTS_TOPIC)")
    when = parser.add_argument_group("what to read (a range, a day, or offsets)")
    when.add_argument("--start", type=parse_time, default=None, help="first event time, included")
    when.add_argument("--end", type=parse_time, default=None, help="event time, excluded")
    when.add_argument("--day", type=parse_day, default=None, help="one UTC day, YYYY-MM-DD")
    when.add_argument(
        "--offsets",
        type=_offsets,
        default=None,
        help="explicit offsets per partition, P:FROM-TO[,P:FROM-TO...] (TO excluded)",
    )
    when.add_argument(
        "--partitions",
        type=_partitions,
        default=None,
        help="only these partitions, e.g. 0,2,5-7 (default all): split a replay across processes",
    )
    when.add_argument(
        "--lateness",
        type=_seconds,
        default=3600.0,
        help="seconds an event may have been sent after its event time (3600)",
    )
    when.add_argument(
        "--to-end",
        action="store_true",
        help="scan to the end of the topic: exact for any lateness, reads more",
    )


BACKFILL_DESCRIPTION = """\
Rebuild the cold-tier interaction history and the online features from a replay's
Parquet folder (--from-parquet DIR) or straight from a topic range (the same range
arguments as `signals replay`), with the live worker's own code. Idempotent: every
feature write is fenced by the record's Kafka partition and offset, and the cold-tier
rows are derived from their content and event times, so running it twice changes
nothing (and what the live worker already applied is not counted again). The hot tier is
not touched.
"""


def add_backfill_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    backfill = commands.add_parser(
        "backfill",
        help="rebuild the cold tier and the features from a replay folder or a topic range",
        description=BACKFILL_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    backfill.add_argument(
        "--from-parquet", type=Path, metavar="DIR", default=None, help="a replay's folder"
    )
    add_range_arguments(backfill)
    backfill.add_argument("--json", action="store_true", help="print the summary as JSON")
    backfill.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_backfill(args: argparse.Namespace, settings: Settings) -> int:
    """Raises ReplayError (a one-line message) for a bad request."""
    from jobs.backfill import backfill  # noqa: PLC0415
    from jobs.replay import ReplayError  # noqa: PLC0415
    from jobs.replay_files import NotAReplay, replay_manifest  # noqa: PLC0415

    progress = not args.no_progress and not args.json
    source: Path | object
    if args.from_parquet is not None:
        if args.start or args.end or args.day or args.offsets:
            raise ReplayError("--from-parquet reads the whole folder: give no range with it")
        try:
            replay_manifest(args.from_parquet)
        except NotAReplay as exc:
            raise ReplayError(str(exc)) from None
        source = args.from_parquet
    else:
        source = _request(args, settings)
    summary = backfill(settings, source, progress)
    if args.json:
        print(json.dumps(asdict(summary), indent=1))
    else:
        print(
            f"backfilled {summary.events:,} events of {summary.users:,} users "
            f"({summary.rejected:,} left out as the worker would) in {summary.seconds:.1f}s: "
            f"features in Redis prefix {settings.redis_key_prefix!r}, "
            f"{summary.snapshots:,} session snapshots in keyspace {settings.cql_keyspace!r}"
        )
    return 0


def _request(args: argparse.Namespace, settings: Settings) -> object:
    from jobs.replay import ReplayRequest  # noqa: PLC0415

    return ReplayRequest(
        topic=args.topic or settings.events_topic,
        time_range=_time_range(args),
        offsets=args.offsets,
        partitions=args.partitions,
        lateness_ms=int(args.lateness * 1000),
        future_skew_ms=settings.max_future_skew_s * 1000,
        to_end=args.to_end,
    )


def parse_time(text: str) -> int:
    """ISO 8601 (UTC when no zone is given) or ms since the epoch -> ms since the epoch."""
    if re.fullmatch(r"\d{11,}", text):
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time (ISO 8601 like 2026-12-01T10:00:00Z, or ms since the epoch)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parse_day(text: str) -> tuple[int, int]:
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day (YYYY-MM-DD)") from None
    start = int(day.timestamp() * 1000)
    return start, int((day + timedelta(days=1)).timestamp() * 1000)


def _offsets(text: str) -> dict[int, tuple[int, int]]:
    try:
        return parse_offsets(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _partitions(text: str) -> list[int]:
    try:
        return parse_partitions(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value:g}")
    return value


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    """Raises ReplayError (a one-line message) for a bad request."""
    from jobs.replay import (  # noqa: PLC0415  (pyarrow is heavy; only replay needs it)
        ReplayError,
        ReplayRequest,
        erasures_or_fail,
        replay_to_parquet,
        replay_to_topic,
        run_pipeline,
    )

    if args.drop_pipeline:
        from infra.namespace import drop, whatif_settings  # noqa: PLC0415

        try:
            namespace = whatif_settings(settings, args.drop_pipeline)
        except ValueError as exc:
            raise ReplayError(str(exc)) from None
        drop(namespace)
        print(f"dropped what-if run {args.drop_pipeline!r} (topics, Redis keys, keyspace)")
        return 0
    request = _request(args, settings)
    assert isinstance(request, ReplayRequest)
    progress = not args.no_progress and not args.json
    if args.to_parquet is not None:
        summary = replay_to_parquet(
            kafka_config(settings),
            request,
            args.to_parquet,
            progress,
            erasures=erasures_or_fail(settings),
        )
    elif args.to_topic is not None:
        errors = args.errors or Path(f"replay-errors-{args.to_topic}.jsonl")
        summary = replay_to_topic(
            kafka_config(settings),
            request,
            args.to_topic,
            errors_path=errors,
            target_bootstrap=args.target_bootstrap,
            progress=progress,
            erasures=erasures_or_fail(settings),
        )
    else:
        summary = run_pipeline(settings, request, args.to_pipeline, args.errors, progress)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=1))
    else:
        print("\n".join(summary_lines(summary, request)))
    return 0


def _time_range(args: argparse.Namespace) -> EventTimeRange | None:
    from jobs.replay import ReplayError  # noqa: PLC0415

    given = [args.start is not None or args.end is not None, args.day is not None, args.offsets]
    if sum(bool(g) for g in given) != 1:
        raise ReplayError("give one of: --start and --end, --day, or --offsets")
    if args.offsets:
        return None
    if args.day is not None:
        return EventTimeRange(*args.day)
    if args.start is None or args.end is None:
        raise ReplayError("a range needs both --start and --end")
    try:
        return EventTimeRange(args.start, args.end)
    except ValueError as exc:
        raise ReplayError(str(exc)) from None


def summary_lines(summary: object, request: object) -> list[str]:
    """The per-partition table and the lateness warning."""
    from jobs.replay import ReplayRequest, ReplaySummary  # noqa: PLC0415

    assert isinstance(summary, ReplaySummary) and isinstance(request, ReplayRequest)
    lines = [
        f"{'partition':>9}  {'offsets scanned':>23}  {'selected':>9}  {'outside':>8}  "
        f"{'errors':>6}  {'max lateness':>12}"
    ]
    for p, c in sorted(summary.partitions.items()):
        lines.append(
            f"{p:>9}  {f'{c.scanned_from}-{c.scanned_to}':>23}  {c.selected:>9,}  "
            f"{c.outside:>8,}  {c.errors:>6,}  {c.max_lateness_ms / 1000:>11.1f}s"
        )
    rate = summary.scanned / summary.seconds if summary.seconds else 0.0
    lines.append(
        f"{summary.selected:,} events selected, {summary.errors:,} errors, "
        f"{summary.scanned:,} records scanned in {summary.seconds:.1f}s ({rate:,.0f}/s) "
        f"-> {summary.output}"
    )
    near = sum(c.near_the_edge for c in summary.partitions.values())
    if near:
        lines.append(
            f"warning: {near} in-range events were sent in the last tenth of the "
            f"{request.lateness_ms / 1000:g}s lateness window; later ones may be missing "
            "(raise --lateness or use --to-end)"
        )
    unread = sum(c.unread_after for c in summary.partitions.values())
    if unread and request.time_range is not None:
        lines.append(
            f"note: {unread:,} records were sent after the scan window (END + "
            f"{request.lateness_ms / 1000:g}s); events of the range sent that late are not "
            "included (--to-end includes them)"
        )
    if summary.errors:
        lines.append("warning: records that did not decode are in the error report, not the output")
    return lines
