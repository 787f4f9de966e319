"""The fenced counter plan (`schemas.feature_layout`): a batch applied again, in part or
whole, changes nothing; lateness is decided as an in-order replay of each partition."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import EventType
from schemas.feature_layout import (
    LATE_FIELD,
    PRODUCT_TILE_WIDTHS,
    USER_TILE_WIDTHS,
    CountedEvent,
    count_field,
    plan_counters,
    product_features_key,
    user_features_key,
)
from schemas.hot_layout import hot_key
from streams.logic.features import (
    PRODUCT_WINDOWS,
    WINDOWS,
    replayed_counts,
    stored_count,
    window_count,
)

T0 = 1_760_000_000_000
LATENESS = 60_000


def test_the_windows_and_the_layout_share_their_tile_widths() -> None:
    from schemas.feature_layout import TILE_WIDTHS  # noqa: PLC0415

    assert [w.tile_ms for w in WINDOWS] == [TILE_WIDTHS[n] for n in USER_TILE_WIDTHS]
    assert [w.tile_ms for w in PRODUCT_WINDOWS] == [TILE_WIDTHS[n] for n in PRODUCT_TILE_WIDTHS]


def test_a_users_features_share_the_slot_of_their_last_k() -> None:
    from redis.crc import key_slot  # noqa: PLC0415

    assert key_slot(user_features_key("ix", "u42").encode()) == key_slot(
        hot_key("ix", "u42", EventType.VIEW).encode()
    )


def stream_of(draws: list[tuple[int, int, int, int]]) -> list[CountedEvent]:
    """Events on 2 partitions, offsets in read order per partition."""
    offsets = {0: 0, 1: 0}
    types = [EventType.VIEW, EventType.CLICK, EventType.APP_OPEN, EventType.ORDER]
    events = []
    for user, kind, shift, partition in draws:
        offsets[partition] += 1
        event_type = types[kind]
        events.append(
            CountedEvent(
                f"u{user}-{partition}",  # a user lives on one partition
                event_type,
                T0 + shift,
                None if event_type is EventType.APP_OPEN else f"p{user % 3}",
                partition,
                offsets[partition],
            )
        )
    return events


def applied(batches: list[list[CountedEvent]]) -> tuple[dict[str, dict[str, int]], int]:
    """Every batch planned against the watermarks so far and applied like the script."""
    store: dict[str, dict[str, int]] = {}
    fences: dict[tuple[str, int], int | None] = {}
    watermarks: dict[int, int] = {}
    late = 0
    for batch in batches:
        plan = plan_counters(batch, "ix", watermarks, LATENESS)
        late += plan.too_late
        for write in plan.writes:
            counters = store.setdefault(write.key, {})
            fences[(write.key, write.partition)] = write.apply_above(
                fences.get((write.key, write.partition)), counters
            )
        for event in batch:
            watermarks[event.partition] = max(
                watermarks.get(event.partition, 0), event.event_time_ms
            )
    return store, late


draws = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 3), st.integers(0, 600_000), st.integers(0, 1)),
    max_size=60,
)


@settings(max_examples=200)
@given(draws, st.lists(st.integers(1, 10), min_size=1, max_size=12), st.randoms())
def test_re_reading_batches_in_part_or_whole_counts_nothing_twice(
    picked: list[tuple[int, int, int, int]], sizes: list[int], rnd
) -> None:
    events = stream_of(picked)
    once, late_once = applied([events])
    # The same stream in other batch sizes, each batch read again from an earlier point
    # (a crash before the commit), as a consumer resuming from a committed offset does.
    batches, start = [], 0
    while start < len(events):
        size = sizes[len(batches) % len(sizes)]
        batches.append(events[start : start + size])
        back = rnd.randrange(0, size + 1)
        if back:
            batches.append(events[max(0, start + size - back) : start + size])
        start += size
    again, _ = applied(batches)
    assert {k: {f: n for f, n in v.items() if n} for k, v in again.items()} == {
        k: {f: n for f, n in v.items() if n} for k, v in once.items()
    }
    # And the counts are the in-order replay's: each event not too late, once per width.
    expected: dict[str, dict[str, int]] = {}
    newest: dict[int, int] = {}
    late = 0
    for event in events:
        mark = newest.get(event.partition)
        newest[event.partition] = max(mark or event.event_time_ms, event.event_time_ms)
        if mark is not None and event.event_time_ms < mark - LATENESS:
            late += 1
            continue
        user = expected.setdefault(user_features_key("ix", event.user_id), {})
        for width in USER_TILE_WIDTHS:
            name = count_field(event.event_type, width, event.event_time_ms)
            user[name] = user.get(name, 0) + 1
        if event.product_id is not None:
            product = expected.setdefault(product_features_key("ix", event.product_id), {})
            for width in PRODUCT_TILE_WIDTHS:
                name = count_field(event.event_type, width, event.event_time_ms)
                product[name] = product.get(name, 0) + 1
    tiles_only = {k: {f: n for f, n in v.items() if f != LATE_FIELD} for k, v in once.items()}
    assert {k: v for k, v in tiles_only.items() if v} == expected
    assert sum(v.get(LATE_FIELD, 0) for v in once.values()) == late
    assert late_once == late


@settings(max_examples=150)
@given(draws, st.lists(st.integers(1, 10), min_size=1, max_size=12), st.randoms(), st.data())
def test_online_counts_equal_the_offline_replay_at_any_tile_end(
    picked: list[tuple[int, int, int, int]], sizes: list[int], rnd, data
) -> None:
    """Parity in pure form: the counters written batch by batch (with re-reads), read as
    the online store reads them, equal the offline replay of the log filtered by the
    window definition, at T = the last millisecond of a tile of every width (no stored
    event can then be later than T in T's tile), with an event placed exactly at T."""
    hour = 3_600_000
    hour_start = T0 - T0 % hour
    at = hour_start + data.draw(st.integers(0, 1)) * hour + hour - 1
    events = stream_of(picked)
    events.append(CountedEvent("u-at-t", EventType.CLICK, at, "p0", 0, 10_000))
    batches, start = [], 0
    while start < len(events):
        size = sizes[len(batches) % len(sizes)]
        batches.append(events[start : start + size])
        if rnd.random() < 0.3:
            batches.append(events[start : start + size])  # read again whole
        start += size
    store, _ = applied(batches)
    counted, late_offline = replayed_counts(events, "ix", LATENESS)
    assert sum(hash_.get(LATE_FIELD, 0) for hash_ in store.values()) == late_offline
    for key, rows in counted.items():
        windows = WINDOWS if ":f:u:" in key else PRODUCT_WINDOWS
        for event_type in {t for t, _ in rows}:
            for window in windows:
                times = [t for kind, t in rows if kind is event_type]
                online = stored_count(store.get(key, {}), event_type, window, at)
                assert online == window_count(window, times, at), (key, event_type, window)
