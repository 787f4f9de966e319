"""Erasure of a user's data: the forget record and the rule every reader of events applies.

A request to erase a user (`signals forget`, `jobs.forget.forget_users`) is a record on
the events topic itself, keyed by the user like their events (so it lands on their
partition, in order with them) and marked by a header:

    key      the user id (UTF-8)
    headers  signals.control = forget
    value    JSON {"user_id": ..., "erased_ms": T, "request_id": ...}

The worker that owns the partition erases the user when it reaches the record: every
batch before it has been applied, none after it has started. T (the request's wall clock)
is the erasure's time, and the guarantee is stated in event time:

    after the erasure, no event of the user timed at or before T is kept anywhere the
    pipeline writes (hot tier, cold tier, features, the served feed), however late it
    arrives, and whether it comes from the topic, a replay or a backfill.

So the rule below (`ErasureFilter`) is applied by the live worker to every batch and by
the replay and backfill readers to everything they read; events after T are a new
history (the shopper came back) and are kept. Erasures are kept in the cold tier's
`erasures` table (migration 0004), which every worker loads when it is assigned
partitions and the offline jobs load when they start.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

CONTROL_HEADER = "signals.control"
FORGET = b"forget"


class InvalidForget(ValueError):
    """A record marked as a forget request that cannot be read."""


@dataclass(frozen=True, slots=True)
class Forget:
    """One erasure: the user and the time T at and before which their events are gone."""

    user_id: str
    erased_ms: int
    request_id: str = ""


class ForgetAt(NamedTuple):
    """A forget request as the worker read it: its partition and offset, and what it asks.
    The offset fences the user's served feed: only a feed from a later trigger (whose
    sequence is a later offset of the partition) may replace the erasure's marker."""

    partition: int
    offset: int
    forget: Forget


def encode_forget(forget: Forget) -> tuple[bytes, bytes, list[tuple[str, str | bytes | None]]]:
    """(key, value, headers) of the record that asks for `forget`."""
    value = json.dumps(
        {"user_id": forget.user_id, "erased_ms": forget.erased_ms, "request_id": forget.request_id}
    ).encode()
    return forget.user_id.encode(), value, [(CONTROL_HEADER, FORGET)]


def is_forget(
    headers: Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None,
) -> bool:
    """Whether a record with these headers is a forget request (events carry none).
    Headers as aiokafka and confluent-kafka hand them over (pairs; or a mapping)."""
    if not headers:
        return False
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return any(name == CONTROL_HEADER and value == FORGET for name, value in pairs)


def decode_forget(key: bytes | None, value: bytes | None) -> Forget:
    """The request a forget record carries; its key must be the user it names."""
    try:
        body = json.loads(value or b"")
        forget = Forget(
            str(body["user_id"]), int(body["erased_ms"]), str(body.get("request_id", ""))
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidForget(f"unreadable forget request: {exc}") from None
    if key is None:
        raise InvalidForget("a forget request must be keyed by the user (their partition)")
    if key.decode(errors="replace") != forget.user_id:
        raise InvalidForget("a forget request must be keyed by the user it names")
    if not forget.user_id:
        raise InvalidForget("a forget request names no user")
    return forget


class ErasureFilter:
    """Which events may still be kept: none of an erased user's at or before their T.

    A mapping user -> T, the latest erasure's time when a user was erased more than once.
    Empty (the usual case), it admits everything at the cost of one truth test per batch.
    """

    def __init__(self, erased: Mapping[str, int] | None = None) -> None:
        self._erased: dict[str, int] = dict(erased or {})

    def __bool__(self) -> bool:
        return bool(self._erased)

    def __len__(self) -> int:
        return len(self._erased)

    def add(self, forgets: Iterable[Forget]) -> None:
        for forget in forgets:
            if forget.erased_ms > self._erased.get(forget.user_id, -1):
                self._erased[forget.user_id] = forget.erased_ms

    def update(self, erased: Mapping[str, int]) -> None:
        self.add(Forget(user, at) for user, at in erased.items())

    def users(self) -> list[str]:
        return list(self._erased)

    def erased_at(self, user_id: str) -> int | None:
        return self._erased.get(user_id)

    def keeps(self, user_id: str, event_time_ms: int) -> bool:
        """False for an event of an erased user timed at or before their erasure."""
        erased_ms = self._erased.get(user_id)
        return erased_ms is None or event_time_ms > erased_ms
