"""The feed ranker: a Faust agent over the trigger topic, in its own app and consumer
group (`<app id>-ranker`), so it scales out by partitions like any Faust app.

Per trigger: drop it when the stored feed already comes from the same or a later
trigger; read the user's last-k and affinities, the candidates' channels (trending in
their categories, trending overall, the newest listings) and the candidates' catalog
items and features; merge the candidates (`streams.logic.candidates`), score them, apply
the re-ranking rules (`streams.logic.rerank`) and write the feed (`schemas.feed_layout`),
which a later trigger's feed alone can replace.

Scoring: no trained model is wired in yet, so every feed is the popularity ranking (each
candidate's 24h events weighted like the affinity: view 1, click 3, wishlist 4, cart 5,
order 10; ties by the channel's own order), recorded as `model = "popularity"`,
`fallback = true` and counted as a fallback. A malformed trigger goes to the dead-letter
topic with the reason; a store that is down is retried with backoff before the trigger
is acknowledged.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faust

from schemas.catalog import CatalogItem
from schemas.events import EventType, InvalidEvent
from schemas.features import FeatureConfig, ProductFeatures
from schemas.feed_layout import POPULARITY_MODEL, Feed
from schemas.triggers import InvalidTrigger, RankTrigger, decode_trigger
from sinks.catalog_store import RedisCatalogStore
from sinks.feature_store import RedisFeatureStore
from sinks.feed_store import RedisFeedStore
from sinks.hot_store import HotStore
from sinks.retry import until_applied
from streams.logic.admission import dead_letter_headers
from streams.logic.candidates import (
    CandidateBudget,
    CandidateInputs,
    merge_candidates,
)
from streams.logic.rerank import RerankRules, rerank
from streams.settings import Settings

log = logging.getLogger(__name__)

#: Trending overall is merged from every category's top products at most this often.
TRENDING_REFRESH_S = 10.0
#: How many of each category's trending products the overall list and a channel take.
TRENDING_PER_CATEGORY = 50
#: How long a product's popularity and a catalog item are reused from memory.
PRODUCT_CACHE_S = 2.0
CATALOG_CACHE_S = 60.0
#: Entries the in-memory caches keep at most (the oldest half goes when over).
CACHE_ENTRIES = 200_000
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
    fallbacks: int = 0  # popularity rankings served
    dead_lettered: int = 0
    candidates: int = 0  # candidates merged, over every written feed
    channels: dict[str, int] = field(default_factory=dict)


def popularity(features: ProductFeatures, config: FeatureConfig) -> float:
    """A product's 24h events, weighted like the affinity (the fallback ranking)."""
    day = features.counts["24h"]
    return sum(config.weights.get(kind, 0.0) * count for kind, count in day.items())


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
        self._score_cache: dict[str, tuple[float, float]] = {}
        self._shared_at = -float("inf")

    async def rank(self, trigger: RankTrigger) -> Feed | None:
        """Write the trigger's feed; None when a feed of the same or a later trigger is
        stored already (nothing written). Three round trips of reads at most: the user's
        (feed sequence, last-k, affinities, together), then the candidates' catalog items
        and features (together), then the write; what every user shares (trending,
        newest listings, categories) is refreshed in memory every TRENDING_REFRESH_S."""
        self.counters.triggers += 1
        user = trigger.user_id
        stored, last_k, affinities, shared = await asyncio.gather(
            self._feeds.sequence(user),
            self._user_last_k(user),
            self._features.user_category_affinity(user, self._budget.affinity_categories),
            self._shared_view(),
        )
        if stored is not None and stored >= trigger.sequence:
            self.counters.stale += 1
            return None
        candidates = merge_candidates(
            shared.inputs_for(affinities, last_k, self._budget), self._budget, seed=trigger.sequence
        )
        ids = [c.product_id for c in candidates]
        items, scores = await asyncio.gather(self._items(ids), self._popularity(ids))
        order = {c.product_id: index for index, c in enumerate(candidates)}
        ranked = sorted(ids, key=lambda p: (-scores.get(p, 0.0), order[p]))
        feed_ids = rerank(
            ranked,
            seller_of={p: item.seller_id for p in ids if (item := items.get(p))},
            language_of={p: item.language for p in ids if (item := items.get(p))},
            ordered=last_k.get(EventType.ORDER, ()),
            rules=self._rules,
        )[:FEED_LENGTH]
        channel = {c.product_id: c.channel.value for c in candidates}
        feed = Feed(
            user_id=user,
            sequence=trigger.sequence,
            products=feed_ids,
            channels=[channel[p] for p in feed_ids],
            model=POPULARITY_MODEL,
            fallback=True,
            trigger_reason=trigger.reason.value,
            trigger_published_at_ms=trigger.published_at_ms,
            generated_at_ms=self._clock_ms(),
        )
        if not await self._feeds.write(feed):
            self.counters.stale += 1  # a later trigger's feed landed meanwhile
            return None
        self.counters.written += 1
        self.counters.fallbacks += 1
        self.counters.candidates += len(candidates)
        for name in feed.channels:
            self.counters.channels[name] = self.counters.channels.get(name, 0) + 1
        return feed

    async def _items(self, ids: list[str]) -> dict[str, CatalogItem | None]:
        """Catalog items, from memory when read in the last CATALOG_CACHE_S."""
        now = time.monotonic()
        cache = self._item_cache
        missing = [p for p in ids if (hit := cache.get(p)) is None or hit[0] < now]
        if missing:
            found = await self._catalog.items(missing)
            for product_id in missing:
                cache[product_id] = (now + CATALOG_CACHE_S, found.get(product_id))
            _bound(cache)
        return {p: cache[p][1] for p in ids}

    async def _popularity(self, ids: list[str]) -> dict[str, float]:
        """Each product's popularity, from memory when read in the last PRODUCT_CACHE_S:
        product counts move slowly, and the same trending products are candidates for
        most users (a user's own signals are always read fresh)."""
        now = time.monotonic()
        cache = self._score_cache
        missing = [p for p in ids if (hit := cache.get(p)) is None or hit[0] < now]
        if missing:
            config = self._features.config
            for features in await self._features.product_features(missing):
                cache[features.product_id] = (now + PRODUCT_CACHE_S, popularity(features, config))
            _bound(cache)
        return {p: cache[p][1] for p in ids}

    async def _user_last_k(self, user_id: str) -> dict[EventType, list[str]]:
        lists = await asyncio.gather(
            *(self._hot.last_k(user_id, kind, self._last_k) for kind in _LAST_K_TYPES)
        )
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
        return SharedView.of(categories, trending, newest, self._budget.total)


def _bound(cache: dict[str, Any]) -> None:
    """Drop the oldest half of an over-full cache (dicts keep insertion order)."""
    if len(cache) > CACHE_ENTRIES:
        for key in list(itertools.islice(cache, len(cache) // 2)):
            del cache[key]


@dataclass(frozen=True)
class SharedView:
    """What every user's candidates draw from, read once per refresh."""

    trending_by_category: dict[str, list[str]]
    trending_overall: list[str]
    #: Categories by their most popular product's decayed score, most popular first.
    categories_by_popularity: list[str]
    newest: dict[str, list[str]]

    @classmethod
    def of(
        cls,
        categories: list[str],
        trending: list[list[tuple[str, float]]],
        newest: list[list[str]],
        overall: int,
    ) -> SharedView:
        scored = sorted(
            ((score, product) for top in trending for product, score in top), reverse=True
        )
        best = {c: top[0][1] if top else 0.0 for c, top in zip(categories, trending, strict=True)}
        return cls(
            trending_by_category={
                c: [p for p, _ in top] for c, top in zip(categories, trending, strict=True)
            },
            trending_overall=[product for _, product in scored[:overall]],
            categories_by_popularity=sorted(categories, key=lambda c: (-best[c], c)),
            newest={c or "": ids for c, ids in zip([*categories, None], newest, strict=True)},
        )

    def inputs_for(
        self,
        affinities: list[tuple[str, float]],
        last_k: dict[EventType, list[str]],
        budget: CandidateBudget,
    ) -> CandidateInputs:
        """One user's candidate inputs: exploration draws from the most popular
        categories the user has not touched."""
        touched = {category for category, _ in affinities}
        unexplored = [
            c
            for c in self.categories_by_popularity
            if c not in touched and self.trending_by_category.get(c)
        ]
        return CandidateInputs(
            affinities=affinities,
            trending_by_category=self.trending_by_category,
            trending_overall=self.trending_overall,
            newest=self.newest,
            last_k=last_k,
            unexplored=unexplored[: 4 * budget.explore_categories],
        )


def ranker_faust_app(settings: Settings, ranker: FeedRanker) -> faust.App:
    """The ranker's Faust app: one agent over the trigger topic."""
    from streams.app import DeadLetterSender, faust_broker_urls  # noqa: PLC0415

    app = faust.App(
        settings.ranker_app_id,
        broker=faust_broker_urls(settings),
        topic_allow_declare=False,
        value_serializer="raw",
        key_serializer="raw",
        producer_acks=-1,
        web_enabled=False,
        autodiscover=False,
        store="memory://",
        datadir=str(settings.faust_datadir / "ranker"),
    )
    topic = app.topic(settings.trigger_topic, value_serializer="raw", key_serializer="raw")
    dead_letters = DeadLetterSender(app, settings.dead_letter_topic)

    @app.agent(topic)
    async def rank_triggers(stream: faust.StreamT[Any]) -> None:
        async for event in stream.events():
            try:
                trigger = decode_trigger(event.value)
            except InvalidTrigger as exc:
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
                continue
            await until_applied(
                functools.partial(ranker.rank, trigger), give_up=lambda: bool(app.should_stop)
            )

    app.ranker = ranker  # type: ignore[attr-defined]
    app.rank_triggers = rank_triggers  # type: ignore[attr-defined]
    return app
