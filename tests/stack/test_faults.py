"""A store that goes away: the worker retries, commits nothing past unapplied events, and
resumes by itself when the store returns."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from schemas.events import Event, EventType
from schemas.hot_layout import hot_key
from sinks.events_producer import EventProducer
from streams.settings import Settings
from tests.conftest import free_port, wait_for


class PrivateRedis:
    """A Redis of this test's own, so stopping it cannot disturb other tests."""

    def __init__(self, tmp: Path, *options: str) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.options = options  # more redis-server arguments
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.tmp),
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        try:
            wait_for(lambda: _pings(client), 10, "private redis to start")
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def zrange(self, key: str) -> list[tuple[bytes, float]]:
        client = redis.Redis.from_url(self.url)
        try:
            return client.zrange(key, 0, -1, withscores=True)
        except redis.ConnectionError:
            return []
        finally:
            client.close()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


#: Event times must pass the worker's sanity bounds (no earlier than 2017, not in the future).
BASE_MS = 1_760_000_000_000


def click(user: str, product: str, at_ms: int) -> Event:
    """A click `at_ms` milliseconds after BASE_MS."""
    return Event(f"{user}-{product}", user, EventType.CLICK, BASE_MS + at_ms, product_id=product)


def at(ms: int) -> float:
    return float(BASE_MS + ms)


def test_redis_outage_is_retried_and_nothing_is_committed_past_unapplied_events(
    provisioned: Settings,
    isolated_env: dict[str, str],
    worker: Callable,
    private_redis: PrivateRedis,
) -> None:
    env = {**isolated_env, "SIGNALS_REDIS_URL": private_redis.url}
    key = hot_key(provisioned.redis_key_prefix, "u1", EventType.CLICK)
    producer = EventProducer(provisioned.kafka_bootstrap, provisioned.events_topic)

    with worker(env) as first:
        producer.send(click("u1", "before", 1_000))
        producer.flush()
        wait_for(
            lambda: private_redis.zrange(key) == [(b"before", at(1000))],
            90,
            "the first event",
            on_fail=lambda: first.log_text()[-3000:],
        )

        private_redis.stop()
        producer.send(click("u1", "during", 2_000))
        producer.flush()
        wait_for(
            lambda: "store unavailable" in first.log_text(),
            30,
            "the worker to log that Redis is unavailable and retry",
            on_fail=lambda: first.log_text()[-3000:],
        )
    # The first worker was stopped while the "during" event was still unapplied.
    assert first.process.returncode is not None

    private_redis.start()  # comes back empty: no persistence
    producer.send(click("u1", "after", 3_000))
    producer.close()
    with worker(env) as second:
        # "during" can only arrive if its offset was never committed by the first worker.
        wait_for(
            lambda: private_redis.zrange(key) == [(b"during", at(2000)), (b"after", at(3000))],
            90,
            "the unapplied event to be re-read by the next worker",
            on_fail=lambda: second.log_text()[-3000:],
        )


def test_the_worker_resumes_by_itself_when_redis_returns(
    provisioned: Settings,
    isolated_env: dict[str, str],
    worker: Callable,
    private_redis: PrivateRedis,
) -> None:
    env = {**isolated_env, "SIGNALS_REDIS_URL": private_redis.url}
    key = hot_key(provisioned.redis_key_prefix, "u2", EventType.CLICK)
    with (
        EventProducer(provisioned.kafka_bootstrap, provisioned.events_topic) as producer,
        worker(env) as running,
    ):
        producer.send(click("u2", "warmup", 500))
        producer.flush()
        wait_for(
            lambda: private_redis.zrange(key) == [(b"warmup", at(500))],
            90,
            "the warm-up event",
            on_fail=lambda: running.log_text()[-3000:],
        )
        private_redis.stop()
        producer.send(click("u2", "while-down", 1_500))
        producer.flush()
        wait_for(lambda: "store unavailable" in running.log_text(), 30, "a retry log line")
        time.sleep(1.0)
        private_redis.start()
        wait_for(
            lambda: private_redis.zrange(key) == [(b"while-down", at(1500))],
            60,
            "the worker to apply the event once Redis is back",
            on_fail=lambda: running.log_text()[-3000:],
        )
        assert running.process.poll() is None, "the worker must survive the outage"
