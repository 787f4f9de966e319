"""The latest drift check, for the live page, `signals drift` and operators.

Redis layout (documented in the README):

    <prefix>:drift   string, JSON: the report (`streams.logic.drift.DriftReport.to_json`:
                     at_ms, model, rows, threshold, retrain_due, enough_rows, psi =
                     {feature or "score": PSI}, largest first) and `source`, who checked
                     ("ranker <host>:<pid>" every SIGNALS_DRIFT_INTERVAL_S, or "signals
                     drift"); expires a day after its write

Whoever checked last wins: every ranker and every `signals drift` compares its own live
sample with the same reference, so each report stands for the whole.
"""

from __future__ import annotations

from typing import Any, cast

import orjson

from sinks.redis_scripts import HotRedis

DRIFT_TTL_S = 86_400


def drift_key(prefix: str) -> str:
    return f"{prefix}:drift"


class RedisDriftStore:
    def __init__(self, client: HotRedis, prefix: str) -> None:
        self._redis = client
        self._key = drift_key(prefix)

    async def write(self, report: dict[str, Any], source: str) -> None:
        await self._redis.set(self._key, orjson.dumps({**report, "source": source}), ex=DRIFT_TTL_S)

    async def read(self) -> dict[str, Any] | None:
        raw = await self._redis.get(self._key)
        return cast("dict[str, Any]", orjson.loads(raw)) if raw else None

    async def close(self) -> None:
        await self._redis.aclose()
