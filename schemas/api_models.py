"""The HTTP read API's response bodies: the contract a feed service in any language reads
(the OpenAPI document at `/openapi.json` is generated from these).

Pydantic models, free of I/O; `streams.api` fills them from the stores and
`sinks.api_client` parses them back.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """Every error: 400 bad parameter, 404 unknown user/product/category, 503 store down."""

    error: str = Field(description="one line saying what is wrong")


#: The error answers every route documents in the OpenAPI document.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "a bad parameter"},
    404: {"model": ErrorBody, "description": "unknown user, product or category"},
    503: {"model": ErrorBody, "description": "a store is down"},
}


class FeedItem(BaseModel):
    product_id: str
    channel: str = Field(description="the candidate channel it came from")


class TriggerInfo(BaseModel):
    sequence: int = Field(description="events-topic offset of the newest event behind it")
    reason: str
    published_at_ms: int


class FeedBody(BaseModel):
    user_id: str
    model: str = Field(description='the model version that scored it, or "popularity"')
    fallback: bool = Field(description="popularity served for want of a model")
    holdout: bool = Field(description="popularity served on purpose (the control group)")
    generated_at_ms: int
    trigger: TriggerInfo
    total: int = Field(description="products in the stored feed")
    products: list[FeedItem] = Field(description="best first, at most `limit`")


class InteractionItem(BaseModel):
    product_id: str
    event_time_ms: int


class InteractionsBody(BaseModel):
    user_id: str
    tier: Literal["hot", "cold"] = Field(description="Redis (active session) or the CQL tier")
    items: dict[str, list[InteractionItem]] = Field(description="per event type, newest first")


class CategoryAffinity(BaseModel):
    category_id: str
    affinity: float


class UserFeaturesBody(BaseModel):
    user_id: str
    at_ms: int
    counts: dict[str, dict[str, int]] = Field(description="window -> event type -> events")
    distinct_categories_24h: int
    ms_since_previous: int | None
    session_events: int
    late_events: int
    top_categories: list[CategoryAffinity]


class ProductFeaturesBody(BaseModel):
    product_id: str
    at_ms: int
    counts: dict[str, dict[str, int]] = Field(description="window -> event type -> events")
    click_rate_24h: float
    cart_rate_24h: float


class TrendingProduct(BaseModel):
    product_id: str
    score: float = Field(description="decayed popularity at at_ms")


class TrendingBody(BaseModel):
    category_id: str
    at_ms: int
    products: list[TrendingProduct]


class HealthBody(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyBody(BaseModel):
    ready: bool
    stores: dict[str, str] = Field(description='store -> "ok" or why it is unreachable')


class ActiveUser(BaseModel):
    user_id: str
    last_event_ms: int = Field(description="event time of the user's newest event")


class ActiveUsersBody(BaseModel):
    users: list[ActiveUser] = Field(description="hot-tier users, most recently active first")


class PipelineSource(BaseModel):
    url: str
    up: bool
    error: str | None = Field(None, description="why the scrape failed")


class FeatureDrift(BaseModel):
    feature: str
    psi: float


class DriftBody(BaseModel):
    """The latest drift check (`signals drift` or a ranker's), largest PSI first."""

    model: str
    at_ms: int
    rows: int
    threshold: float
    retrain_due: bool
    enough_rows: bool = Field(description="false: too few live rows for a verdict")
    source: str
    worst: list[FeatureDrift] = Field(description="the five largest PSIs")


class PipelineBody(BaseModel):
    """The live page's pipeline panel: every configured worker's and ranker's /metrics,
    summed; rates over the interval since an earlier scrape (null on the first)."""

    at_ms: int
    interval_s: float | None = Field(description="seconds the rates are taken over")
    events_per_s: float | None
    applied_per_s: float | None
    triggers_per_s: float | None
    reranks_per_s: float | None
    sessions_flushed_per_s: float | None
    sessions_rehydrated_per_s: float | None
    freshness_mean_s: float | None = Field(description="event time to applied, mean")
    freshness_p99_s: float | None = Field(description="event time to applied, p99 (buckets)")
    sessions_hot: int
    sessions_flushed_total: int
    dead_letters: dict[str, int] = Field(description="dead letters since start, by reason")
    fallbacks_total: int
    models: list[str] = Field(description="the model each ranker serves")
    drift: DriftBody | None = Field(description="the latest drift check, if any")
    sources: list[PipelineSource]
