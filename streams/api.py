"""The feed service's HTTP read API (`signals api`): the stores as JSON, for services in
any language and for people.

FastAPI, because it is a mature async framework that generates its OpenAPI document
(`/openapi.json`, `/docs`) from the same typed response models it validates against
(`schemas.api_models`), and it runs on uvicorn, whose event loop the stores' asyncio
clients share.

Routes (all GET, JSON):

    /users/{id}/feed?limit=N             the served feed (limit 1-100, default 20)
    /users/{id}/interactions?type=T&k=K  last-k, every product type or the given ones
                                         (k 1-1000, default 20), hot or cold tier
    /users/{id}/interactions?type=T&start=MS&end=MS
                                         one type's interactions in [start, end] (at
                                         most 31 days, at most 1000 rows)
    /users/{id}/features                 the online user features, now
    /products/{id}/features              the online product features, now
    /categories/{id}/trending?n=N        the category's trending products (n 1-500)
    /healthz                             the process is up
    /readyz                              each store reachable (503 naming those that
                                         are not)
    /metrics                             Prometheus: request durations by route, status
    /                                    the live page (`streams.live`), with /users (the
                                         hot tier's most recently active users) and
                                         /pipeline (the pipeline panel) beside it

Errors are `{"error": "<one line>"}`: 400 for a bad parameter, 404 for an unknown user,
product, category or route, 503 when a store is down; never a stack trace.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

from schemas.api_models import (
    ERROR_RESPONSES,
    CategoryAffinity,
    FeedBody,
    HealthBody,
    InteractionsBody,
    ProductFeaturesBody,
    ReadyBody,
    TrendingBody,
    TrendingProduct,
    UserFeaturesBody,
)
from schemas.events import PRODUCT_EVENT_TYPES, EventType, InvalidEvent, check_user_id
from schemas.features import WindowCounts, user_features_of
from schemas.feed_layout import Feed
from schemas.hot_layout import Item, UserLastK
from sinks.catalog_store import RedisCatalogStore
from sinks.drift_store import RedisDriftStore
from sinks.feature_store import RedisFeatureStore
from sinks.feed_store import RedisFeedStore
from sinks.interaction_reader import ALL_TYPES, InteractionReader, Interactions
from sinks.redis_scripts import HotRedis
from streams.live import PipelineScraper, add_live_routes
from streams.metrics import request_duration
from streams.settings import Settings

log = logging.getLogger(__name__)

MAX_FEED_LIMIT = 100
MAX_K = 1000
MAX_TRENDING = 500
MAX_WINDOW_MS = 31 * 86_400_000
ERRORS = ERROR_RESPONSES


class NotFound(Exception):
    """Answered 404 with the message."""


class BadParameter(Exception):
    """Answered 400 with the message."""


class LazyCold:
    """The cold tier, connected on first use (the driver's connect is synchronous and
    fails while CQL is down: the API starts anyway, and a cold read answers 503 until
    the tier is back)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._store: Any = None
        self._lock = asyncio.Lock()

    async def store(self) -> Any:
        async with self._lock:
            if self._store is None:
                from streams.bootstrap import build_cold_store  # noqa: PLC0415

                self._store = await asyncio.to_thread(build_cold_store, self._settings)
            return self._store

    async def load_last_k(self, user_ids: Sequence[str]) -> dict[str, UserLastK]:
        result: dict[str, UserLastK] = await (await self.store()).load_last_k(user_ids)
        return result

    async def window(
        self, user_id: str, event_type: EventType, start_ms: int, end_ms: int, limit: int
    ) -> list[Item]:
        rows: list[Item] = await (await self.store()).window(
            user_id, event_type, start_ms, end_ms, limit
        )
        return rows

    async def ping(self) -> None:
        store = await self.store()
        await store.load_last_k(["readyz-probe"])

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()


@dataclass
class ApiStores:
    redis: HotRedis
    interactions: InteractionReader
    features: RedisFeatureStore
    feeds: RedisFeedStore
    catalog: RedisCatalogStore
    cold: LazyCold
    pipeline: PipelineScraper
    drift: RedisDriftStore

    async def close(self) -> None:
        await self.interactions.close()  # the shared Redis client and the cold tier
        await self.pipeline.close()


def build_api_stores(settings: Settings) -> ApiStores:
    from streams.bootstrap import (  # noqa: PLC0415
        build_catalog_store,
        build_drift_store,
        build_feature_store,
        build_feed_store,
        build_redis,
    )

    client = build_redis(settings)
    cold = LazyCold(settings)
    return ApiStores(
        redis=client,
        interactions=InteractionReader(client, settings.redis_key_prefix, cold),
        features=build_feature_store(settings, client),
        feeds=build_feed_store(settings, client),
        catalog=build_catalog_store(settings, client),
        cold=cold,
        pipeline=PipelineScraper(settings.pipeline_metrics_urls),
        drift=build_drift_store(settings, client),
    )


def create_app(settings: Settings | None = None, stores: ApiStores | None = None) -> FastAPI:
    """The API app; stores are built from settings when the server starts."""
    holder: dict[str, ApiStores] = {}
    settings = settings or Settings.load()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        holder["stores"] = stores or build_api_stores(settings)
        try:
            yield
        finally:
            await holder["stores"].close()

    app = FastAPI(
        title="feedsignals read API",
        summary="Served feeds, interactions and online features of a discovery feed.",
        version="1",
        lifespan=lifespan,
        **_without_native_telemetry(),
    )
    _add_error_handlers(app)
    registry = CollectorRegistry()
    app.add_middleware(_Timing, durations=request_duration(registry))

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus metrics of this API process (`streams.metrics`)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def get() -> ApiStores:
        return holder["stores"]

    @app.get("/healthz", response_model=HealthBody)
    async def healthz() -> HealthBody:
        return HealthBody()

    @app.get("/readyz", response_model=ReadyBody, responses={503: {"model": ReadyBody}})
    async def readyz() -> Any:
        stores = get()
        checks = {"redis": stores.redis.ping(), "cql": stores.cold.ping()}
        results = await asyncio.gather(
            *(asyncio.wait_for(check, 3.0) for check in checks.values()), return_exceptions=True
        )
        status = {
            name: "ok" if not isinstance(result, BaseException) else _reason(result)
            for name, result in zip(checks, results, strict=True)
        }
        body = ReadyBody(ready=all(v == "ok" for v in status.values()), stores=status)
        return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)

    _user_routes(app, get)
    _feature_routes(app, get)
    add_live_routes(
        app,
        redis=lambda: get().redis,
        scraper=lambda: get().pipeline,
        drift=lambda: get().drift,
        prefix=settings.redis_key_prefix,
        partitions=settings.events_partitions,
    )
    return app


def _user_routes(app: FastAPI, get: Callable[[], ApiStores]) -> None:
    """A user's feed and interactions."""

    @app.get("/users/{user_id}/feed", response_model=FeedBody, responses=ERRORS)
    async def user_feed(
        user_id: str,
        limit: Annotated[int, Query(ge=1, le=MAX_FEED_LIMIT)] = 20,
    ) -> Response:
        """The feed the ranker last wrote for the user, best first."""
        feed = await get().feeds.read(_user(user_id))
        if feed is None:
            raise NotFound(f"no feed for user {user_id} (the ranker writes one on their trigger)")
        return _json(feed_body(user_id, feed, limit))

    @app.get("/users/{user_id}/interactions", response_model=InteractionsBody, responses=ERRORS)
    async def user_interactions(
        user_id: str,
        type: Annotated[list[str] | None, Query(description="event type(s); default all")] = None,
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 20,
        start: Annotated[int | None, Query(ge=0, description="ms since the epoch")] = None,
        end: Annotated[int | None, Query(ge=0, description="ms since the epoch")] = None,
    ) -> Response:
        """Last-k per type, or one type's interactions in [start, end]: from Redis while
        the user's session is active, from the cold tier otherwise (`tier` says which)."""
        user = _user(user_id)
        types = _types(type)
        reader = get().interactions
        if start is None and end is None:
            found = await reader.last_k_many(user, types, k)
        else:
            if start is None or end is None or len(types) != 1:
                raise BadParameter("a time range needs start, end and exactly one type")
            if end < start or end - start > MAX_WINDOW_MS:
                raise BadParameter("end must be at or after start, at most 31 days later")
            found = await reader.window(user, types[0], start, end, MAX_K)
        if found.tier == "cold" and not any(found.items.values()):
            raise NotFound(f"no interactions known for user {user_id}")
        return _json(interactions_body(found))


def feed_body(user_id: str, feed: Feed, limit: int) -> dict[str, Any]:
    """`FeedBody`'s shape, from the stored feed (its first `limit` products)."""
    return {
        "user_id": user_id,
        "model": feed.model,
        "fallback": feed.fallback,
        "holdout": feed.holdout,
        "generated_at_ms": feed.generated_at_ms,
        "trigger": {
            "sequence": feed.sequence,
            "reason": feed.trigger_reason,
            "published_at_ms": feed.trigger_published_at_ms,
        },
        "total": len(feed.products),
        "products": [
            {"product_id": p, "channel": c}
            for p, c in zip(feed.products[:limit], feed.channels[:limit], strict=True)
        ],
    }


def interactions_body(found: Interactions) -> dict[str, Any]:
    """`InteractionsBody`'s shape, from a read of either tier."""
    return {
        "user_id": found.user_id,
        "tier": found.tier,
        "items": {
            kind.value: [{"product_id": p, "event_time_ms": t} for p, t in rows]
            for kind, rows in found.items.items()
        },
    }


def _json(body: dict[str, Any]) -> Response:
    """The two hottest routes build their body (the shape of their documented model,
    FeedBody and InteractionsBody) and serialize it once with orjson: about a third of
    their time went to building and validating a Pydantic object per item. The fuzzer
    checks every answer against the OpenAPI document, and the typed client parses them
    with the models."""
    return Response(orjson.dumps(body), media_type="application/json")


def _feature_routes(app: FastAPI, get: Callable[[], ApiStores]) -> None:
    """The online features of users and products, and trending products."""

    @app.get("/users/{user_id}/features", response_model=UserFeaturesBody, responses=ERRORS)
    async def user_features(user_id: str) -> UserFeaturesBody:
        """The user's online features now (`schemas.features`)."""
        stores = get()
        user = _user(user_id)
        share = await stores.features.user_share(user)
        if share is None:
            raise NotFound(f"no features for user {user_id}")
        at = int(time.time() * 1000)
        features = user_features_of(user, share, at_ms=at, config=stores.features.config)
        return UserFeaturesBody(
            user_id=user,
            at_ms=features.at_ms,
            counts=_counts(features.counts),
            distinct_categories_24h=features.distinct_categories_24h,
            ms_since_previous=features.ms_since_previous,
            session_events=features.session_events,
            late_events=features.late_events,
            top_categories=[
                CategoryAffinity(category_id=c, affinity=a) for c, a in features.top_categories
            ],
        )

    @app.get(
        "/products/{product_id}/features", response_model=ProductFeaturesBody, responses=ERRORS
    )
    async def product_features(product_id: str) -> ProductFeaturesBody:
        """The product's online features now; 404 for a product neither in the catalog
        nor in any event."""
        stores = get()
        [features], items = await asyncio.gather(
            stores.features.product_features([product_id]), stores.catalog.items([product_id])
        )
        counts = _counts(features.counts)
        if product_id not in items and not any(n for w in counts.values() for n in w.values()):
            raise NotFound(f"unknown product {product_id}")
        return ProductFeaturesBody(
            product_id=product_id,
            at_ms=features.at_ms,
            counts=counts,
            click_rate_24h=features.click_rate_24h,
            cart_rate_24h=features.cart_rate_24h,
        )

    @app.get("/categories/{category_id}/trending", response_model=TrendingBody, responses=ERRORS)
    async def category_trending(
        category_id: str, n: Annotated[int, Query(ge=1, le=MAX_TRENDING)] = 20
    ) -> TrendingBody:
        """The category's most popular products now (decayed)."""
        stores = get()
        at = int(time.time() * 1000)
        top = await stores.features.trending(category_id, n, at)
        if not top and category_id not in await stores.catalog.categories():
            raise NotFound(f"unknown category {category_id}")
        return TrendingBody(
            category_id=category_id,
            at_ms=at,
            products=[TrendingProduct(product_id=p, score=s) for p, s in top],
        )


def _without_native_telemetry() -> dict[str, Any]:
    """FastAPI's own OpenTelemetry hooks off (where the version has them): this process
    exports Prometheus metrics itself, and the hooks' per-request provider lookups took
    3.5% of the API's samples in a py-spy profile under load."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    off = ("tracing", "metrics", "logs", "operation_spans")
    return {"telemetry": dict.fromkeys(off, False)}


class _Timing:
    """ASGI middleware: each request's duration by route template and status (a plain
    ASGI wrapper: Starlette's BaseHTTPMiddleware costs a task per request)."""

    def __init__(self, app: Any, durations: Histogram) -> None:
        self._app = app
        self._durations = durations

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self._durations.labels(route, str(status)).observe(time.perf_counter() - began)


def _user(user_id: str) -> str:
    try:
        return check_user_id(user_id)
    except InvalidEvent as exc:
        raise BadParameter(f"user id: {exc.reason}") from None


def _types(names: list[str] | None) -> list[EventType]:
    if not names:
        return list(ALL_TYPES)
    kinds = []
    for name in names:
        try:
            kind = EventType(name)
        except ValueError:
            known = ", ".join(t.value for t in ALL_TYPES)
            raise BadParameter(f"type: unknown type {name!r} (one of {known})") from None
        if kind not in PRODUCT_EVENT_TYPES:
            raise BadParameter(f"type: {name} events carry no product")
        kinds.append(kind)
    return kinds


def _counts(counts: WindowCounts) -> dict[str, dict[str, int]]:
    return {window: {k.value: n for k, n in by_type.items()} for window, by_type in counts.items()}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "unreachable: no answer within 3 s"
    return f"unreachable: {type(exc).__name__}: {exc}".splitlines()[0][:300]


def _is_store_error(exc: BaseException) -> bool:
    return isinstance(exc, RedisError | OSError | TimeoutError) or type(exc).__module__.startswith(
        "cassandra"
    )


def _add_error_handlers(app: FastAPI) -> None:
    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        return error(400, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(BadParameter)
    async def bad_parameter(_request: Request, exc: BadParameter) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(NotFound)
    async def not_found(_request: Request, exc: NotFound) -> JSONResponse:
        return error(404, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error(404, f"no route {request.method} {request.url.path}")
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        if _is_store_error(exc):
            log.warning("store down during %s: %s", request.url.path, exc)
            return error(
                503, f"a store is unavailable: {_reason(exc).removeprefix('unreachable: ')}"
            )
        log.exception("unexpected error during %s", request.url.path)
        return error(500, "internal error (logged)")
