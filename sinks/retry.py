"""Retrying a store call while its service is down, without ever skipping work.

The agents call stores through `until_applied`: a write that fails on a connection
problem is retried with capped exponential backoff, forever, with one log line per
attempt. Because the agent does not move on, Faust does not commit the batch's offsets,
so nothing past unapplied work is committed, and processing resumes by itself.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    RedisClusterException,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential_jitter,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Errors that mean "the service is unavailable", not "this input is bad".
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    # A cluster that is unreachable, failing over or resharding.
    ClusterDownError,
    MasterDownError,
    TryAgainError,
    RedisClusterException,
    ConnectionError,
    TimeoutError,
    OSError,
)


@functools.cache
def transient_errors() -> tuple[type[BaseException], ...]:
    """TRANSIENT_ERRORS plus the CQL driver's transient errors.

    Imported on first use, so importing this module does not pay the driver's import time.
    """
    from sinks.cold_store import TRANSIENT_CQL_ERRORS  # noqa: PLC0415

    return TRANSIENT_ERRORS + TRANSIENT_CQL_ERRORS


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    log.warning(
        "store unavailable (%s: %s); attempt %d failed, retrying in %.1fs",
        type(exc).__name__,
        exc,
        state.attempt_number,
        wait,
    )


async def until_applied(
    call: Callable[[], Awaitable[T]],
    *,
    give_up: Callable[[], bool] = lambda: False,
    initial_s: float = 0.1,
    max_s: float = 10.0,
) -> T:
    """Run `call` until it succeeds; transient errors are retried, anything else raises.

    Transient: `transient_errors()`, i.e. Redis, OS and CQL driver unavailability.

    `give_up` turns true when the worker is stopping: the last error is then raised, so
    the batch is left unapplied (and uncommitted) instead of blocking shutdown forever.
    """
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(transient_errors()),
        wait=wait_exponential_jitter(initial=initial_s, max=max_s),
        stop=lambda _state: give_up(),
        before_sleep=_log_retry,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await call()
    raise AssertionError("unreachable: AsyncRetrying either returns or raises")
