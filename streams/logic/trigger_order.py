"""Which waiting triggers the ranker serves next: high intent first.

A ranker that keeps up serves every trigger moments after it is published, whatever its
order. One that is behind (a sale's burst, a ranker restarting) has a queue, and there
the reasons differ in urgency: a click, add-to-cart, wishlist or order means the shopper
is looking at the feed right now and expects it to follow them, while a session start,
a top-category change or a few views can wait a little (the feed they already have is
still a good one). So each round takes the users with a high-intent trigger waiting
first, then the others, each group in arrival order.

A user is served once per round with their latest waiting trigger, which covers every
earlier one of theirs (a feed is ranked from the stores as they are, and a later sequence
replaces an earlier one). The caller acknowledges triggers in arrival order only, so no
offset is committed past a trigger that waits.

A ranker that stays behind (more triggers per second than it can rank, on a busy machine)
would let its queue grow without end, and then even a click waits behind it: high intent
first helps only among the triggers the ranker can see. So the look-ahead is bounded and
takes in every trigger as it arrives; when more than the bound wait, the oldest ones that
are not urgent are shed (`shed`): acknowledged unranked and counted. What that costs a
shopper: a session start, category change or view count that could not be ranked within
the look-ahead's worth of work keeps the feed they have until their next trigger; a
click, add-to-cart, wishlist or order is never shed. Pure: no Faust, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import dataclass


@dataclass(slots=True)
class Waiting:
    """A trigger in the ranker's look-ahead, in arrival order."""

    user_id: str
    sequence: int
    high_intent: bool
    served: bool = False


def next_round(
    waiting: Sequence[Waiting], users: int, busy: Set[str] = frozenset()
) -> list[list[int]]:
    """Up to `users` users to serve next: per user, the positions in `waiting` of every
    trigger of theirs not served yet (the one with the highest sequence is the one to
    rank). Users with a high-intent trigger waiting come first, then the rest; within
    each, by the arrival of their first waiting trigger. Users in `busy` (being ranked
    right now) wait for the next round: what arrived for them since is ranked after."""
    positions: dict[str, list[int]] = {}
    urgent: set[str] = set()
    for position, trigger in enumerate(waiting):
        if trigger.served or trigger.user_id in busy:
            continue
        positions.setdefault(trigger.user_id, []).append(position)
        if trigger.high_intent:
            urgent.add(trigger.user_id)
    ordered = [u for u in positions if u in urgent] + [u for u in positions if u not in urgent]
    return [positions[user] for user in ordered[:users]]


def shed(waiting: Sequence[Waiting], limit: int, busy: Set[str] = frozenset()) -> list[int]:
    """The positions of the triggers to shed so that at most `limit` wait unserved: the
    oldest that are not high intent, and not of a user in `busy` (being ranked: their
    triggers are acknowledged once that feed is written). High-intent triggers are
    never shed (when only they are over the bound, nothing is)."""
    unserved = sum(1 for trigger in waiting if not trigger.served)
    excess = unserved - limit
    if excess <= 0:
        return []
    chosen: list[int] = []
    for position, trigger in enumerate(waiting):
        if not trigger.served and not trigger.high_intent and trigger.user_id not in busy:
            chosen.append(position)
            if len(chosen) == excess:
                break
    return chosen


def latest(waiting: Sequence[Waiting], positions: Sequence[int]) -> int:
    """The position, among `positions`, of the trigger with the highest sequence."""
    return max(positions, key=lambda position: waiting[position].sequence)
