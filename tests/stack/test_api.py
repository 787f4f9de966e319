"""The HTTP read API (`signals api`) as a real server over a socket, on the real stores,
through its typed client: every route, its limits and errors, and a store going down."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jobs.catalog import generated_items, load_items
from jobs.seed import apply_events
from jobs.traffic import TrafficParams, simulate
from jobs.traffic.catalog import Catalog
from schemas.feed_layout import Feed
from sinks.api_client import ApiError, FeedApiClient
from streams.bootstrap import (
    build_catalog_store,
    build_feature_store,
    build_feed_store,
    build_hot_store,
)
from streams.settings import Settings
from tests.conftest import ROOT, free_port, wait_for
from tests.stack.test_faults import PrivateRedis

PARAMS = TrafficParams(seed=9, users=20, products=80, categories=5, rate=20.0)


class ApiServer:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "jobs.cli", "api", "--port", str(self.port)],
                cwd=ROOT,
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.log = log
        wait_for(self._up, 30, "the API to answer /healthz", log.read_text)

    def _up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture
def api(provisioned: Settings, isolated_env: dict[str, str], tmp_path: Path) -> Iterator[ApiServer]:
    server = ApiServer(isolated_env, tmp_path / "api.log")
    yield server
    server.stop()


def seed(settings: Settings) -> tuple[str, list[str]]:
    """A generated stream through the hot tier and the features, a catalog, and a feed
    for the most active user; returns that user and the feed's products."""
    items = list(generated_items(Catalog.build(PARAMS)))
    stream = list(itertools.islice(simulate(PARAMS, int(time.time() * 1000) - 600_000), 600))

    async def write() -> tuple[str, list[str]]:
        catalog, features = build_catalog_store(settings), build_feature_store(settings)
        hot, feeds = build_hot_store(settings), build_feed_store(settings)
        try:
            await load_items(catalog, items, len(items), "test")
            await apply_events(stream, features, hot)
            user = max({e.user_id for e in stream}, key=[e.user_id for e in stream].count)
            products = [item.product_id for item in items[:30]]
            feed = Feed(user, 7, products, ["trending"] * 30, "popularity", True, "views", 1, 2)
            assert await feeds.write(feed)
            return user, products
        finally:
            for store in (catalog, features, hot, feeds):
                await store.close()

    return asyncio.run(write())


def test_every_route_answers_from_the_real_stores(api: ApiServer, provisioned: Settings) -> None:
    user, products = seed(provisioned)

    async def calls() -> None:
        async with FeedApiClient(api.url) as client:
            feed = await client.feed(user, limit=5)
            assert [item.product_id for item in feed.products] == products[:5]
            assert (feed.total, feed.model, feed.trigger.sequence) == (30, "popularity", 7)

            recent = await client.interactions(user, k=3)
            assert recent.tier == "hot" and recent.items["view"]
            assert all(len(rows) <= 3 for rows in recent.items.values())
            views = recent.items["view"]
            assert [v.event_time_ms for v in views] == sorted(
                (v.event_time_ms for v in views), reverse=True
            )
            newest = views[0].event_time_ms
            window = await client.interactions(user, types=["view"], start_ms=newest, end_ms=newest)
            assert [v.product_id for v in window.items["view"]] == [views[0].product_id]

            features = await client.user_features(user)
            assert features.counts["24h"]["view"] >= len(views)
            product = views[0].product_id
            assert (await client.product_features(product)).counts["24h"]["view"] >= 1
            category = next(c.category_id for c in features.top_categories)
            trending = await client.trending(category, n=3)
            assert 1 <= len(trending.products) <= 3

            ready = await client.ready()
            assert ready.ready and ready.stores == {"redis": "ok", "cql": "ok"}

    asyncio.run(calls())


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/users/u-nobody/feed", 404, "no feed for user u-nobody"),
        ("/users/u-nobody/interactions", 404, "no interactions known for user u-nobody"),
        ("/users/u-nobody/features", 404, "no features for user u-nobody"),
        ("/products/p-nothing/features", 404, "unknown product p-nothing"),
        ("/categories/c-nothing/trending", 404, "unknown category c-nothing"),
        ("/users/u1/feed?limit=0", 400, "limit: Input should be greater than or equal to 1"),
        ("/users/u1/feed?limit=lots", 400, "limit: Input should be a valid integer"),
        ("/users/u1/interactions?k=5000", 400, "k: Input should be less than or equal to 1000"),
        ("/users/u1/interactions?type=like", 400, "type: unknown type 'like'"),
        ("/users/u1/interactions?type=app_open", 400, "app_open events carry no product"),
        ("/users/u1/interactions?start=5", 400, "a time range needs start, end and exactly one"),
        ("/users/u1/interactions?type=view&start=9&end=5", 400, "end must be at or after start"),
        ("/users/u1/interactions?type=view&start=0&end=9999999999999", 400, "at most 31 days"),
        ("/users/%7Bu1/feed", 400, "user id: "),
        ("/nowhere", 404, "no route GET /nowhere"),
    ],
)
def test_bad_requests_get_their_status_and_one_line(
    api: ApiServer, path: str, status: int, message: str
) -> None:
    response = httpx.get(api.url + path, timeout=5)
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"error"} and message in body["error"], body
    assert "Traceback" not in response.text


def test_the_openapi_document_lists_every_route(api: ApiServer) -> None:
    document = httpx.get(f"{api.url}/openapi.json", timeout=5).json()
    assert set(document["paths"]) == {
        "/healthz",
        "/readyz",
        "/users/{user_id}/feed",
        "/users/{user_id}/interactions",
        "/users/{user_id}/features",
        "/products/{product_id}/features",
        "/categories/{category_id}/trending",
        "/users",
        "/pipeline",
    }


def test_a_store_down_answers_503_and_readyz_names_it(
    provisioned: Settings, isolated_env: dict[str, str], tmp_path: Path
) -> None:
    private = PrivateRedis(tmp_path)
    private.start()
    env = {**isolated_env, "SIGNALS_REDIS_URL": private.url}
    server = ApiServer(env, tmp_path / f"api-{uuid.uuid4().hex[:6]}.log")
    try:
        assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200
        private.stop()
        feed = httpx.get(f"{server.url}/users/u1/feed", timeout=10)
        assert feed.status_code == 503
        assert feed.json()["error"].startswith("a store is unavailable: ")
        ready = httpx.get(f"{server.url}/readyz", timeout=10)
        assert ready.status_code == 503
        body = ready.json()
        assert body["ready"] is False and body["stores"]["cql"] == "ok"
        assert body["stores"]["redis"].startswith("unreachable: ")
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
        private.start()  # back: answers again without a restart
        wait_for(
            lambda: httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200,
            30,
            "readyz after Redis returned",
        )
        assert httpx.get(f"{server.url}/users/u1/feed", timeout=5).status_code == 404
        with pytest.raises(ApiError) as raised:
            asyncio.run(_feed(server.url, "u1"))
        assert raised.value.status == 404
    finally:
        server.stop()
        private.stop()


async def _feed(url: str, user: str) -> None:
    async with FeedApiClient(url) as client:
        await client.feed(user)
