"""Session inactivity logic: event-time watermark, idle advance, closing rule."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.logic.sessions import (
    PartitionClock,
    closing_score,
    latest_activity,
    session_has_ended,
)

GAP = 1_800_000
T0 = 1_760_000_000_000


def test_watermark_follows_event_time_while_events_flow() -> None:
    clock = PartitionClock(idle_grace_ms=5_000)
    clock.observe(T0, wall_ms=10_000)
    clock.observe(T0 + 60_000, wall_ms=10_100)
    clock.observe(T0 + 30_000, wall_ms=10_200)  # a late event does not move it back
    assert clock.watermark(wall_ms=10_300) == T0 + 60_000
    # Within the grace period it stays put, whatever the wall clock does.
    assert clock.watermark(wall_ms=15_200) == T0 + 60_000


def test_a_quiet_partition_advances_with_the_wall_clock_after_the_grace() -> None:
    clock = PartitionClock(idle_grace_ms=5_000)
    clock.observe(T0, wall_ms=1_000)
    assert clock.watermark(wall_ms=6_000) == T0
    assert clock.watermark(wall_ms=7_500) == T0 + 1_500
    # Half an hour of silence later, a session that ended at T0 is over.
    later = 1_000 + 5_000 + GAP + 1
    assert session_has_ended(T0, clock.watermark(later), GAP)


def test_a_session_ends_strictly_after_the_gap() -> None:
    assert not session_has_ended(T0, T0 + GAP, GAP)
    assert session_has_ended(T0, T0 + GAP + 1, GAP)
    assert closing_score(T0 + GAP + 1, GAP) == T0 + 1


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 10**6)), max_size=50))
def test_latest_activity_is_order_and_duplicate_insensitive(pairs: list[tuple[str, int]]) -> None:
    expected = {u: max(t for v, t in pairs if v == u) for u, _ in pairs}
    assert latest_activity(pairs) == expected
    assert latest_activity(list(reversed(pairs)) + pairs) == expected


@given(
    st.lists(st.integers(0, 10**7), min_size=1, max_size=30),
    st.integers(0, 10**7),
)
def test_replay_gives_the_same_watermark_whatever_the_wall_clock(
    times: list[int], jitter: int
) -> None:
    """Events arriving back to back: the watermark depends on event times only."""
    first, second = PartitionClock(idle_grace_ms=5_000), PartitionClock(idle_grace_ms=5_000)
    for index, event_time in enumerate(times):
        first.observe(event_time, wall_ms=index)
        second.observe(event_time, wall_ms=jitter + index)
    assert first.watermark(len(times)) == second.watermark(jitter + len(times)) == max(times)


def test_batches_share_the_turn_and_an_eviction_has_it_alone_and_goes_first() -> None:
    import asyncio  # noqa: PLC0415

    from streams.sessions import Turn  # noqa: PLC0415

    async def scenario() -> list[str]:
        turn = Turn()
        log: list[str] = []
        first_in = asyncio.Event()
        release_first = asyncio.Event()

        async def batch(name: str, hold: asyncio.Event | None = None) -> None:
            async with turn.batch():
                log.append(f"{name} in")
                if hold is not None:
                    first_in.set()
                    await hold.wait()
                await asyncio.sleep(0)
                log.append(f"{name} out")

        async def eviction() -> None:
            async with turn.eviction():
                log.append("evict in")
                await asyncio.sleep(0)
                log.append("evict out")

        one = asyncio.ensure_future(batch("b1", release_first))
        await first_in.wait()
        two = asyncio.ensure_future(batch("b2"))  # shares the turn with b1
        await asyncio.sleep(0.01)
        evict = asyncio.ensure_future(eviction())  # waits for b1
        await asyncio.sleep(0.01)
        three = asyncio.ensure_future(batch("b3"))  # comes after the waiting eviction
        await asyncio.sleep(0.01)
        release_first.set()
        await asyncio.gather(one, two, evict, three)
        return log

    log = asyncio.run(scenario())
    assert log.index("b2 in") < log.index("b1 out")  # two batches at once
    assert log.index("evict in") > max(log.index("b1 out"), log.index("b2 out"))
    assert log.index("evict out") < log.index("b3 in")  # the eviction was not starved
