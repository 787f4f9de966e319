"""Commands packed by hiredis are byte for byte what redis-py's asyncio packer sends."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.exceptions import DataError

from sinks.redis_packing import (
    HiredisConnection,
    HiredisSSLConnection,
    HiredisUnixConnection,
    connection_class_for,
)

COMMANDS: list[tuple[object, ...]] = [
    ("SET", "key", "value"),
    ("EVALSHA", "a" * 40, 3, "k1", "k2", "{user}:v", b'[1,"x"]', 7),
    ("ZADD", "key", "GT", 1796306893600, "p1", 0.1, "p2", 1e20, "p3", -2.5e-7, "p4"),
    ("HSET", "key", "ü名", "🙂", b"\x00\xff", bytearray(b"ba"), memoryview(b"mv")),
    ("CONFIG GET", "maxmemory"),
    (b"CLIENT SETNAME", "worker"),
    ("GET", ""),
]


def _python_packed(args: tuple[object, ...]) -> bytes:
    return b"".join(aioredis.Connection().pack_command(*args))


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: str(a[0]))
def test_hiredis_packs_the_same_bytes_as_redis_py(args: tuple[object, ...]) -> None:
    assert b"".join(HiredisConnection().pack_command(*args)) == _python_packed(args)


@pytest.mark.parametrize("bad", [None, True, {"a": 1}, [1, 2]])
def test_values_redis_py_refuses_are_refused_with_its_error(bad: object) -> None:
    with pytest.raises(DataError):
        aioredis.Connection().pack_command("SET", "key", bad)
    with pytest.raises(DataError):
        HiredisConnection().pack_command("SET", "key", bad)


def test_the_url_scheme_picks_the_transport() -> None:
    assert connection_class_for("redis://localhost:6379/0") is HiredisConnection
    assert connection_class_for("rediss://cache.internal:6380") is HiredisSSLConnection
    assert connection_class_for("unix:///run/redis.sock") is HiredisUnixConnection
    assert issubclass(HiredisSSLConnection, aioredis.SSLConnection)
