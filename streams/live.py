"""The live page of the API process: `/` (one HTML file with a small script, no build
step), and the two JSON routes only it needs beside the read API:

    /users?n=N&q=PREFIX   hot-tier users, most recently active first (the page's picker)
    /pipeline             the pipeline panel: the workers' and rankers' /metrics summed,
                          rates over the interval since an earlier scrape

The page polls the read API's routes for the chosen user (feed, last-k, features) once a
second and the panel every two seconds; polling rather than server-sent events, because
every figure is already a cheap GET that any number of tabs can share, and a proxy in
between needs nothing special.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from importlib import resources
from typing import Annotated, Any

import httpx
from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse
from redis.exceptions import RedisError

from schemas.api_models import (
    ERROR_RESPONSES,
    ActiveUser,
    ActiveUsersBody,
    DriftBody,
    FeatureDrift,
    PipelineBody,
    PipelineSource,
)
from sinks.drift_store import RedisDriftStore
from sinks.hot_sessions import recently_active
from streams.logic.panel import Scrape, panel_between, parse_scrape

MAX_ACTIVE = 200
#: Scrapes kept for rates: a rate is taken against the oldest one at most this old.
RATE_WINDOW_S = 10.0
SCRAPE_TIMEOUT_S = 2.0


class PipelineScraper:
    """Scrapes the configured /metrics URLs and keeps recent rounds for the rates."""

    def __init__(self, urls: list[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.urls = urls
        self._clock = clock
        self._rounds: deque[Scrape] = deque()
        self._client: httpx.AsyncClient | None = None
        self._lock = asyncio.Lock()

    async def _fetch(self, url: str) -> str:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=SCRAPE_TIMEOUT_S)
        response = await self._client.get(url)
        response.raise_for_status()
        return response.text

    async def panel(self, drift: dict[str, Any] | None = None) -> PipelineBody:
        async with self._lock:  # tabs polling at once share one round
            results = await asyncio.gather(
                *(self._fetch(url) for url in self.urls), return_exceptions=True
            )
            texts = [r for r in results if isinstance(r, str)]
            current = parse_scrape(texts, self._clock())
            previous = self._baseline(current.at_s)
            self._rounds.append(current)
        figures = panel_between(previous, current)
        rates = figures.rates
        return PipelineBody(
            at_ms=int(time.time() * 1000),
            interval_s=figures.interval_s,
            events_per_s=rates["events"],
            applied_per_s=rates["applied"],
            triggers_per_s=rates["triggers"],
            reranks_per_s=rates["reranks"],
            sessions_flushed_per_s=rates["sessions_flushed"],
            sessions_rehydrated_per_s=rates["sessions_rehydrated"],
            freshness_mean_s=figures.freshness_mean_s,
            freshness_p99_s=figures.freshness_p99_s,
            sessions_hot=int(current.sessions_hot),
            sessions_flushed_total=int(current.totals.get("sessions_flushed", 0)),
            dead_letters={k: int(v) for k, v in sorted(current.dead_letters.items())},
            fallbacks_total=int(current.fallbacks),
            models=list(current.models),
            drift=_drift_body(drift),
            sources=[
                PipelineSource(url=url, up=True, error=None)
                if isinstance(result, str)
                else PipelineSource(url=url, up=False, error=_one_line(result))
                for url, result in zip(self.urls, results, strict=True)
            ],
        )

    def _baseline(self, now_s: float) -> Scrape | None:
        """The oldest kept round within the rate window, at least half a second old."""
        rounds = self._rounds
        while rounds and now_s - rounds[0].at_s > RATE_WINDOW_S:
            rounds.popleft()
        return next((r for r in rounds if now_s - r.at_s >= 0.5), None)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def _drift_body(saved: dict[str, Any] | None) -> DriftBody | None:
    """The drift store's report (`sinks.drift_store`) for the panel."""
    if not saved:
        return None
    try:
        return DriftBody(
            model=saved["model"],
            at_ms=saved["at_ms"],
            rows=saved["rows"],
            threshold=saved["threshold"],
            retrain_due=saved["retrain_due"],
            enough_rows=saved.get("enough_rows", True),
            source=saved.get("source", ""),
            worst=[FeatureDrift(feature=k, psi=v) for k, v in list(saved["psi"].items())[:5]],
        )
    except (KeyError, TypeError, ValueError):
        return None  # written by another version: not shown


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


def page_html() -> str:
    return (resources.files("streams") / "live_page.html").read_text(encoding="utf-8")


def add_live_routes(
    app: FastAPI,
    *,
    redis: Callable[[], Any],
    scraper: Callable[[], PipelineScraper],
    drift: Callable[[], RedisDriftStore],
    prefix: str,
    partitions: int,
) -> None:
    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    async def live_page() -> HTMLResponse:
        """The live page: a user's last-k, features and feed, and the pipeline panel."""
        return HTMLResponse(page_html(), headers={"Cache-Control": "no-cache"})

    @app.get(
        "/users",
        response_model=ActiveUsersBody,
        responses={k: ERROR_RESPONSES[k] for k in (400, 503)},
    )
    async def users(
        n: Annotated[int, Query(ge=1, le=MAX_ACTIVE)] = 20,
        q: Annotated[
            str | None, Query(max_length=128, description="a user id prefix to search")
        ] = None,
    ) -> ActiveUsersBody:
        """Users in the hot tier, most recently active first (the page's user picker)."""
        found = await recently_active(redis(), prefix, partitions, n, q)
        return ActiveUsersBody(users=[ActiveUser(user_id=u, last_event_ms=ms) for u, ms in found])

    @app.get("/pipeline", response_model=PipelineBody, responses={400: ERROR_RESPONSES[400]})
    async def pipeline() -> PipelineBody:
        """The pipeline panel: events/s, freshness, dead letters, sessions, triggers and
        re-ranks per second, summed over the configured workers' and rankers' /metrics
        (`SIGNALS_API_PIPELINE_METRICS`); a source that does not answer is listed down;
        and the latest drift check."""
        try:
            saved = await drift().read()
        except (RedisError, OSError):
            saved = None  # the panel still shows the processes' figures
        return await scraper().panel(saved)
