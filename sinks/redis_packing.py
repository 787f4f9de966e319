"""Redis commands packed by hiredis (C), not by redis.asyncio's Python loop.

redis-py's asyncio connection encodes every argument of every command in Python (an
encoder call and a bytes join each). The worker's batch write is one script call with a
key per sorted set, and its hot check and cold-index check are pipelines of many
arguments, so that loop was ~12% of the worker's time in a profile of the sale-day burst
(`bench/burst_bench.py`). redis-py's synchronous client already packs with
`hiredis.pack_command` when hiredis is installed; this does the same for asyncio
connections. Replies are untouched (hiredis already parses them).
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlparse

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import DataError


class _HiredisPacking:
    """`pack_command` in C; the same bytes as redis-py's (str as UTF-8, numbers by repr)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        # A command name with spaces ("CONFIG GET") goes as separate words, as redis-py does.
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        packed = tuple(bytes(a) if isinstance(a, bytearray | memoryview) else a for a in args)
        try:
            # hiredis's stub types the tuple as of one item; it takes any length.
            return [hiredis.pack_command(cast(Any, packed))]
        except TypeError as exc:  # None, bool, a dict...: redis-py's error for them
            raise DataError(str(exc)) from exc


class HiredisConnection(_HiredisPacking, aioredis.Connection):
    pass


class HiredisSSLConnection(_HiredisPacking, aioredis.SSLConnection):
    pass


class HiredisUnixConnection(_HiredisPacking, aioredis.UnixDomainSocketConnection):
    pass


def connection_class_for(url: str) -> type[aioredis.connection.AbstractConnection]:
    """The connection class `from_url` would pick for this URL's scheme, packing in C."""
    scheme = urlparse(url).scheme
    if scheme == "rediss":
        return HiredisSSLConnection
    if scheme == "unix":
        return HiredisUnixConnection
    return HiredisConnection
