"""The composition root: every adapter and the Faust app are built here from Settings.

Entry points (CLIs, the worker, tests) call these functions; nothing connects at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import faust
import redis.asyncio as aioredis

from sinks.catalog_store import RedisCatalogStore
from sinks.cold_index import RedisColdIndex
from sinks.connectivity import redis_options
from sinks.drift_store import RedisDriftStore
from sinks.eraser import Eraser
from sinks.feature_store import RedisFeatureStore
from sinks.feed_store import RedisFeedStore
from sinks.hot_sessions import RedisSessions
from sinks.hot_store import RedisHotStore
from sinks.model_store import ModelStore
from sinks.redis_packing import connection_class_for
from sinks.redis_scripts import HotRedis
from streams.app import build_app
from streams.models import ModelSlot
from streams.ranker import FeedRanker, ranker_faust_app
from streams.sessions import SessionKeeper
from streams.settings import Settings

if TYPE_CHECKING:
    from sinks.cold_store import CqlColdStore
    from sinks.interaction_reader import InteractionReader


def build_redis(settings: Settings) -> HotRedis:
    """An asyncio client for one Redis, or for a Redis Cluster (discovered from any node);
    it connects lazily on first command."""
    security = redis_options(settings)  # ACL user, password, TLS
    if settings.redis_cluster:
        return aioredis.RedisCluster.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=5, **security
        )
    return aioredis.Redis.from_url(
        settings.redis_url,
        # Commands packed by hiredis (`sinks.redis_packing`); the cluster client picks
        # its own connection class and keeps redis-py's.
        connection_class=connection_class_for(settings.redis_url),
        socket_timeout=5,
        socket_connect_timeout=5,
        health_check_interval=30,
        **security,
    )


def build_hot_store(settings: Settings, client: HotRedis | None = None) -> RedisHotStore:
    return RedisHotStore(
        client or build_redis(settings),
        prefix=settings.redis_key_prefix,
        last_k=settings.last_k,
    )


def build_cold_store(settings: Settings) -> CqlColdStore:
    """The CQL cold tier on `settings.cql_keyspace` (migrated beforehand: `signals-stack migrate`).

    Connects now (the driver's connect is synchronous: call it before the loop is busy);
    statements are prepared on first use or with `await store.open()`. The driver is
    imported here, not at module import, so entry points without a cold tier stay light.
    """
    from cassandra.query import tuple_factory  # noqa: PLC0415

    from sinks.cold_store import CqlColdStore  # noqa: PLC0415
    from sinks.cql import connect  # noqa: PLC0415

    # Rows are read by position; the default factory builds a namedtuple class per
    # response (~6% of a worker's time during re-hydration).
    cluster, session = connect(settings, settings.cql_keyspace, row_factory=tuple_factory)
    return CqlColdStore(
        session,
        history_ttl_s=settings.cold_history_ttl_s,
        max_in_flight=settings.cql_max_in_flight,
        cluster=cluster,
    )


def build_cold_index(settings: Settings, client: HotRedis | None = None) -> RedisColdIndex | None:
    """Which users the cold tier may hold (None when `cold_index_enabled` is off)."""
    if not settings.cold_index_enabled:
        return None
    return RedisColdIndex(
        client or build_redis(settings), settings.redis_key_prefix, settings.cold_index_shape()
    )


def build_session_keeper(
    settings: Settings, client: HotRedis | None = None, cold: CqlColdStore | None = None
) -> SessionKeeper:
    client = client or build_redis(settings)
    return SessionKeeper(
        hot=RedisSessions(client, settings.redis_key_prefix, settings.last_k),
        cold=cold or build_cold_store(settings),
        index=build_cold_index(settings, client),
        gap_ms=int(settings.inactivity_gap_s * 1000),
        idle_grace_ms=int(settings.session_idle_grace_s * 1000),
        flush_batch=settings.flush_batch,
        max_stored_bytes=settings.stored_cache_mb * 1024 * 1024,
    )


def build_feature_store(settings: Settings, client: HotRedis | None = None) -> RedisFeatureStore:
    """The online feature store: the worker writes it, the ranker and feed service read it."""
    return RedisFeatureStore(
        client or build_redis(settings),
        settings.redis_key_prefix,
        settings.feature_config(),
        cached_users=settings.feature_cached_users,
    )


def build_catalog_store(settings: Settings, client: HotRedis | None = None) -> RedisCatalogStore:
    """The product catalog: loaded by `signals catalog load`, read by the ranker."""
    return RedisCatalogStore(client or build_redis(settings), settings.redis_key_prefix)


def build_feed_store(settings: Settings, client: HotRedis | None = None) -> RedisFeedStore:
    """The served feeds: the ranker writes them, the feed service reads them."""
    return RedisFeedStore(client or build_redis(settings), settings.redis_key_prefix)


def build_drift_store(settings: Settings, client: HotRedis | None = None) -> RedisDriftStore:
    """The latest drift check (the rankers and `signals drift` write it)."""
    return RedisDriftStore(client or build_redis(settings), settings.redis_key_prefix)


def build_ranker(
    settings: Settings, client: HotRedis | None = None, *, compile_models: bool = True
) -> FeedRanker:
    """The ranker's logic over the stores (the Faust app and `signals drift` use it)."""
    client = client or build_redis(settings)
    return FeedRanker(
        hot_store=build_hot_store(settings, client),
        features=build_feature_store(settings, client),
        catalog=build_catalog_store(settings, client),
        feeds=build_feed_store(settings, client),
        models=ModelSlot(
            ModelStore(settings.model_dir), settings.model_poll_s, compile=compile_models
        ),
        holdout_share=settings.ranker_holdout_share,
        drift_threshold=settings.drift_threshold,
    )


def build_ranker_app(settings: Settings) -> faust.App:
    """The feed ranker's Faust app (its own consumer group over the trigger topic)."""
    client = build_redis(settings)
    return ranker_faust_app(
        settings, build_ranker(settings, client), build_drift_store(settings, client)
    )


def build_worker_app(settings: Settings) -> faust.App:
    client = build_redis(settings)
    cold = build_cold_store(settings)
    return build_app(
        settings,
        build_hot_store(settings, client),
        build_session_keeper(settings, client, cold),
        build_feature_store(settings, client) if settings.features_enabled else None,
        eraser=Eraser(client, settings.redis_key_prefix, cold),
    )


def build_interaction_reader(
    settings: Settings, cold: CqlColdStore | None = None
) -> InteractionReader:
    """The feed service's read client over both tiers."""
    from sinks.interaction_reader import InteractionReader  # noqa: PLC0415

    return InteractionReader(
        build_redis(settings), settings.redis_key_prefix, cold or build_cold_store(settings)
    )
