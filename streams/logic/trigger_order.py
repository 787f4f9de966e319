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
offset is committed past a trigger that waits; and it looks ahead a bounded number of
triggers, so a trigger that is not urgent waits at most until the look-ahead is full of
it and its peers. Pure: no Faust, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(slots=True)
class Waiting:
    """A trigger in the ranker's look-ahead, in arrival order."""

    user_id: str
    sequence: int
    high_intent: bool
    served: bool = False


def next_round(waiting: Sequence[Waiting], users: int) -> list[list[int]]:
    """Up to `users` users to serve next: per user, the positions in `waiting` of every
    trigger of theirs not served yet (the one with the highest sequence is the one to
    rank). Users with a high-intent trigger waiting come first, then the rest; within
    each, by the arrival of their first waiting trigger."""
    positions: dict[str, list[int]] = {}
    urgent: set[str] = set()
    for position, trigger in enumerate(waiting):
        if trigger.served:
            continue
        positions.setdefault(trigger.user_id, []).append(position)
        if trigger.high_intent:
            urgent.add(trigger.user_id)
    ordered = [u for u in positions if u in urgent] + [u for u in positions if u not in urgent]
    return [positions[user] for user in ordered[:users]]


def latest(waiting: Sequence[Waiting], positions: Sequence[int]) -> int:
    """The position, among `positions`, of the trigger with the highest sequence."""
    return max(positions, key=lambda position: waiting[position].sequence)
