"""The composition root: every adapter and the Faust app are built here from Settings.

Entry points (CLIs, the worker, tests) call these functions; nothing connects at import.
"""

from __future__ import annotations

import faust
import redis.asyncio as aioredis

from sinks.hot_store import RedisHotStore
from streams.app import build_app
from streams.settings import Settings


def build_redis(settings: Settings) -> aioredis.Redis:
    """An asyncio Redis client; it connects lazily on first command."""
    return aioredis.Redis.from_url(
        settings.redis_url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30
    )


def build_hot_store(settings: Settings, client: aioredis.Redis | None = None) -> RedisHotStore:
    return RedisHotStore(
        client or build_redis(settings),
        prefix=settings.redis_key_prefix,
        last_k=settings.last_k,
        ttl_s=settings.hot_ttl_s,
    )


def build_worker_app(settings: Settings) -> faust.App:
    return build_app(settings, build_hot_store(settings))
