"""The feed ranker: a Faust agent over the trigger topic, in its own app and consumer
group (`<app id>-ranker`), so it scales out by partitions like any Faust app.

Per trigger: drop it when the stored feed already comes from the same or a later
trigger; read the user's last-k and affinities, the candidates' channels (trending in
their categories, trending overall, the newest listings) and the candidates' catalog
items and features; merge the candidates (`streams.logic.candidates`), score them, apply
the re-ranking rules (`streams.logic.rerank`) and write the feed (`schemas.feed_layout`),
which a later trigger's feed alone can replace.

Scoring: with a model loaded (`streams.models.ModelSlot`, swapped without a restart when
the training job publishes a new version) each candidate's row
(`streams.logic.ranking`) is scored to a click probability and the feed records the
model's version. With no model, or when scoring fails, the feed is the popularity
ranking (each candidate's 24h events weighted like the affinity: view 1, click 3,
wishlist 4, cart 5, order 10; ties by the channel's own order), recorded as
`model = "popularity"`, `fallback = true` and counted as a fallback: never an empty feed.
A malformed trigger goes to the dead-letter
topic with the reason; a store that is down is retried with backoff before the trigger
is acknowledged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import faust
import numpy as np
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry, Histogram
from redis.exceptions import RedisError

from schemas.catalog import CatalogItem
from schemas.events import EventType, InvalidEvent
from schemas.features import (
    ProductFeatures,
    UserShare,
    WindowCounts,
    top_decayed,
    user_features_of,
)
from schemas.feed_layout import POPULARITY_MODEL, Feed
from schemas.triggers import InvalidTrigger, RankTrigger, decode_trigger
from sinks.catalog_store import RedisCatalogStore
from sinks.drift_store import RedisDriftStore
from sinks.feature_store import RedisFeatureStore
from sinks.feed_store import RedisFeedStore
from sinks.hot_store import HotStore
from sinks.retry import until_applied
from streams.logic.admission import dead_letter_headers
from streams.logic.candidates import Candidate, CandidateBudget, SharedView, merge_candidates
from streams.logic.drift import DEFAULT_THRESHOLD, TRIGGERS, DriftMonitor
from streams.logic.ranking import (
    FEATURES,
    ProductContext,
    feature_matrix,
    in_holdout,
    popularity,
    product_context,
    user_context,
)
from streams.logic.rerank import RerankRules, rerank
from streams.metrics import RankerCollector, rank_duration
from streams.metrics import serve as serve_metrics
from streams.models import LoadedModel, ModelSlot
from streams.settings import Settings

log = logging.getLogger(__name__)

#: Trending overall is merged from every category's top products at most this often.
TRENDING_REFRESH_S = 10.0
#: How many of each category's trending products the overall list and a channel take.
TRENDING_PER_CATEGORY = 50
#: How long a product's features and a catalog item are reused from memory: products'
#: windows are an hour or a day long, and the trending lists they come with are refreshed
#: every TRENDING_REFRESH_S anyway (a user's own signals are always read fresh).
PRODUCT_CACHE_S = 10.0
CATALOG_CACHE_S = 60.0
#: Entries the in-memory caches keep at most (the oldest half goes when over).
CACHE_ENTRIES = 200_000
#: How often the ranker logs what it did.
REPORT_EVERY_S = 10.0
#: Triggers taken from the queue at once at most (when behind), and users ranked at once.
TRIGGER_BATCH = 256
RANK_CONCURRENCY = 8
#: The feed's length (what the feed service pages through).
FEED_LENGTH = 100
_BUDGET = CandidateBudget()
_RULES = RerankRules()
_LAST_K_TYPES = (EventType.VIEW, EventType.WISHLIST, EventType.ADD_TO_CART, EventType.ORDER)


@dataclass
class RankerCounters:
    triggers: int = 0
    written: int = 0
    stale: int = 0  # the stored feed came from the same or a later trigger
    scored: int = 0  # feeds ranked by the model
    fallbacks: int = 0  # popularity rankings served (no model loaded, or scoring failed)
    scoring_errors: int = 0
    holdouts: int = 0  # popularity served on purpose (the holdout group)
    superseded: int = 0  # triggers skipped: a later one of the same user was queued too
    dead_lettered: int = 0
    candidates: int = 0  # candidates merged, over every written feed
    channels: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Product:
    """A product's stored features as last read, and what the ranking derives from them."""

    expires: float
    features: ProductFeatures
    every: WindowCounts  # every product's windows, read with it
    popularity: float
    _context: ProductContext | None = None

    def context(self, item: CatalogItem | None) -> ProductContext:
        if self._context is None:
            self._context = product_context(self.features, self.every, item)
        return self._context


class FeedRanker:
    """Turns a trigger into a written feed (no Faust in here: the agent calls `handle`)."""

    def __init__(
        self,
        *,
        hot_store: HotStore,
        features: RedisFeatureStore,
        catalog: RedisCatalogStore,
        feeds: RedisFeedStore,
        last_k: int = 20,
        budget: CandidateBudget = _BUDGET,
        rules: RerankRules = _RULES,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        models: ModelSlot | None = None,
        holdout_share: float = 0.0,
        drift_threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        self._hot = hot_store
        self._features = features
        self._catalog = catalog
        self._feeds = feeds
        self._last_k = last_k
        self._budget = budget
        self._rules = rules
        self._clock_ms = clock_ms
        self.counters = RankerCounters()
        self._shared: SharedView | None = None
        self._refresh: asyncio.Future[None] | None = None
        self._item_cache: dict[str, tuple[float, CatalogItem | None]] = {}
        self._product_cache: dict[str, _Product] = {}
        self._models = models if models is not None else ModelSlot(None)
        self._holdout_share = holdout_share
        self._scoring_error_logged = -float("inf")
        #: Observed per trigger when set (`streams.metrics.rank_duration`).
        self.rank_seconds: Histogram | None = None
        self._shared_at = -float("inf")
        #: A few rows of every scored trigger, compared with the model's reference.
        self.drift = DriftMonitor(len(FEATURES), drift_threshold)

    def now_ms(self) -> int:
        return self._clock_ms()

    async def rank(self, trigger: RankTrigger) -> Feed | None:
        """Write the trigger's feed; None when a feed of the same or a later trigger is
        stored already (nothing written). Three round trips of reads at most: the user's
        (feed sequence, last-k, stored features, together), then the candidates' catalog
        items and features (together), then the write; what every user shares (trending,
        newest listings, categories) is refreshed in memory every TRENDING_REFRESH_S."""
        self.counters.triggers += 1
        self._models.poll()
        began = time.perf_counter()
        try:
            return await self._rank(trigger)
        finally:
            if self.rank_seconds is not None:
                self.rank_seconds.observe(time.perf_counter() - began)

    async def _rank(self, trigger: RankTrigger) -> Feed | None:
        user = trigger.user_id
        stored, last_k, share, shared = await asyncio.gather(
            self._feeds.sequence(user),
            self._user_last_k(user),
            self._features.user_share(user),
            self._shared_view(),
        )
        if stored is not None and stored >= trigger.sequence:
            self.counters.stale += 1
            return None
        at_ms = self._clock_ms()
        candidates = self._candidates(
            share, last_k, shared, language=trigger.language, seed=trigger.sequence, at_ms=at_ms
        )
        ids = [c.product_id for c in candidates]
        items, products = await asyncio.gather(self._items(ids), self._products(ids))
        holdout = self._holdout_share > 0 and in_holdout(user, self._holdout_share)
        model = None if holdout else self._models.model
        scores = None
        if model is not None:
            scores = self._scores(
                model, trigger, share, last_k, at_ms, ids=ids, items=items, products=products
            )
        scored = model is not None and scores is not None
        if scores is None:
            scores = np.fromiter((p.popularity for p in products), np.float64, len(products))
        # Best first; ties keep the channels' order (a stable sort of the merged list).
        ranked = [ids[i] for i in np.argsort(-scores, kind="stable").tolist()]
        item_of = dict(zip(ids, items, strict=True))
        feed_ids = rerank(
            ranked,
            seller_of=_ItemField(item_of, "seller_id"),
            language_of=_ItemField(item_of, "language"),
            ordered=last_k.get(EventType.ORDER, ()),
            language=trigger.language,
            rules=self._rules,
        )[:FEED_LENGTH]
        channel = dict(zip(ids, (c.channel for c in candidates), strict=True))
        feed = Feed(
            user_id=user,
            sequence=trigger.sequence,
            products=feed_ids,
            channels=[channel[p] for p in feed_ids],
            model=model.version if scored and model is not None else POPULARITY_MODEL,
            fallback=not scored and not holdout,
            holdout=holdout,
            trigger_reason=trigger.reason.value,
            trigger_published_at_ms=trigger.published_at_ms,
            generated_at_ms=self._clock_ms(),
            language=trigger.language,
        )
        if not await self._feeds.write(feed):
            self.counters.stale += 1  # a later trigger's feed landed meanwhile
            return None
        self.counters.written += 1
        if scored:
            self.counters.scored += 1
        elif holdout:
            self.counters.holdouts += 1
        else:
            self.counters.fallbacks += 1
        self.counters.candidates += len(candidates)
        for name in feed.channels:
            self.counters.channels[name] = self.counters.channels.get(name, 0) + 1
        return feed

    def _candidates(
        self,
        share: UserShare | None,
        last_k: dict[EventType, list[str]],
        shared: SharedView,
        *,
        language: str | None,
        seed: int,
        at_ms: int,
    ) -> list[Candidate]:
        affinities = top_decayed(
            share.affinity.items() if share is not None else (),
            at_ms,
            self._features.config.affinity_half_life_ms,
            self._budget.affinity_categories,
        )
        return merge_candidates(
            shared.inputs_for(affinities, last_k, self._budget, language),
            self._budget,
            seed=seed,
        )

    def _matrix(
        self,
        user_id: str,
        share: UserShare | None,
        last_k: dict[EventType, list[str]],
        *,
        language: str | None,
        at_ms: int,
        ids: list[str],
        items: list[CatalogItem | None],
        products: list[_Product],
    ) -> NDArray[np.float64]:
        """The candidates' feature rows (`streams.logic.ranking.FEATURES` columns)."""
        config = self._features.config
        features = user_features_of(user_id, share, at_ms=at_ms, config=config)
        affinity = share.affinity if share is not None else {}
        context = user_context(features, affinity, last_k, language, config)
        contexts = [product.context(item) for product, item in zip(products, items, strict=True)]
        return np.asarray(feature_matrix(context, ids, contexts), dtype=np.float64)

    async def score_now(
        self, user_id: str, language: str | None, at_ms: int | None = None
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
        """The rows and scores the ranker would produce for the user from the stores as
        they are, as of `at_ms` (default now), without writing anything (the drift check's
        live sample); None without a model or candidates."""
        model = self._models.model
        if model is None:
            return None
        last_k, share, shared = await asyncio.gather(
            self._user_last_k(user_id), self._features.user_share(user_id), self._shared_view()
        )
        at_ms = self._clock_ms() if at_ms is None else at_ms
        candidates = self._candidates(share, last_k, shared, language=language, seed=0, at_ms=at_ms)
        ids = [c.product_id for c in candidates]
        if not ids:
            return None
        items, products = await asyncio.gather(self._items(ids), self._products(ids))
        matrix = self._matrix(
            user_id,
            share,
            last_k,
            language=language,
            at_ms=at_ms,
            ids=ids,
            items=items,
            products=products,
        )
        return matrix, model.score(matrix)

    def _scores(
        self,
        model: LoadedModel,
        trigger: RankTrigger,
        share: UserShare | None,
        last_k: dict[EventType, list[str]],
        at_ms: int,
        *,
        ids: list[str],
        items: list[CatalogItem | None],
        products: list[_Product],
    ) -> NDArray[np.float64] | None:
        """The model's click probability per candidate; None (and counted, and logged at
        most once a minute) when scoring fails: the caller falls back to popularity. A few
        rows of each go into the drift sample."""
        try:
            matrix = self._matrix(
                trigger.user_id,
                share,
                last_k,
                language=trigger.language,
                at_ms=at_ms,
                ids=ids,
                items=items,
                products=products,
            )
            values = model.score(matrix)
        except Exception:
            self.counters.scoring_errors += 1
            now = time.monotonic()
            if now - self._scoring_error_logged >= 60:
                self._scoring_error_logged = now
                log.warning(
                    "scoring with model %s failed: popularity served", model.version, exc_info=True
                )
            return None
        self.drift.add(model.version, matrix, values)
        return values

    async def _items(self, ids: list[str]) -> list[CatalogItem | None]:
        """Catalog items (in the order of `ids`), from memory when read in the last
        CATALOG_CACHE_S."""
        now = time.monotonic()
        cache = self._item_cache
        missing = [p for p in ids if (hit := cache.get(p)) is None or hit[0] < now]
        if missing:
            found = await self._catalog.items(missing)
            for product_id in missing:
                cache[product_id] = (now + CATALOG_CACHE_S, found.get(product_id))
            _bound(cache)
        return [cache[p][1] for p in ids]

    async def _products(self, ids: list[str]) -> list[_Product]:
        """Each product's features and popularity (in the order of `ids`), from memory
        when read in the last
        PRODUCT_CACHE_S: product counts move slowly, and the same trending products are
        candidates for most users (a user's own signals are always read fresh)."""
        now = time.monotonic()
        cache = self._product_cache
        missing = [p for p in ids if (hit := cache.get(p)) is None or hit.expires < now]
        if missing:
            config = self._features.config
            every, read = await self._features.product_features_and_global(missing)
            for features in read:
                cache[features.product_id] = _Product(
                    now + PRODUCT_CACHE_S, features, every, popularity(features, config)
                )
            _bound(cache)
        return [cache[p] for p in ids]

    async def close(self) -> None:
        for store in (self._hot, self._features, self._catalog, self._feeds):
            await store.close()

    @property
    def models(self) -> ModelSlot:
        return self._models

    async def _user_last_k(self, user_id: str) -> dict[EventType, list[str]]:
        lists = await self._hot.last_k_many(user_id, _LAST_K_TYPES, self._last_k)
        return {kind: [p for p, _ in rows] for kind, rows in zip(_LAST_K_TYPES, lists, strict=True)}

    async def _shared_view(self) -> SharedView:
        """Every category's trending products and newest listings, and trending overall.
        Read once before the first trigger; after that a view older than
        TRENDING_REFRESH_S is refreshed in the background while triggers use the last
        one, so no trigger waits for it."""
        if self._shared is None:
            self._shared = await self._read_shared_view()
            self._shared_at = time.monotonic()
        elif time.monotonic() - self._shared_at >= TRENDING_REFRESH_S and self._refresh is None:
            self._refresh = asyncio.ensure_future(self._refresh_shared_view())
        return self._shared

    async def _refresh_shared_view(self) -> None:
        try:
            self._shared = await self._read_shared_view()
            self._shared_at = time.monotonic()
        except Exception:  # the last view keeps serving; the next trigger tries again
            log.warning("refreshing trending and newest listings failed", exc_info=True)
        finally:
            self._refresh = None

    async def _read_shared_view(self) -> SharedView:
        categories = await self._catalog.categories()
        trending, newest = await asyncio.gather(
            self._features.trending_many(categories, TRENDING_PER_CATEGORY),
            self._catalog.newest_many([*categories, None], self._budget.new),
        )
        pooled = list({p for top in trending for p, _ in top})
        listed = await self._items(pooled)
        languages = {
            p: item.language for p, item in zip(pooled, listed, strict=True) if item is not None
        }
        return SharedView.of(categories, trending, newest, self._budget.total, languages)


class _ItemField(Mapping[str, str]):
    """One field of the candidates' catalog items, read only for the products the
    re-ranking looks at (the top of the list), not built for all of them."""

    def __init__(self, items: dict[str, CatalogItem | None], name: str) -> None:
        self._items = items
        self._name = name

    def __getitem__(self, product_id: str) -> str:
        item = self._items.get(product_id)
        if item is None:
            raise KeyError(product_id)
        return str(getattr(item, self._name))

    def __iter__(self) -> Iterator[str]:
        return (p for p, item in self._items.items() if item is not None)

    def __len__(self) -> int:
        return sum(1 for item in self._items.values() if item is not None)


def _bound(cache: dict[str, Any]) -> None:
    """Drop the oldest half of an over-full cache (dicts keep insertion order)."""
    if len(cache) > CACHE_ENTRIES:
        for key in list(itertools.islice(cache, len(cache) // 2)):
            del cache[key]


def _watch_models(app: faust.App, ranker: FeedRanker, every_s: float) -> None:
    @app.timer(interval=every_s)  # type: ignore[untyped-decorator]
    async def look_for_a_new_model() -> None:
        ranker.models.poll()  # returns at once; a new model loads in a thread


def _check_drift(
    app: faust.App, ranker: FeedRanker, store: RedisDriftStore | None, every_s: float
) -> None:
    """Compare the live sample with the serving model's reference every `every_s`; the
    figures go to /metrics, the log (when retraining is due) and the drift store."""
    source = f"ranker {socket.gethostname()}:{os.getpid()}"

    @app.timer(interval=every_s)  # type: ignore[untyped-decorator]
    async def check_drift() -> None:
        model = ranker.models.model
        references = model.references if model is not None else None
        report = ranker.drift.compare(
            references.get(TRIGGERS) if references else None, FEATURES, ranker.now_ms()
        )
        if report is None:
            return
        if report.retrain_due:
            worst = ", ".join(f"{name} {value:.2f}" for name, value in report.worst[:3])
            log.warning(
                "drift: retraining is due for model %s (PSI above %.2f over %d rows: %s)",
                report.model,
                report.threshold,
                report.rows,
                worst,
            )
        if store is not None:
            try:
                await store.write(report.to_json(), source)
            except (RedisError, OSError) as exc:
                log.warning("drift report not stored: %s", exc)


def _serve_metrics(app: faust.App, ranker: FeedRanker, port: int) -> None:
    """The ranker's Prometheus metrics (`streams.metrics`), served once the app runs."""
    registry = CollectorRegistry()
    registry.register(RankerCollector(ranker.counters, ranker.models, ranker.drift))
    ranker.rank_seconds = rank_duration(registry)
    app.metrics_registry = registry  # type: ignore[attr-defined]

    @app.task  # type: ignore[untyped-decorator]
    async def serve_ranker_metrics() -> None:
        serve_metrics(registry, port, "ranker")


def _report_progress(app: faust.App, ranker: FeedRanker) -> None:
    """Log what the ranker did every REPORT_EVERY_S (when it did anything)."""
    reported = dataclasses.replace(ranker.counters, channels={})

    @app.timer(interval=REPORT_EVERY_S)  # type: ignore[untyped-decorator]
    async def report_progress() -> None:
        nonlocal reported
        now, before = ranker.counters, reported
        if now.triggers == before.triggers:
            return
        log.info(
            "ranker: %d triggers in %.0fs (%.0f/s): %d feeds written (%d by model %s, %d "
            "popularity fallbacks, %d holdout), %d stale, %d superseded, %d dead-lettered",
            now.triggers - before.triggers,
            REPORT_EVERY_S,
            (now.triggers - before.triggers) / REPORT_EVERY_S,
            now.written - before.written,
            now.scored - before.scored,
            ranker.models.version or "-",
            now.fallbacks - before.fallbacks,
            now.holdouts - before.holdouts,
            now.stale - before.stale,
            now.superseded - before.superseded,
            now.dead_lettered - before.dead_lettered,
        )
        reported = dataclasses.replace(now, channels={})


def _background_work(
    app: faust.App, ranker: FeedRanker, settings: Settings, drift_store: RedisDriftStore | None
) -> None:
    """The ranker's timers and tasks beside its agent."""
    _report_progress(app, ranker)
    _serve_metrics(app, ranker, settings.ranker_metrics_port)
    _watch_models(app, ranker, settings.model_poll_s)
    _check_drift(app, ranker, drift_store, settings.drift_interval_s)


def ranker_faust_app(
    settings: Settings, ranker: FeedRanker, drift_store: RedisDriftStore | None = None
) -> faust.App:
    """The ranker's Faust app: one agent over the trigger topic."""
    from streams.app import DeadLetterSender, faust_app_options  # noqa: PLC0415

    app = faust.App(
        settings.ranker_app_id, **faust_app_options(settings, settings.faust_datadir / "ranker")
    )
    topic = app.topic(settings.trigger_topic, value_serializer="raw", key_serializer="raw")
    dead_letters = DeadLetterSender(app, settings.dead_letter_topic)

    _background_work(app, ranker, settings, drift_store)

    async def dead_letter(event: Any, exc: InvalidTrigger) -> None:
        ranker.counters.dead_lettered += 1
        message = event.message
        headers = dead_letter_headers(
            InvalidEvent("trigger", str(exc)),
            message.topic,
            message.partition,
            message.offset,
            int(time.time() * 1000),
        )
        await (await dead_letters.send(event.key, event.value, headers))

    async def rank_batches(stream: faust.StreamT[Any], queue: asyncio.Queue[Any]) -> None:
        """Take what has queued up (one trigger when the ranker keeps up, many when it
        is behind), keep each user's latest, rank those users concurrently, and only
        then ack the batch: an offset is committed only once its trigger was served
        (or superseded by a later one of the same user that was)."""
        concurrent = asyncio.Semaphore(RANK_CONCURRENCY)

        async def served(trigger: RankTrigger) -> None:
            async with concurrent:
                await until_applied(
                    functools.partial(ranker.rank, trigger),
                    give_up=lambda: bool(app.should_stop),
                )

        while True:
            batch = [await queue.get()]
            while len(batch) < TRIGGER_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            latest: dict[str, RankTrigger] = {}
            for event in batch:
                try:
                    trigger = decode_trigger(event.value)
                except InvalidTrigger as exc:
                    await dead_letter(event, exc)
                    continue
                known = latest.get(trigger.user_id)
                if known is None or trigger.sequence > known.sequence:
                    latest[trigger.user_id] = trigger
                if known is not None:
                    ranker.counters.superseded += 1
            await asyncio.gather(*(served(trigger) for trigger in latest.values()))
            for event in batch:
                await stream.ack(event)

    @app.agent(topic)
    async def rank_triggers(stream: faust.StreamT[Any]) -> None:
        await ranker.models.load_now()  # the first trigger already scores with the model
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=4 * TRIGGER_BATCH)
        ranking = asyncio.ensure_future(rank_batches(stream, queue))
        try:
            async for event in stream.noack().events():  # type: ignore[attr-defined]
                if ranking.done():
                    ranking.result()  # a failure stops the agent, unacked
                await queue.put(event)
        finally:
            ranking.cancel()
            await asyncio.gather(ranking, return_exceptions=True)

    app.ranker = ranker  # type: ignore[attr-defined]
    app.rank_triggers = rank_triggers  # type: ignore[attr-defined]
    return app
