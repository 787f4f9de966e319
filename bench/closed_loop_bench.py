"""The closed loop: simulated shoppers browse the feed the ranker served, and their clicks
flow back through Kafka, the worker, the triggers and the ranker.

Set-up, on the local stack under an isolated namespace: the generator's catalog is loaded;
a LightGBM model is trained by the training job on generated traffic of the same world
(other users, earlier) and published; `signals worker` (features and triggers on) and
`signals ranker` run as subprocesses, the ranker with `SIGNALS_RANKER_HOLDOUT_SHARE=0.5`:
half of the users (a hash of their id) are served the popularity ranking on purpose, the
other half the model's. The shoppers' earlier history (generated, the hour before) is sent
first, so each has a feed when the loop starts.

The loop: each shopper (a generated user, whose latent preferences are known) runs
sessions: an app-open, then views down their feed, position by position, reading the feed
from Redis before each view (so a feed re-ranked mid-session takes effect at the next
position) and skipping what this session already showed. Each view is clicked with the
generator's own click model (`jobs.traffic.simulation.click_probability`: the shopper's
affinity for the category, the price, the position, the listing's language); a click may
be followed by an add-to-cart. Background traffic from other users (encoded before the loop
starts, so the producer's CPU is not in it) runs beside it, so the
worker sees `--rate` events/s in all. Click-through rate = clicks / views, per arm, by the
arm of the feed each view came from.

End to end: for every click after the first `--warmup` seconds, the time from producing
it to the first read of the shopper's feed that comes from a trigger at or after it: click
to re-ranked feed, through Kafka, the worker, the trigger topic and the ranker (one poller
reads the feed sequences of every shopper with a click waiting, every 5 ms).

    .venv/bin/python bench/closed_loop_bench.py [--seconds 90] [--shoppers 300] [--rate 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from freshness_bench import Schedule
from harness import (
    Isolated,
    Table,
    WorkerProcess,
    ensure_stack,
    percentiles,
    wait_until_drained,
    write_results,
)

from jobs.catalog import generated_items, load_items
from jobs.traffic import TrafficParams, simulate
from jobs.traffic.catalog import Catalog
from jobs.traffic.population import UserProfile, population, user_index
from jobs.traffic.simulation import click_probability, position_decay, price_level
from jobs.train import run_training
from schemas.catalog import CatalogItem
from schemas.events import Event, EventType
from schemas.feed_layout import Feed
from sinks.events_producer import DeliveryReport, EventProducer
from sinks.model_store import ModelStore
from streams.bootstrap import build_catalog_store, build_feed_store
from streams.settings import Settings

#: The ranker's report every 10 s (`streams.ranker._report_progress`).
RANKER_REPORT = re.compile(
    r"ranker: (?P<triggers>\d+) triggers in .*?: (?P<written>\d+) feeds written .*?"
    r"(?P<stale>\d+) stale, (?P<superseded>\d+) superseded, (?P<shed>\d+) shed"
)


#: Its report of where high-intent triggers waited (`streams.ranker.HighIntentWaits`).
RANKER_WAITS = re.compile(
    r"ranker: high intent taken in (?P<taken_in>\d+) / \d+ ms after publishing, "
    r"picked (?P<picked>\d+) / \d+ ms; rounds (?P<rounds>\d+) / \d+ ms"
)


def ranker_waits(text: str) -> dict[str, float]:
    """The median over the ranker's reports in `text` of each p50 in its waits line: a
    high-intent trigger taken into the look-ahead (Kafka and Faust's delivery), picked
    for a round (and the queue before it), and a round's length."""
    found = [match.groupdict() for match in RANKER_WAITS.finditer(text)]
    return {
        name: statistics.median(int(values[name]) for values in found) if found else 0.0
        for name in ("taken_in", "picked", "rounds")
    }


def ranker_reports(text: str) -> dict[str, int]:
    """What the ranker's reports in `text` add up to: triggers taken, feeds written,
    stale, superseded and shed (the non-urgent ones it had no time for)."""
    totals = dict.fromkeys(("reports", "triggers", "written", "stale", "superseded", "shed"), 0)
    for found in RANKER_REPORT.finditer(text):
        totals["reports"] += 1
        for name, value in found.groupdict().items():
            totals[name] += int(value)
    return totals


PARAMS = TrafficParams(seed=7, users=10_000, products=5_000, categories=100)
WATCH_EVERY_S = 0.005
WATCH_LIMIT_S = 5.0
READS_IN_FLIGHT = 32


@dataclass(frozen=True, slots=True)
class _Click:
    user: str
    event_id: str
    sent_at: float  # monotonic, just before it was produced
    sent_at_ms: int  # the same moment on the wall clock, to set against the feed's times


@dataclass
class Arm:
    views: int = 0
    clicks: int = 0

    @property
    def ctr(self) -> float:
        return self.clicks / self.views if self.views else 0.0


@dataclass
class Outcome:
    arms: dict[str, Arm] = field(default_factory=lambda: {"model": Arm(), "holdout": Arm()})
    no_feed: int = 0  # views skipped: no feed, or nothing left unseen in it
    latencies_ms: list[float] = field(default_factory=list)
    # Where a click's time went, per timed click (ms): produced -> trigger published (the
    # worker), -> feed generated (the trigger topic, the ranker's queue and ranking), ->
    # seen (the feed write and this bench's poll), from the feed that reflected it.
    stages_ms: dict[str, list[float]] = field(
        default_factory=lambda: {"worker": [], "ranker": [], "seen": []}
    )
    missed: int = 0  # clicks whose re-ranked feed did not show within WATCH_LIMIT_S
    models: set[str] = field(default_factory=set)
    events: int = 0


class Loop:
    def __init__(
        self,
        settings: Settings,
        catalog: dict[str, CatalogItem],
        *,
        producer: EventProducer,
        outcome: Outcome,
        deadline: float,
        measure_from: float,
    ) -> None:
        self.measure_from = measure_from  # clicks before this are not timed (warm-up)
        self.settings = settings
        self.catalog = catalog
        self.producer = producer
        self.outcome = outcome
        self.deadline = deadline
        self.feeds = build_feed_store(settings)
        self.offsets: dict[str, int] = {}  # event id -> offset, from delivery reports
        self.clicks: list[_Click] = []  # produced, not yet seen reflected in their feed
        self._stages: set[asyncio.Future[None]] = set()  # feed reads splitting timed clicks
        self._reads = asyncio.Semaphore(READS_IN_FLIGHT)  # the client's pool is bounded

    async def feed(self, user: str) -> Feed | None:
        async with self._reads:
            return await self.feeds.read(user)

    def delivered(self, report: DeliveryReport) -> None:
        if report.ok and report.offset is not None:
            self.offsets[report.event_id] = report.offset

    def send(self, event: Event) -> None:
        self.producer.send(event, self.delivered)
        self.outcome.events += 1

    async def shopper(self, profile: UserProfile, rng: random.Random) -> None:
        user = profile.user_id
        while time.monotonic() < self.deadline:
            self.send(_event(rng, user, EventType.APP_OPEN, None, profile.language))
            shown: set[str] = set()
            for position in range(rng.randint(6, 14)):
                await asyncio.sleep(rng.uniform(0.2, 0.6))
                if time.monotonic() >= self.deadline:
                    return
                feed = await self.feed(user)
                product = next((p for p in feed.products if p not in shown), None) if feed else None
                item = self.catalog.get(product) if product else None
                if feed is None or item is None:
                    self.outcome.no_feed += 1
                    continue
                shown.add(item.product_id)
                arm = self.outcome.arms["holdout" if feed.holdout else "model"]
                if not feed.holdout:
                    self.outcome.models.add(feed.model)
                arm.views += 1
                self.send(_event(rng, user, EventType.VIEW, item, profile.language, position))
                chance = click_probability(
                    PARAMS,
                    profile.affinity(item.category_id),
                    -profile.price_sensitivity * price_level(PARAMS, item.price_paise),
                    position_decay(PARAMS, position),
                    same_language=item.language == profile.language,
                )
                if rng.random() >= chance:
                    continue
                arm.clicks += 1
                await asyncio.sleep(rng.uniform(0.1, 0.3))
                click = _event(rng, user, EventType.CLICK, item, profile.language, position)
                sent_at, sent_at_ms = time.monotonic(), int(time.time() * 1000)
                self.send(click)
                self.clicks.append(_Click(user, click.event_id, sent_at, sent_at_ms))
                if rng.random() < PARAMS.add_to_cart_after_click:
                    await asyncio.sleep(rng.uniform(0.1, 0.3))
                    cart = _event(
                        rng, user, EventType.ADD_TO_CART, item, profile.language, position
                    )
                    self.send(cart)
            await asyncio.sleep(rng.uniform(1.0, 3.0))  # between sessions

    async def watch_clicks(self) -> None:
        """Until every click is resolved: every WATCH_EVERY_S, the feed sequences of all
        shoppers with a click waiting, in one script call (`RedisFeedStore.sequences`); a
        click is reflected by the first poll that sees a sequence at or past its offset.

        One poller for all clicks rather than one per click: per-click pollers read
        thousands of times a second when the pipeline was behind (about a third of this
        process's CPU, on the two cores it shares with what it measures)."""
        while self.clicks or time.monotonic() < self.deadline:
            await asyncio.sleep(WATCH_EVERY_S)
            now = time.monotonic()
            # Clicks produced while the sequences are read join the next poll.
            clicks, self.clicks = self.clicks, []
            waiting: list[_Click] = []
            for click in clicks:
                if now - click.sent_at < WATCH_LIMIT_S:
                    waiting.append(click)
                elif click.sent_at >= self.measure_from:
                    self.outcome.missed += 1
            known = [c for c in waiting if self.offsets.get(c.event_id) is not None]
            users = sorted({c.user for c in known})
            sequences = dict(zip(users, await self.feeds.sequences(users), strict=True))
            seen, seen_ms = time.monotonic(), int(time.time() * 1000)
            unresolved: list[_Click] = []
            timed: list[_Click] = []
            for click in waiting:
                offset = self.offsets.get(click.event_id)
                sequence = sequences.get(click.user)
                if offset is None or sequence is None or sequence < offset:
                    unresolved.append(click)
                elif click.sent_at >= self.measure_from:
                    self.outcome.latencies_ms.append((seen - click.sent_at) * 1000)
                    timed.append(click)
            self.clicks = unresolved + self.clicks
            if timed:
                self._stages.add(asyncio.ensure_future(self._split(timed, seen_ms)))
                self._stages = {task for task in self._stages if not task.done()}
        await asyncio.gather(*self._stages)

    async def _split(self, clicks: list[_Click], seen_ms: int) -> None:
        """Where the time of each click went, from the feed that reflected it (read after
        the fact: the feed may since be a later one, which only shifts time from the
        worker's share to the ranker's; such clicks are left out)."""
        feeds = await asyncio.gather(*(self.feeds.read(click.user) for click in clicks))
        stages = self.outcome.stages_ms
        for click, feed in zip(clicks, feeds, strict=True):
            if feed is None or feed.generated_at_ms > seen_ms:
                continue
            stages["worker"].append(feed.trigger_published_at_ms - click.sent_at_ms)
            stages["ranker"].append(feed.generated_at_ms - feed.trigger_published_at_ms)
            stages["seen"].append(seen_ms - feed.generated_at_ms)


def _event(  # noqa: PLR0917
    rng: random.Random,
    user: str,
    kind: EventType,
    item: CatalogItem | None,
    language: str,
    position: int | None = None,
) -> Event:
    now = int(time.time() * 1000)
    product, category, price = (
        (item.product_id, item.category_id, item.price_paise) if item else (None, None, None)
    )
    quantity = 1 if kind is EventType.ADD_TO_CART else None
    return Event(
        f"loop-{rng.getrandbits(64):016x}",
        user,
        kind,
        now,
        product,
        category,
        price,
        position,
        "android",
        language,
        None,
        quantity,
    )


def background_schedule(rate: float, seconds: float) -> Schedule:
    """Other users' traffic at `rate` for `seconds`, encoded before the loop starts (the
    producer's CPU, ~10 us an event, stays off the two cores the loop is measured on, as
    in bench/freshness_bench.py); event time = send time. Their ids get a `b` prefix: they
    never collide with a shopper's."""
    stream = simulate(dataclasses.replace(PARAMS, rate=rate), int(time.time() * 1000))
    events = [
        dataclasses.replace(event, user_id="b" + event.user_id)
        for event in itertools.islice(stream, int(rate * seconds))
    ]
    return Schedule.encode(events)


def background(settings: Settings, schedule: Schedule, stop: threading.Event) -> int:
    """Send the schedule's messages at their times until it ends or `stop` is set; how
    many were sent."""
    from confluent_kafka import Producer  # noqa: PLC0415

    from sinks.events_producer import BATCHING, GUARANTEES  # noqa: PLC0415

    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, **BATCHING, **GUARANTEES})
    topic, sent = settings.events_topic, 0
    for key, value, send_at in schedule.messages:
        while (ahead_s := send_at - time.time()) > 0 and not stop.is_set():
            time.sleep(min(ahead_s, 0.002))
        if stop.is_set():
            break
        producer.produce(topic, key=key, value=value)
        sent += 1
        if sent % 64 == 0:
            producer.poll(0)
    if producer.flush(30):
        raise RuntimeError("the background producer could not deliver everything in 30 s")
    return sent


def history(shoppers: int, events: int) -> list[Event]:
    """The shoppers' earlier sessions: generated traffic of the hour before now, kept to
    the shoppers' ids."""
    start = int(time.time() * 1000) - 3_600_000
    stream = simulate(dataclasses.replace(PARAMS, users=shoppers, rate=events / 3000), start)
    kept = (e for e in stream if user_index(e.user_id) < shoppers)
    return list(itertools.islice(kept, events))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=90.0, help="loop length (90)")
    parser.add_argument("--shoppers", type=int, default=300, help="simulated shoppers (300)")
    parser.add_argument("--rate", type=float, default=2000.0, help="events/s in all (2000)")
    parser.add_argument(
        "--warmup", type=float, default=10.0, help="seconds before clicks are timed (10)"
    )
    parser.add_argument(
        "--train-events", type=int, default=150_000, help="events the model trains on (150000)"
    )
    args = parser.parse_args(argv)
    ensure_stack(print)
    with tempfile.TemporaryDirectory() as models:
        iso = Isolated.create(
            "loop",
            SIGNALS_FEATURES_ENABLED="true",
            SIGNALS_TRIGGERS_ENABLED="true",
            SIGNALS_MODEL_DIR=models,
            SIGNALS_RANKER_HOLDOUT_SHARE="0.5",
        )
        try:
            return run(iso, args, models)
        finally:
            iso.cleanup()


def run(iso: Isolated, args: argparse.Namespace, models: str) -> int:  # noqa: PLR0915
    settings = iso.settings
    items = list(generated_items(Catalog.build(PARAMS)))
    catalog = {item.product_id: item for item in items}

    async def load_catalog() -> None:
        store = build_catalog_store(settings)
        try:
            await load_items(store, items, len(items), "closed loop")
        finally:
            await store.close()

    asyncio.run(load_catalog())
    print(f"training a model on {args.train_events:,} generated events (other users) ...")
    start = int(time.time() * 1000) - 86_400_000
    log = list(
        itertools.islice(simulate(dataclasses.replace(PARAMS, rate=20.0), start), args.train_events)
    )
    trained = run_training(
        log, catalog, settings.feature_config(), ModelStore(models), progress=False
    )
    print(
        f"  model {trained.version}: test NDCG@20 {trained.report['test']['ndcg@20']['model']:.3f}"
    )
    profiles = [population(PARAMS).profile(i) for i in range(args.shoppers)]
    outcome = Outcome()
    with (
        WorkerProcess(iso.env, label="loop-worker") as worker,
        WorkerProcess(iso.env, label="loop-ranker", command="ranker") as ranker,
    ):
        past = history(args.shoppers, 40 * args.shoppers)
        print(f"sending the shoppers' history ({len(past):,} events of the hour before) ...")
        with EventProducer(settings.kafka_bootstrap, settings.events_topic) as producer:
            for event in past:
                producer.send(event)
        # The worker applies it and the ranker writes the first feeds; the loop starts
        # once both have caught up, so it measures the steady state, not this backlog.
        drained = wait_until_drained(
            settings,
            [
                (settings.app_id, settings.events_topic),
                (settings.ranker_app_id, settings.trigger_topic),
            ],
            timeout_s=120,
        )
        print(f"  applied and ranked in {drained:.1f} s")
        if not (worker.alive() and ranker.alive()):
            raise RuntimeError(f"a process died:\n{worker.tail()}\n{ranker.tail()}")
        shopper_rate = args.shoppers / 0.45  # one event per ~0.45 s of think time
        rest = max(args.rate - shopper_rate, 0.0)
        print(
            f"closed loop for {args.seconds:g}s: {args.shoppers} shoppers (~{shopper_rate:,.0f} "
            f"events/s) and background traffic at {rest:,.0f} events/s"
        )
        schedule = background_schedule(rest, args.seconds + 10)
        time.sleep(max(schedule.messages[0][2] - time.time(), 0) if schedule.messages else 0)
        stop = threading.Event()
        sent_background: list[int] = []
        thread = threading.Thread(
            target=lambda: sent_background.append(background(settings, schedule, stop)),
            daemon=True,
        )
        thread.start()
        ranker_log_from = len(ranker.log.read_text(errors="replace"))
        began = time.monotonic()
        deadline, measure_from = began + args.seconds, began + args.warmup
        asyncio.run(
            shop(
                settings,
                catalog,
                profiles=profiles,
                outcome=outcome,
                deadline=deadline,
                measure_from=measure_from,
            )
        )
        stop.set()
        thread.join(30)
        elapsed = time.monotonic() - began
        if not (worker.alive() and ranker.alive()):
            raise RuntimeError(f"a process died:\n{worker.tail()}\n{ranker.tail()}")
        ranker_log = ranker.log.read_text(errors="replace")[ranker_log_from:]
        ranked, waits = ranker_reports(ranker_log), ranker_waits(ranker_log)
    model, holdout = outcome.arms["model"], outcome.arms["holdout"]
    latency = percentiles(outcome.latencies_ms)
    total_rate = (outcome.events + sum(sent_background)) / elapsed
    result: dict[str, Any] = {
        "shoppers": args.shoppers,
        "seconds": elapsed,
        "events_per_s": total_rate,
        "model": trained.version,
        "models_seen": sorted(outcome.models),
        "arms": {
            name: {"views": arm.views, "clicks": arm.clicks, "ctr": arm.ctr}
            for name, arm in outcome.arms.items()
        },
        "ctr_ratio": model.ctr / holdout.ctr if holdout.ctr else None,
        "views_without_feed": outcome.no_feed,
        "click_to_feed": latency,
        "click_to_feed_stages": {
            stage: percentiles(values) for stage, values in outcome.stages_ms.items()
        },
        "clicks_not_reflected": outcome.missed,
        "ranker": ranked,
        "ranker_waits_ms": waits,
        "training": {
            "ndcg@20": trained.report["test"]["ndcg@20"],
            "auc": trained.report["test"]["auc"],
        },
    }
    table = Table("closed loop: shoppers browse the served feed, clicks flow back")
    table.add("click-through, learned feed", model.ctr * 100, "%", f"{model.clicks}/{model.views}")
    table.add(
        "click-through, popularity (holdout)",
        holdout.ctr * 100,
        "%",
        f"{holdout.clicks}/{holdout.views}",
    )
    table.add("learned / popularity", result["ctr_ratio"] or 0.0, "x", "target >= 1.5")
    table.add(
        "click -> re-ranked feed, p50",
        latency["p50_ms"],
        "ms",
        f"{len(outcome.latencies_ms)} clicks",
    )
    table.add("click -> re-ranked feed, p99", latency["p99_ms"], "ms", "target <= 300")
    for stage, note in (
        ("worker", "produced -> trigger published"),
        ("ranker", "trigger -> feed generated"),
        ("seen", "generated -> seen (write, poll)"),
    ):
        split = percentiles(outcome.stages_ms[stage])
        table.add(f"  of which {stage}, p50", split["p50_ms"], "ms", note)
        table.add(f"  of which {stage}, p99", split["p99_ms"], "ms")
    table.add("clicks not reflected within 5 s", outcome.missed, "clicks")
    table.add("events/s through the worker", total_rate, "/s", "shoppers + background")
    table.add("views with no feed to read", outcome.no_feed, "views")
    span = 10.0 * ranked["reports"] or 1.0  # the ranker reports every 10 s
    arrived = ranked["triggers"] + ranked["superseded"] + ranked["shed"]
    table.add("ranker: triggers in", arrived / span, "/s", "its 10 s reports")
    table.add("ranker: triggers ranked", ranked["triggers"] / span, "/s", "one per user a batch")
    table.add(
        "ranker: superseded / shed",
        f"{ranked['superseded'] / span:,.0f} / {ranked['shed'] / span:,.0f}",
        "/s",
        "a later trigger of the user's came / not urgent, no time",
    )
    for name, label in (
        ("taken_in", "taken in after publishing"),
        ("picked", "picked for a round"),
        ("rounds", "a round ranked"),
    ):
        table.add(f"ranker: high intent {label}, p50", waits[name], "ms", "median of its reports")
    table.print()
    print(f"wrote {write_results(f'closed_loop_{int(args.rate)}', result)}")
    return 0


async def shop(
    settings: Settings,
    catalog: dict[str, CatalogItem],
    *,
    profiles: list[UserProfile],
    outcome: Outcome,
    deadline: float,
    measure_from: float,
) -> None:
    with EventProducer(settings.kafka_bootstrap, settings.events_topic) as producer:
        loop = Loop(
            settings,
            catalog,
            producer=producer,
            outcome=outcome,
            deadline=deadline,
            measure_from=measure_from,
        )

        async def pump() -> None:
            while time.monotonic() < deadline + WATCH_LIMIT_S:
                producer.poll(0)
                await asyncio.sleep(0.002)

        pumping = asyncio.ensure_future(pump())
        watching = asyncio.ensure_future(loop.watch_clicks())
        await asyncio.gather(
            *(loop.shopper(p, random.Random(f"loop/{p.user_id}")) for p in profiles)
        )
        await watching
        pumping.cancel()
        await loop.feeds.close()


if __name__ == "__main__":
    sys.exit(main())
