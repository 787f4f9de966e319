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
import collections
import dataclasses
import functools
import gc
import itertools
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

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
from schemas.triggers import InvalidTrigger, RankTrigger, Reason, decode_trigger
from sinks.catalog_store import RedisCatalogStore
from sinks.drift_store import RedisDriftStore
from sinks.feature_store import RedisFeatureStore
from sinks.feed_store import RedisFeedStore
from sinks.hot_store import HotStore
from sinks.retry import until_applied
from streams.faust_kafka import QuickFetchApp
from streams.logic.admission import dead_letter_headers
from streams.logic.candidates import Candidate, CandidateBudget, SharedView, candidates_by_id
from streams.logic.drift import DEFAULT_THRESHOLD, TRIGGERS, DriftMonitor
from streams.logic.ranking import (
    FEATURES,
    ProductContext,
    ProductTable,
    feature_matrix,
    in_holdout,
    popularity,
    product_context,
    user_context,
)
from streams.logic.rerank import RerankRules, rerank
from streams.logic.trigger_order import TriggerQueue
from streams.metrics import RankerCollector, rank_duration
from streams.metrics import serve as serve_metrics
from streams.models import LoadedModel, ModelSlot
from streams.settings import Settings

log = logging.getLogger(__name__)
_T = TypeVar("_T")

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
#: Triggers the ranker looks ahead at when it is behind (it picks high intent first
#: among them, `streams.logic.trigger_order`); RANK_BATCH users go to a `rank_many`
#: call, RANK_CONCURRENCY calls are in progress at once (one ranks while another waits
#: for Redis), and the next starts as soon as one ends, so a click that arrives waits
#: for one batch to end, not for a whole round. Every trigger Faust delivers joins the
#: look-ahead at once; when more than LOOKAHEAD wait unpicked, or one that is not urgent
#: waited CALM_WAIT_S, the oldest that are not urgent are shed (acked unranked, counted):
#: a ranker that stays behind still serves clicks within a round or two, and its memory
#: stays bounded.
LOOKAHEAD = 4096
#: A session start, category change or view count not ranked within this long is shed
#: when the ranker is that far behind: the shopper keeps the feed they have until their
#: next trigger. Acknowledgements go in arrival order, so without it one such trigger
#: left waiting while clicks went first held back every later acknowledgement, and the
#: look-ahead filled to LOOKAHEAD_LIMIT and stopped taking in clicks (closed loop at
#: ~1,940 events/s: clicks taken in 4.4 s after publishing, p50).
CALM_WAIT_S = 2.0
#: Held triggers (served or not, not acknowledged yet) at which the look-ahead takes no
#: more until some are acknowledged; only high-intent ones can keep it there.
LOOKAHEAD_LIMIT = 4 * LOOKAHEAD
#: Triggers handed from the Faust stream to the look-ahead at most at once.
INTAKE = 1024
RANK_BATCH = 32
RANK_CONCURRENCY = 2
#: The collector's thresholds once the ranker runs (Python's: 700, 10, 10).
RANKER_GC_THRESHOLDS = (50_000, 50, 100)
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
    shed: int = 0  # not urgent, acked unranked: over the look-ahead while behind
    dead_lettered: int = 0
    candidates: int = 0  # candidates merged, over every written feed
    channels: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass(slots=True)
class HighIntentWaits:
    """Where a high-intent trigger's time goes in the ranker, since the last report: in
    ms after the worker published it (wall clocks, the worker's and this process's),
    when it was taken into the look-ahead and when a round picked it; and how long each
    round took (ms) with how many users. The report says which part a slow click waited
    in: Kafka and Faust's delivery, the queue, or the ranking itself."""

    taken_in: list[float] = field(default_factory=list)
    picked: list[float] = field(default_factory=list)
    rounds: list[float] = field(default_factory=list)
    users: int = 0  # over every round

    def clear(self) -> None:
        self.taken_in.clear()
        self.picked.clear()
        self.rounds.clear()
        self.users = 0


@dataclass(frozen=True, slots=True)
class _Ranking:
    """A trigger being ranked in a batch: its place in it, what was read of its user,
    its merged candidates by product id (and the ids, in the merge's order), and whether
    the user is in the holdout."""

    index: int
    trigger: RankTrigger
    share: UserShare | None
    last_k: dict[EventType, list[str]]
    candidates: dict[str, Candidate]
    ids: list[str]
    holdout: bool


@dataclass(slots=True)
class _Scored:
    """A round's scores by ranking index, the rows and scores for the drift sample, and
    how many triggers' scoring failed."""

    scores: dict[int, NDArray[np.float64]] = field(default_factory=dict)
    drift: list[tuple[NDArray[np.float64], NDArray[np.float64]]] = field(default_factory=list)
    failed: int = 0


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
        #: Triggers in the agent's look-ahead (served or not, not yet acknowledged).
        self.waiting = 0
        self.waits = HighIntentWaits()
        #: Where `_compute` runs a batch's merging, scoring and re-ranking.
        self._computing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ranking")
        #: The products' parts of the rows, kept across rounds (only `_compute` uses it).
        self._rows = ProductTable()

    def now_ms(self) -> int:
        return self._clock_ms()

    async def rank(self, trigger: RankTrigger) -> Feed | None:
        """Write the trigger's feed; None when a feed of the same or a later trigger is
        stored already (nothing written)."""
        [feed] = await self.rank_many([trigger])
        return feed

    async def rank_many(self, triggers: Sequence[RankTrigger]) -> list[Feed | None]:
        """`rank` of each trigger (of different users), in order, together: three round
        trips of reads and one of writes for the whole lot, and one scoring call. The
        user reads (feed sequence, last-k, stored features) go out together, then the
        candidates' catalog items and features, then the writes; what every user shares
        (trending, newest listings, categories) is refreshed in memory every
        TRENDING_REFRESH_S. A ranker that is behind takes many triggers at once, so a
        trigger costs less the more of them wait."""
        if not triggers:
            return []
        self.counters.triggers += len(triggers)
        self._models.poll()
        began = time.perf_counter()
        try:
            return await self._rank_many(triggers)
        finally:
            if self.rank_seconds is not None:
                took = time.perf_counter() - began
                for _ in triggers:  # what each of them waited
                    self.rank_seconds.observe(took)

    async def _rank_many(self, triggers: Sequence[RankTrigger]) -> list[Feed | None]:
        users = [trigger.user_id for trigger in triggers]
        stored, last_ks, shares, shared = await asyncio.gather(
            self._feeds.sequences(users),
            self._users_last_k(users),
            self._features.user_shares(users),
            self._shared_view(),
        )
        at_ms = self._clock_ms()
        live = await self._compute(
            len(triggers),
            functools.partial(self._live, triggers, stored, last_ks, shares, shared, at_ms),
        )
        self.counters.stale += len(triggers) - len(live)
        feeds: list[Feed | None] = [None] * len(triggers)
        if not live:
            return feeds
        wanted = list(dict.fromkeys(itertools.chain.from_iterable(r.ids for r in live)))
        items, products = await asyncio.gather(self._items(wanted), self._products(wanted))
        item_of = dict(zip(wanted, items, strict=True))
        product_of = dict(zip(wanted, products, strict=True))
        model = self._models.model
        kept_table = self._on_thread(len(triggers))
        ranked_feeds, scored = await self._compute(
            len(triggers),
            functools.partial(
                self._ranked, model, live, at_ms, item_of, product_of, kept_table=kept_table
            ),
        )
        self.counters.scoring_errors += scored.failed
        for rows, values in scored.drift:
            assert model is not None  # only a model's scores are sampled
            self.drift.add(model.version, rows, values)
        written = await self._feeds.write_many(ranked_feeds)
        for ranking, feed, landed in zip(live, ranked_feeds, written, strict=True):
            if not landed:
                self.counters.stale += 1  # a later trigger's feed landed meanwhile
                continue
            self._count(feed, ranking.holdout, len(ranking.candidates))
            feeds[ranking.index] = feed
        return feeds

    async def _compute(self, triggers: int, work: Callable[[], _T]) -> _T:
        """Run a batch's merging, scoring or re-ranking: on one thread of its own when the
        batch holds several triggers, inline for one. A batch of 32 is tens of
        milliseconds of CPU with few awaits; on the event loop it held up Faust, whose
        delivery of the next triggers advances only when the loop gets a turn (the
        look-ahead saw a few dozen triggers while thousands waited in Kafka, and high
        intent first could not reach the clicks among them; `await asyncio.sleep(0)`
        between triggers was not enough). A single trigger (a ranker that keeps up) is
        ranked inline: handing it to the thread cost more than it holds the loop. One
        thread, so no two batches compute at once; the work changes nothing the loop
        reads (counters and the drift sample are updated by the caller)."""
        if not self._on_thread(triggers):
            return work()
        return await asyncio.get_running_loop().run_in_executor(self._computing, work)

    @staticmethod
    def _on_thread(triggers: int) -> bool:
        """Whether `_compute` runs a batch of `triggers` on the computing thread: the
        only place the kept product table is written, so that a single trigger ranked
        inline meanwhile never writes it from the loop's thread at the same time."""
        return triggers > 1

    def _live(  # noqa: PLR0917
        self,
        triggers: Sequence[RankTrigger],
        stored: Sequence[int | None],
        last_ks: Sequence[dict[EventType, list[str]]],
        shares: Sequence[UserShare | None],
        shared: SharedView,
        at_ms: int,
    ) -> list[_Ranking]:
        """The triggers not stale, each with its merged candidates (`_compute`)."""
        live: list[_Ranking] = []
        for index, (trigger, sequence, last_k, share) in enumerate(
            zip(triggers, stored, last_ks, shares, strict=True)
        ):
            if sequence is not None and sequence >= trigger.sequence:
                continue
            candidates = self._candidates(
                share, last_k, shared, language=trigger.language, seed=trigger.sequence, at_ms=at_ms
            )
            ids = list(candidates)
            holdout = self._in_holdout(trigger.user_id)
            live.append(_Ranking(index, trigger, share, last_k, candidates, ids, holdout))
        return live

    def _ranked(
        self,
        model: LoadedModel | None,
        live: Sequence[_Ranking],
        at_ms: int,
        item_of: dict[str, CatalogItem | None],
        product_of: Mapping[str, _Product],
        *,
        kept_table: bool,
    ) -> tuple[list[Feed], _Scored]:
        """Each live trigger's feed: scored by `model` when there is one, popularity
        otherwise (`_compute`; the counters and the drift sample are the caller's).
        `kept_table`: the rows come from the table kept across rounds (on the computing
        thread only), else from one of the round's own."""
        scored = (
            self._scores(model, live, at_ms, item_of, product_of, kept_table=kept_table)
            if model
            else _Scored()
        )
        popularity_of: dict[str, float] = {}
        if len(scored.scores) < len(live):  # some fall back or are in the holdout
            popularity_of = {p: product.popularity for p, product in product_of.items()}
        feeds = [
            self._feed(ranking, model, scored.scores.get(ranking.index), item_of, popularity_of)
            for ranking in live
        ]
        return feeds, scored

    def _feed(
        self,
        ranking: _Ranking,
        model: LoadedModel | None,
        scores: NDArray[np.float64] | None,
        item_of: dict[str, CatalogItem | None],
        popularity_of: dict[str, float],
    ) -> Feed:
        """The trigger's feed from its scores (None: popularity, from `popularity_of`)."""
        trigger, candidates, ids, holdout = (
            ranking.trigger,
            ranking.candidates,
            ranking.ids,
            ranking.holdout,
        )
        scored = scores is not None and not holdout
        if scores is None or holdout:
            scores = np.fromiter(map(popularity_of.__getitem__, ids), np.float64, len(ids))
        # Best first; ties keep the channels' order (a stable sort of the merged list).
        ranked = list(map(ids.__getitem__, np.argsort(-scores, kind="stable").tolist()))
        feed_ids = rerank(
            ranked,
            seller_of=_ItemField(item_of, "seller_id"),
            language_of=_ItemField(item_of, "language"),
            ordered=ranking.last_k.get(EventType.ORDER, ()),
            language=trigger.language,
            rules=self._rules,
        )[:FEED_LENGTH]
        feed = Feed(
            user_id=trigger.user_id,
            sequence=trigger.sequence,
            products=feed_ids,
            channels=[candidates[p].channel for p in feed_ids],
            model=model.version if scored and model is not None else POPULARITY_MODEL,
            fallback=not scored and not holdout,
            holdout=holdout,
            trigger_reason=trigger.reason.value,
            trigger_published_at_ms=trigger.published_at_ms,
            generated_at_ms=self._clock_ms(),
            language=trigger.language,
        )
        return feed

    def _count(self, feed: Feed, holdout: bool, candidates: int) -> None:
        counters = self.counters
        counters.written += 1
        if holdout:
            counters.holdouts += 1
        elif feed.fallback:
            counters.fallbacks += 1
        else:
            counters.scored += 1
        counters.candidates += candidates
        counters.channels.update(feed.channels)

    def _in_holdout(self, user_id: str) -> bool:
        return self._holdout_share > 0 and in_holdout(user_id, self._holdout_share)

    def _candidates(
        self,
        share: UserShare | None,
        last_k: dict[EventType, list[str]],
        shared: SharedView,
        *,
        language: str | None,
        seed: int,
        at_ms: int,
    ) -> dict[str, Candidate]:
        affinities = top_decayed(
            share.affinity.items() if share is not None else (),
            at_ms,
            self._features.config.affinity_half_life_ms,
            self._budget.affinity_categories,
        )
        return candidates_by_id(
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
        table: ProductTable,
    ) -> NDArray[np.float64]:
        """The candidates' feature rows (`streams.logic.ranking.FEATURES` columns), each
        candidate a row of `table`."""
        config = self._features.config
        features = user_features_of(user_id, share, at_ms=at_ms, config=config)
        affinity = share.affinity if share is not None else {}
        context = user_context(features, affinity, last_k, language, config)
        return feature_matrix(context, ids, table)

    def _table(
        self,
        ids: Sequence[str],
        item_of: Mapping[str, CatalogItem | None],
        product_of: Mapping[str, _Product],
        *,
        kept: bool,
    ) -> ProductTable:
        """The products' parts of the rows for a whole round of triggers. `kept`: the
        table kept across rounds, with the rows of products read again since rewritten
        (on the computing thread only: one thread writes it), started afresh when it
        holds CACHE_ENTRIES; otherwise a table of the round's own."""
        contexts = [product_of[p].context(item_of[p]) for p in ids]
        if not kept:
            return ProductTable.of(ids, contexts)
        if len(self._rows) > CACHE_ENTRIES:
            self._rows = ProductTable()
        self._rows.put(ids, contexts)
        return self._rows

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
        ids = list(candidates)
        if not ids:
            return None
        items, products = await asyncio.gather(self._items(ids), self._products(ids))
        table = self._table(
            ids,
            dict(zip(ids, items, strict=True)),
            dict(zip(ids, products, strict=True)),
            kept=False,  # on the loop's thread
        )
        matrix = self._matrix(
            user_id, share, last_k, language=language, at_ms=at_ms, ids=ids, table=table
        )
        return matrix, model.score(matrix)

    def _scores(
        self,
        model: LoadedModel,
        rankings: Sequence[_Ranking],
        at_ms: int,
        item_of: Mapping[str, CatalogItem | None],
        product_of: Mapping[str, _Product],
        *,
        kept_table: bool,
    ) -> _Scored:
        """The model's click probability per candidate, by the ranking's index, for
        every ranking not in the holdout, from one scoring call, with each ranking's rows
        for the drift sample. No scores (each trigger counted as failed, logged at most
        once a minute) when scoring fails: those feeds fall back to popularity."""
        chosen = [r for r in rankings if r.candidates and not r.holdout]
        if not chosen:
            return _Scored()
        try:
            table = self._table(
                list(dict.fromkeys(p for r in chosen for p in r.ids)),
                item_of,
                product_of,
                kept=kept_table,
            )
            matrices = [
                self._matrix(
                    ranking.trigger.user_id,
                    ranking.share,
                    ranking.last_k,
                    language=ranking.trigger.language,
                    at_ms=at_ms,
                    ids=ranking.ids,
                    table=table,
                )
                for ranking in chosen
            ]
            values = model.score(np.concatenate(matrices) if len(matrices) > 1 else matrices[0])
        except Exception:
            now = time.monotonic()
            if now - self._scoring_error_logged >= 60:
                self._scoring_error_logged = now
                log.warning(
                    "scoring with model %s failed: popularity served", model.version, exc_info=True
                )
            return _Scored(failed=len(chosen))
        scored = _Scored()
        start = 0
        for ranking, matrix in zip(chosen, matrices, strict=True):
            share = values[start : start + len(matrix)]
            start += len(matrix)
            scored.drift.append((matrix, share))
            scored.scores[ranking.index] = share
        return scored

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
        self._computing.shutdown(wait=False)

    @property
    def models(self) -> ModelSlot:
        return self._models

    async def _user_last_k(self, user_id: str) -> dict[EventType, list[str]]:
        [last_k] = await self._users_last_k([user_id])
        return last_k

    async def _users_last_k(self, user_ids: Sequence[str]) -> list[dict[EventType, list[str]]]:
        found = await self._hot.last_k_users(user_ids, _LAST_K_TYPES, self._last_k)
        return [
            {kind: [p for p, _ in rows] for kind, rows in zip(_LAST_K_TYPES, lists, strict=True)}
            for lists in found
        ]

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


class _LookAhead:
    """The ranker's waiting triggers in arrival order (`TriggerQueue`), each with its
    Faust event (to acknowledge once it and every earlier one were served) and its
    decoded trigger (None: malformed and dead-lettered, nothing to serve)."""

    def __init__(self) -> None:
        self._queue = TriggerQueue()
        self._events: collections.deque[Any] = collections.deque()
        self._triggers: dict[int, RankTrigger] = {}  # by position, until picked

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, event: Any, trigger: RankTrigger | None) -> None:
        self._events.append(event)
        if trigger is None:
            self._queue.add_served()
            return
        high_intent = trigger.reason is Reason.HIGH_INTENT
        position = self._queue.add(trigger.user_id, trigger.sequence, high_intent, time.monotonic())
        self._triggers[position] = trigger

    def next_round(
        self, users: int, busy: AbstractSet[str] = frozenset()
    ) -> tuple[list[RankTrigger], list[list[int]], int]:
        """The triggers to rank next (`TriggerQueue.next_round`: one per user not in
        `busy`, its latest), every position they cover, and how many triggers they
        supersede."""
        groups = self._queue.next_round(users, busy)
        chosen = [self._triggers[self._queue.latest(positions)] for positions in groups]
        for positions in groups:
            for position in positions:
                del self._triggers[position]
        return chosen, groups, sum(len(positions) - 1 for positions in groups)

    def shed(
        self, limit: int, busy: AbstractSet[str] = frozenset(), waited_s: float = math.inf
    ) -> int:
        """Shed the oldest triggers that are not urgent beyond `limit` waiting, and any
        that waited `waited_s` (`TriggerQueue.shed`); how many were. `served([])` then
        gives the events that became acknowledgeable."""
        positions = self._queue.shed(limit, busy, time.monotonic() - waited_s)
        for position in positions:
            del self._triggers[position]
        return len(positions)

    def served(self, groups: list[list[int]]) -> list[Any]:
        """Mark a batch's triggers served; the events now acknowledgeable, in order."""
        done = self._queue.served(groups)
        return [self._events.popleft() for _ in range(done)]


async def _rank_in_batches(
    stream: faust.StreamT[Any],
    queue: asyncio.Queue[Any],
    ranker: FeedRanker,
    dead_letter: Callable[[Any, InvalidTrigger], Awaitable[None]],
    stopping: Callable[[], bool],
) -> None:
    """Look ahead at up to LOOKAHEAD triggers (one when the ranker keeps up, many
    when it is behind) and keep RANK_CONCURRENCY batches of up to RANK_BATCH users
    in progress: whenever one finishes, the next starts at once with the users
    waiting then, high intent first (`streams.logic.trigger_order`), each user at
    their latest trigger, none twice at the same time. Acknowledged in arrival order
    only: an offset is committed only once its trigger and every earlier one were
    served (or superseded by a later one of the same user that was)."""
    ahead = _LookAhead()
    busy: set[str] = set()  # users whose batch is being ranked
    batches: set[asyncio.Future[None]] = set()
    waits = ranker.waits

    async def served(triggers: list[RankTrigger], groups: list[list[int]]) -> None:
        began = time.perf_counter()
        await until_applied(
            functools.partial(ranker.rank_many, triggers),
            give_up=stopping,
        )
        waits.rounds.append((time.perf_counter() - began) * 1000)
        waits.users += len(triggers)
        busy.difference_update(trigger.user_id for trigger in triggers)
        for event in ahead.served(groups):
            await stream.ack(event)

    async def look_at(event: Any) -> None:
        try:
            trigger = decode_trigger(event.value)
            ahead.add(event, trigger)
            if trigger.reason is Reason.HIGH_INTENT:
                waits.taken_in.append(time.time() * 1000 - trigger.published_at_ms)
        except InvalidTrigger as exc:
            await dead_letter(event, exc)
            ahead.add(event, None)

    try:
        while True:
            while len(ahead) < LOOKAHEAD_LIMIT and not queue.empty():
                await look_at(queue.get_nowait())
            ranker.waiting = len(ahead)
            if len(batches) < RANK_CONCURRENCY:
                if shed := ahead.shed(LOOKAHEAD, busy, CALM_WAIT_S):
                    ranker.counters.shed += shed
                    for event in ahead.served([]):  # shed at the front: ack them now
                        await stream.ack(event)
                chosen, groups, superseded = ahead.next_round(RANK_BATCH, busy)
                if chosen:
                    now_ms = time.time() * 1000
                    waits.picked.extend(
                        now_ms - t.published_at_ms for t in chosen if t.reason is Reason.HIGH_INTENT
                    )
                    ranker.counters.superseded += superseded
                    busy.update(trigger.user_id for trigger in chosen)
                    batches.add(asyncio.ensure_future(served(chosen, groups)))
                    continue
            await _next_arrival_or_batch(queue, batches, look_at)
    finally:
        for batch in batches:
            batch.cancel()
        await asyncio.gather(*batches, return_exceptions=True)


async def _next_arrival_or_batch(
    queue: asyncio.Queue[Any],
    batches: set[asyncio.Future[None]],
    look_at: Callable[[Any], Awaitable[None]],
) -> None:
    """Wait until a trigger arrives (taken into the look-ahead) or a batch finishes
    (removed from `batches`; its failure raised, which stops the agent unacked)."""
    arrival = asyncio.ensure_future(queue.get())
    done, _ = await asyncio.wait({arrival, *batches}, return_when=asyncio.FIRST_COMPLETED)
    if not arrival.done():
        arrival.cancel()
    elif not arrival.cancelled():  # taken from the queue: it must not be lost
        await look_at(arrival.result())
    for batch in done - {arrival}:
        batches.discard(batch)
        batch.result()


def quiet_collector() -> None:
    """Put what the ranker has built so far (Faust, the clients, the model) out of the
    cyclic collector's sight and collect less often. A trigger allocates thousands of
    short-lived objects (candidates, rows, floats), nearly all freed by reference
    counting, while the caches hold up to CACHE_ENTRIES long-lived ones that every full
    collection walked: 32 triggers at a time went from 482 to 623 re-ranks/s
    (`bench/ranker_bench.py`, which calls this too)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*RANKER_GC_THRESHOLDS)


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
    reported = dataclasses.replace(ranker.counters, channels=collections.Counter())

    @app.timer(interval=REPORT_EVERY_S)  # type: ignore[untyped-decorator]
    async def report_progress() -> None:
        nonlocal reported
        now, before = ranker.counters, reported
        if now.triggers == before.triggers:
            return
        log.info(
            "ranker: %d triggers in %.0fs (%.0f/s): %d feeds written (%d by model %s, %d "
            "popularity fallbacks, %d holdout), %d stale, %d superseded, %d shed (%d "
            "waiting), %d dead-lettered",
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
            now.shed - before.shed,
            ranker.waiting,
            now.dead_lettered - before.dead_lettered,
        )
        waits = ranker.waits
        if waits.rounds:
            log.info(
                "ranker: high intent taken in %s ms after publishing, picked %s ms; "
                "rounds %s ms (%.1f users a round)",
                _p50_p99(waits.taken_in),
                _p50_p99(waits.picked),
                _p50_p99(waits.rounds),
                waits.users / len(waits.rounds),
            )
        waits.clear()
        reported = dataclasses.replace(now, channels=collections.Counter())


def _p50_p99(values: list[float]) -> str:
    """`p50 / p99` of `values` (nearest rank), or `-` when there are none."""
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[len(ordered) // 2]:.0f} / {ordered[int(len(ordered) * 0.99)]:.0f}"


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

    app = QuickFetchApp(
        settings.ranker_app_id,
        fetch_max_wait_ms=settings.ranker_fetch_max_wait_ms,
        **faust_app_options(settings, settings.faust_datadir / "ranker"),
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

    @app.agent(topic)
    async def rank_triggers(stream: faust.StreamT[Any]) -> None:
        await ranker.models.load_now()  # the first trigger already scores with the model
        quiet_collector()
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=INTAKE)
        ranking = asyncio.ensure_future(
            _rank_in_batches(stream, queue, ranker, dead_letter, lambda: bool(app.should_stop))
        )
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
