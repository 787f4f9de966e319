"""Sending simulated traffic: pacing by event time, counting, and a progress display.

The simulation (`jobs.traffic`) decides *what* happens and *when* in simulated time; this
module decides when each event leaves the process. Paced, an event is sent when the wall
clock reaches its event time (start = now), so the topic sees the simulated rate and event
times are real times. Unpaced (backfills, benchmarks), events go out as fast as the
producer takes them and the simulation is placed so that it ends about now, which keeps
every event time inside the worker's sanity bounds.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

from tqdm import tqdm

from schemas.events import Event
from sinks.events_producer import EventProducer

#: How many events between progress updates (tqdm's own cost stays negligible).
PROGRESS_EVERY = 2000


@dataclass(frozen=True, slots=True)
class SendSummary:
    """What a traffic run did, for the closing line and for tests."""

    sent: int
    delivered: int
    failed: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def line(self, topic: str) -> str:
        return (
            f"sent {self.sent:,} events to {topic} in {self.seconds:.1f}s "
            f"({self.rate:,.0f} events/s); delivered {self.delivered:,}, failed {self.failed:,}"
        )


def paced(
    events: Iterable[Event],
    start_ms: int,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Event]:
    """Release each event when the clock reaches its offset from `start_ms`.

    Late (out-of-order) events are due in the past and go out at once. If the sender
    cannot keep up, events go out as fast as possible and the lag is visible in the
    achieved rate rather than hidden.
    """
    began = clock()
    for event in events:
        ahead = (event.event_time_ms - start_ms) / 1000.0 - (clock() - began)
        if ahead > 0.001:
            sleep(ahead)
        yield event


def bounded(
    events: Iterable[Event],
    *,
    count: int | None,
    seconds: float | None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Event]:
    """Stop after `count` events or `seconds` of wall time, whichever comes first."""
    limited = islice(events, count) if count is not None else iter(events)
    if seconds is None:
        yield from limited
        return
    deadline = clock() + seconds
    for index, event in enumerate(limited):
        # Checking the clock every event costs more than the send; every 256 is plenty.
        if index & 0xFF == 0 and clock() >= deadline:
            return
        yield event


def send_all(
    producer: EventProducer,
    events: Iterable[Event],
    *,
    expected: int | None = None,
    progress: bool | None = None,
    label: str = "generate",
) -> SendSummary:
    """Send every event, showing progress on a terminal; flush before returning.

    `progress=None` shows the bar only when stderr is a terminal, so logs stay clean.
    """
    bar = tqdm(
        total=expected,
        unit="ev",
        unit_scale=True,
        desc=label,
        disable=(not sys.stderr.isatty()) if progress is None else not progress,
        mininterval=0.5,
        smoothing=0.1,
    )
    started = time.monotonic()
    sent = 0
    with bar:
        for event in events:
            producer.send(event)
            sent += 1
            if sent % PROGRESS_EVERY == 0:
                bar.update(PROGRESS_EVERY)
                bar.set_postfix(delivered=producer.delivered, refresh=False)
        bar.update(sent % PROGRESS_EVERY)
        producer.flush()
    return SendSummary(
        sent=sent,
        delivered=producer.delivered,
        failed=producer.failed,
        seconds=time.monotonic() - started,
    )
