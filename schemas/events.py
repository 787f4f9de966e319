"""The event model shared by producers, the stream workers and the offline jobs.

Pure: no Kafka, Redis or Avro here. The wire encoding lives in `schemas.codec`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class EventType(StrEnum):
    """Every interaction a shopper can produce. Values are the wire names."""

    APP_OPEN = "app_open"
    VIEW = "view"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    REMOVE_FROM_CART = "remove_from_cart"
    WISHLIST = "wishlist"
    ORDER = "order"


#: Types that point at a product and therefore belong in a user's last-k.
PRODUCT_EVENT_TYPES: frozenset[EventType] = frozenset(EventType) - {EventType.APP_OPEN}


class InvalidEvent(ValueError):
    """An event that breaks the contract. `field` names the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(slots=True)
class Event:
    """One shopper interaction. `event_time_ms` is when it happened on the device (ms epoch).

    Treat it as a value: it is validated when built. It is not `frozen` because a frozen
    dataclass costs ~2.5 us more per construction (one `object.__setattr__` per field),
    which is a third of the consumer's whole decode budget; the producer validates again
    before encoding, so a mutated event still cannot reach the topic unchecked.
    """

    event_id: str
    user_id: str
    event_type: EventType
    event_time_ms: int
    product_id: str | None = None
    category_id: str | None = None
    price_paise: int | None = None
    feed_position: int | None = None
    platform: str = "android"
    language: str = "en"
    order_id: str | None = None
    quantity: int | None = None

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["event_type"] = self.event_type.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        """Build an event from a decoded mapping, naming the first bad field on error."""
        if not isinstance(data, dict):
            raise InvalidEvent("event", f"expected an object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidEvent(unknown[0], "unknown field")
        for required in ("event_id", "user_id", "event_type", "event_time_ms"):
            if required not in data:
                raise InvalidEvent(required, "missing")
        raw_type = data["event_type"]
        try:
            event_type = EventType(raw_type)
        except ValueError:
            raise InvalidEvent("event_type", f"unknown type {raw_type!r}") from None
        return cls(**{**data, "event_type": event_type})


#: What a user id may be: printable ASCII without spaces or braces, 1 to 128 characters.
#: The id is part of every Redis key of the user (`<prefix>:{<user_id>}:<type>`) and its
#: braces are the Redis Cluster hash tag, so an id with a brace could split one user's keys
#: over several slots (one starting with `}` gives an empty tag).
USER_ID_PATTERN = r"[\x21-\x7a\x7c\x7e]{1,128}"
_user_id_ok = re.compile(USER_ID_PATTERN).fullmatch


#: Longest product id in UTF-8 bytes. Ids are stored in every snapshot and history
#: block, so this bounds one user's cold rows (see `streams.settings.MAX_LAST_K`); they
#: must also be printable (`str.isprintable`: no control characters, which JSON would
#: write as 6-byte escapes).
MAX_PRODUCT_ID_BYTES = 256


def _product_id_ok(product_id: object) -> bool:
    return (
        type(product_id) is str
        and len(product_id) > 0
        and (
            len(product_id) <= MAX_PRODUCT_ID_BYTES // 4
            or len(product_id.encode()) <= MAX_PRODUCT_ID_BYTES
        )
        and product_id.isprintable()
    )


def check_user_id(user_id: str) -> str:
    """The id itself if it is one the contract allows; InvalidEvent otherwise (readers use
    it too: an id no event can carry has no data, and some could not even be looked up)."""
    if type(user_id) is str and _user_id_ok(user_id):
        return user_id
    raise InvalidEvent(
        "user_id",
        "must be 1-128 printable ASCII characters without spaces, '{' or '}' "
        f"(it is part of the Redis keys), got {str(user_id)[:40]!r}",
    )


def validate(event: Event) -> None:
    """Reject events no consumer could use. Raises InvalidEvent naming the field.

    On every producer's and the worker's hot path, so the common case is a handful of
    exact type checks (`type(x) is int` also rules out bools); the reasons are worked
    out only when something is wrong.
    """
    event_type = event.event_type
    time_ms = event.event_time_ms
    product_id = event.product_id
    if (
        type(event.event_id) is str
        and event.event_id
        and type(event.user_id) is str
        and _user_id_ok(event.user_id)
        and type(event_type) is EventType
        and type(time_ms) is int
        and time_ms > 0
        and (event_type is EventType.APP_OPEN or _product_id_ok(product_id))
        and (
            (type(event.order_id) is str and event.order_id)
            or (event.order_id is None and event_type is not EventType.ORDER)
        )
        and _non_negative_or_none(event.price_paise)
        and _non_negative_or_none(event.feed_position)
        and _non_negative_or_none(event.quantity)
    ):
        return
    _explain(event)
    raise AssertionError(f"validate's fast path rejected a valid event: {event!r}")


def _non_negative_or_none(value: object) -> bool:
    return value is None or (type(value) is int and value >= 0)


def _explain(event: Event) -> None:
    """Raise InvalidEvent for the first broken rule (the slow, descriptive path); return
    if there is none."""
    for name in ("event_id", "user_id"):
        value = getattr(event, name)
        if not isinstance(value, str) or not value:
            raise InvalidEvent(name, "must be a non-empty string")
    check_user_id(event.user_id)
    if not isinstance(event.event_type, EventType):
        raise InvalidEvent("event_type", f"unknown type {event.event_type!r}")
    if isinstance(event.event_time_ms, bool) or not isinstance(event.event_time_ms, int):
        raise InvalidEvent("event_time_ms", "must be an integer (ms since epoch)")
    if event.event_time_ms <= 0:
        raise InvalidEvent("event_time_ms", "must be positive")
    if event.event_type in PRODUCT_EVENT_TYPES and (
        not isinstance(event.product_id, str) or not event.product_id
    ):
        raise InvalidEvent("product_id", f"required for {event.event_type.value} events")
    if event.event_type in PRODUCT_EVENT_TYPES and not _product_id_ok(event.product_id):
        size = len(str(event.product_id).encode())
        raise InvalidEvent(
            "product_id",
            f"must be printable and at most {MAX_PRODUCT_ID_BYTES} bytes in UTF-8, got "
            f"{size} bytes{'' if str(event.product_id).isprintable() else ', unprintable'}",
        )
    if event.order_id is not None and (not isinstance(event.order_id, str) or not event.order_id):
        raise InvalidEvent("order_id", "must be a non-empty string when given")
    if event.event_type is EventType.ORDER and event.order_id is None:
        raise InvalidEvent("order_id", "required for order events")
    for name in ("price_paise", "feed_position", "quantity"):
        value = getattr(event, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidEvent(name, "must be an integer")
        if value is not None and value < 0:
            raise InvalidEvent(name, "must not be negative")
