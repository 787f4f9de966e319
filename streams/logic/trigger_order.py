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
takes in every trigger as it arrives; when more than the bound wait, or one that is not
urgent has waited too long, the oldest ones that are not urgent are shed (`shed`):
acknowledged unranked and counted. What that costs a shopper: a session start, category
change or view count that could not be ranked in time keeps the feed they have until
their next trigger; a click, add-to-cart, wishlist or order is never shed.

The queue keeps its order as triggers arrive (who waits, who has high intent waiting, the
triggers that could be shed), so picking a round or shedding costs about what it picks or
sheds, not what waits: a ranker that is behind holds thousands of triggers, most of them
served already but not acknowledged yet (acknowledged in arrival order only), and a round
that looked at every one of them twice cost it more the further behind it was. Pure: no
Faust, no I/O.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Set
from dataclasses import dataclass


@dataclass(slots=True)
class Waiting:
    """A trigger in the queue, in arrival order."""

    user_id: str
    sequence: int
    high_intent: bool
    arrived: float = 0.0  # when the ranker took it in (the caller's clock, in seconds)
    served: bool = False  # ranked (or superseded, or shed): nothing left to do
    picked: bool = False  # in a round that is being ranked, or served


class TriggerQueue:
    """The triggers a ranker holds, in arrival order, until they are acknowledged.

    Positions count from the first trigger ever added, so batches that finish out of
    order still mark their own, and the front moves only over served triggers."""

    def __init__(self) -> None:
        self._waiting: collections.deque[Waiting] = collections.deque()
        self._acknowledged = 0  # triggers popped off the front so far
        #: user -> positions of their triggers not picked yet; in the order of each
        #: user's first such trigger.
        self._users: dict[str, list[int]] = {}
        #: Users with a high-intent trigger not picked yet, in the order of the first.
        self._urgent: dict[str, None] = {}
        #: Positions of triggers that are not urgent, in arrival order: what `shed`
        #: takes from the front (entries picked since are skipped there).
        self._calm: collections.deque[int] = collections.deque()
        #: Triggers not picked yet.
        self.unpicked = 0

    def __len__(self) -> int:
        """Triggers held: not acknowledged yet, served or not."""
        return len(self._waiting)

    def __getitem__(self, position: int) -> Waiting:
        return self._waiting[position - self._acknowledged]

    def add(self, user_id: str, sequence: int, high_intent: bool, arrived: float = 0.0) -> int:
        """Queue a trigger that arrived at `arrived` (seconds, any clock `shed` is given
        too); its position."""
        position = self._acknowledged + len(self._waiting)
        self._waiting.append(Waiting(user_id, sequence, high_intent, arrived))
        self._users.setdefault(user_id, []).append(position)
        if high_intent:
            self._urgent.setdefault(user_id)
        else:
            self._calm.append(position)
        self.unpicked += 1
        return position

    def add_served(self) -> int:
        """Hold a place with nothing to serve (a malformed trigger, dead-lettered), so
        what comes after it is acknowledged in order; its position."""
        position = self._acknowledged + len(self._waiting)
        self._waiting.append(Waiting("", -1, False, served=True, picked=True))
        return position

    def next_round(self, users: int, busy: Set[str] = frozenset()) -> list[list[int]]:
        """Up to `users` users to serve next, picked: per user, the positions of every
        trigger of theirs not picked yet (the one with the highest sequence is the one
        to rank, `latest`). Users with a high-intent trigger waiting come first, in the
        order of their first one, then the rest, in the order of their first waiting
        trigger. Users in `busy` (being ranked right now) wait for the next round:
        what arrived for them since is ranked after."""
        chosen: list[str] = []
        for user in self._urgent:
            if len(chosen) >= users:
                break
            if user not in busy:
                chosen.append(user)
        if len(chosen) < users:
            taken = set(chosen)
            for user in self._users:
                if len(chosen) >= users:
                    break
                if user not in busy and user not in taken:
                    chosen.append(user)
        groups = []
        for user in chosen:
            positions = self._users.pop(user)
            self._urgent.pop(user, None)
            for position in positions:
                self[position].picked = True
            self.unpicked -= len(positions)
            groups.append(positions)
        return groups

    def latest(self, positions: list[int]) -> int:
        """The position, among `positions`, of the trigger with the highest sequence."""
        return max(positions, key=lambda position: self[position].sequence)

    def shed(
        self, limit: int, busy: Set[str] = frozenset(), arrived_before: float = -math.inf
    ) -> list[int]:
        """Shed the oldest triggers that are not urgent while more than `limit` wait
        unpicked, and any that arrived before `arrived_before`; none of a user in
        `busy` (being ranked: their triggers are acknowledged once that feed is
        written). High-intent triggers are never shed (when only they are over the
        bound, nothing is). Their positions; `served([])` then gives how many became
        acknowledgeable.

        The age matters as much as the count: triggers are acknowledged in arrival
        order, so one that waits unpicked holds back the acknowledgement of every later
        one, served or not, and the look-ahead (which stops taking triggers in at its
        limit) fills with them: a ranker that is behind and serves clicks first could
        otherwise stop seeing new clicks."""
        kept: list[int] = []  # of busy users: still waiting, at the front again after
        shed: list[int] = []
        calm = self._calm
        while calm:
            position = calm[0]
            if position < self._acknowledged or self[position].picked:
                calm.popleft()
                continue
            entry = self[position]
            if self.unpicked <= limit and entry.arrived >= arrived_before:
                break
            calm.popleft()
            if entry.user_id in busy:
                kept.append(position)
                continue
            entry.picked = entry.served = True
            mine = self._users[entry.user_id]
            mine.remove(position)
            if not mine:
                del self._users[entry.user_id]
            self.unpicked -= 1
            shed.append(position)
        calm.extendleft(reversed(kept))
        return shed

    def served(self, groups: list[list[int]]) -> int:
        """Mark a batch's triggers served; how many at the front are now acknowledgeable
        (popped: the caller acknowledges that many of its own, in order)."""
        for positions in groups:
            for position in positions:
                self[position].served = True
        done = 0
        while self._waiting and self._waiting[0].served:
            self._waiting.popleft()
            done += 1
        self._acknowledged += done
        while self._calm and self._calm[0] < self._acknowledged:
            self._calm.popleft()
        return done
