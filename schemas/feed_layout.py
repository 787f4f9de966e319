"""The served feed: what the ranker writes for a user and the feed service reads.

    <prefix>:feed:{<user_id>}   string: `<sequence>|<JSON>`, the JSON's fields:
        products        product ids, best first
        channels        the candidate channel each came from (same order)
        model           the model version that scored them, or "popularity"
        fallback        true when the popularity ranking served for want of a model
                        (none loaded, or scoring failed)
        holdout         true when the user is in the ranker's holdout (the control
                        group of `SIGNALS_RANKER_HOLDOUT_SHARE`): popularity on purpose
        trigger         {"sequence", "reason", "published_at_ms"} of the trigger that
                        caused it
        generated_at_ms when the ranker wrote it
        language        the user's language as the trigger carried it (null when unknown;
                        the drift check scores a user's candidates with it)

`<sequence>` is the trigger's sequence (the offset of the newest event behind it): a
feed is replaced only by one from a later trigger, so a stale or repeated trigger, or a
slower ranker finishing late, never overwrites a fresher feed. A value with nothing after
the `|` is an erased user's marker (`signals forget`; `<sequence>` is the offset of the
forget record): there is no feed, and only a trigger after the erasure writes one. The
key shares the hash tag of the user's last-k keys (one cluster slot) and expires
FEED_TTL_MS after its write.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from schemas.feature_layout import key_part

#: A feed nobody refreshed for a week is dropped (the user is served a cold start).
FEED_TTL_MS = 7 * 24 * 3_600_000
POPULARITY_MODEL = "popularity"


@dataclass(frozen=True, slots=True)
class Feed:
    user_id: str
    sequence: int
    products: list[str]
    channels: list[str]
    model: str
    fallback: bool
    trigger_reason: str
    trigger_published_at_ms: int
    generated_at_ms: int
    holdout: bool = False
    language: str | None = None


def feed_key(prefix: str, user_id: str) -> str:
    return f"{prefix}:feed:{{{key_part(user_id)}}}"


def encode_feed(feed: Feed) -> bytes:
    body = {
        "products": feed.products,
        "channels": feed.channels,
        "model": feed.model,
        "fallback": feed.fallback,
        "holdout": feed.holdout,
        "trigger": {
            "sequence": feed.sequence,
            "reason": feed.trigger_reason,
            "published_at_ms": feed.trigger_published_at_ms,
        },
        "generated_at_ms": feed.generated_at_ms,
        "language": feed.language,
    }
    return b"%d|%b" % (feed.sequence, orjson.dumps(body))


def erased_feed(offset: int) -> bytes:
    """The marker an erasure leaves: no feed, and none from a trigger before `offset`."""
    return b"%d|" % offset


def decode_feed(user_id: str, value: bytes | str) -> Feed | None:
    """The stored feed; None for an erased user's marker."""
    raw = value.encode() if isinstance(value, str) else value
    _sequence, _, body = raw.partition(b"|")
    if not body:
        return None
    fields = orjson.loads(body)
    trigger = fields["trigger"]
    return Feed(
        user_id=user_id,
        sequence=trigger["sequence"],
        products=fields["products"],
        channels=fields["channels"],
        model=fields["model"],
        fallback=fields["fallback"],
        trigger_reason=trigger["reason"],
        trigger_published_at_ms=trigger["published_at_ms"],
        generated_at_ms=fields["generated_at_ms"],
        holdout=fields.get("holdout", False),
        language=fields.get("language"),
    )
