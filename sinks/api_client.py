"""A typed Python client for the HTTP read API (`streams.api`), for feed services that
would rather call the API than read Redis and the cold tier themselves.

    async with FeedApiClient("http://127.0.0.1:8080") as api:
        feed = await api.feed("u0000001", limit=20)
        recent = await api.interactions("u0000001", types=["click"], k=10)

Every error the API answers (400, 404, 503) raises ApiError with its status and one-line
message; a connection failure raises httpx's own error.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from schemas.api_models import (
    FeedBody,
    InteractionsBody,
    ProductFeaturesBody,
    ReadyBody,
    TrendingBody,
    UserFeaturesBody,
)

Body = TypeVar("Body", bound=BaseModel)


class ApiError(Exception):
    """An error answer: `status` and the API's one-line `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class FeedApiClient:
    def __init__(self, base_url: str, *, timeout_s: float = 5.0) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout_s)

    async def __aenter__(self) -> FeedApiClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def feed(self, user_id: str, limit: int = 20) -> FeedBody:
        return await self._get(FeedBody, f"/users/{user_id}/feed", limit=limit)

    async def interactions(
        self,
        user_id: str,
        types: Sequence[str] = (),
        k: int = 20,
        *,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> InteractionsBody:
        params: dict[str, Any] = {"k": k, "type": list(types)}
        if start_ms is not None or end_ms is not None:
            params |= {"start": start_ms, "end": end_ms}
        return await self._get(InteractionsBody, f"/users/{user_id}/interactions", **params)

    async def user_features(self, user_id: str) -> UserFeaturesBody:
        return await self._get(UserFeaturesBody, f"/users/{user_id}/features")

    async def product_features(self, product_id: str) -> ProductFeaturesBody:
        return await self._get(ProductFeaturesBody, f"/products/{product_id}/features")

    async def trending(self, category_id: str, n: int = 20) -> TrendingBody:
        return await self._get(TrendingBody, f"/categories/{category_id}/trending", n=n)

    async def ready(self) -> ReadyBody:
        """Each store's state; does not raise when one is down (that is the answer)."""
        response = await self._http.get("/readyz")
        return ReadyBody.model_validate_json(response.content)

    async def _get(self, model: type[Body], path: str, **params: Any) -> Body:
        query = {name: value for name, value in params.items() if value not in (None, [])}
        response = await self._http.get(path, params=query)
        if response.status_code != 200:
            try:
                message = str(response.json()["error"])
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise ApiError(response.status_code, message)
        return model.model_validate_json(response.content)
