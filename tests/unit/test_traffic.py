"""The realistic traffic generator: determinism, session structure, delivery defects,
steady rate, and latent preferences that behaviour reveals."""

from __future__ import annotations

import dataclasses
import itertools
import json
import uuid
from collections import Counter, defaultdict

import pytest

from jobs.traffic import (
    Catalog,
    TrafficParams,
    TrafficSimulation,
    UserProfile,
    default_catalog,
    load_catalog,
    load_params,
    load_users,
    simulate,
    user_id,
    user_index,
    user_profile,
    write_traffic,
)
from schemas.events import PRODUCT_EVENT_TYPES, Event, EventType, validate

START_MS = 1_760_000_000_000
#: Small enough to be fast, with a short gap so users come back within minutes.
SMALL = TrafficParams(
    seed=3,
    products=2_000,
    categories=40,
    sellers=200,
    users=400,
    rate=200.0,
    session_gap_ms=60_000,
)


def take(params: TrafficParams, count: int, start_ms: int = START_MS) -> list[Event]:
    return list(itertools.islice(simulate(params, start_ms), count))


@pytest.fixture(scope="module")
def stream() -> list[Event]:
    """About ten simulated minutes of SMALL traffic, shared by the read-only tests."""
    return take(SMALL, 120_000)


def first_occurrences(events: list[Event]) -> list[Event]:
    seen: set[str] = set()
    unique = []
    for event in events:
        if event.event_id not in seen:
            seen.add(event.event_id)
            unique.append(event)
    return unique


def settled(events: list[Event]) -> list[Event]:
    """First occurrences, without the tail whose held-back events were not emitted yet."""
    unique = first_occurrences(events)
    cutoff = max(e.event_time_ms for e in unique) - SMALL.out_of_order_delay_ms[1]
    return [e for e in unique if e.event_time_ms <= cutoff]


def serialised(events: list[Event]) -> bytes:
    return b"\n".join(json.dumps(e.to_dict(), sort_keys=True).encode() for e in events)


# --- determinism -------------------------------------------------------------------


def test_same_params_give_the_same_bytes_and_another_seed_does_not() -> None:
    first = serialised(take(SMALL, 5_000))
    assert first == serialised(take(SMALL, 5_000))
    assert first != serialised(take(dataclasses.replace(SMALL, seed=4), 5_000))
    # The start only shifts time; it does not change who does what.
    shifted = take(SMALL, 200, start_ms=START_MS + 1_000)
    original = take(SMALL, 200)
    assert [e.event_time_ms - 1_000 for e in shifted] == [e.event_time_ms for e in original]
    assert [e.product_id for e in shifted] == [e.product_id for e in original]
    # ... but it is new traffic: other event ids (the features would drop repeats).
    assert not {e.event_id for e in shifted} & {e.event_id for e in original}
    assert [e.event_id for e in take(SMALL, 200)] == [e.event_id for e in original]


# --- every event is usable -----------------------------------------------------------


def test_every_event_validates_and_matches_the_catalog(stream: list[Event]) -> None:
    catalog = {p.product_id: p for p in default_catalog(SMALL).products}
    for event in stream[::7]:  # construction validated them all; spot-check the rest
        validate(event)
        assert Event.from_dict(json.loads(json.dumps(event.to_dict()))) == event
        assert str(uuid.UUID(event.event_id)) == event.event_id
        assert uuid.UUID(event.event_id).version == 4
    for event in stream:
        user_index(event.user_id)  # a generated id
        if event.event_type is EventType.APP_OPEN:
            assert event.product_id is None
            continue
        product = catalog[event.product_id or ""]
        assert (event.category_id, event.price_paise) == (product.category_id, product.price_paise)
        assert event.feed_position is not None and event.feed_position >= 0
    counts = Counter(e.event_type for e in stream)
    assert set(counts) == set(EventType)
    assert counts[EventType.VIEW] > counts[EventType.CLICK] > counts[EventType.ADD_TO_CART]
    assert counts[EventType.ADD_TO_CART] > counts[EventType.ORDER]


def test_orders_carry_an_order_id_and_quantity(stream: list[Event]) -> None:
    orders = [e for e in stream if e.event_type is EventType.ORDER]
    assert len(orders) > 50
    assert all(e.order_id and e.quantity is not None and 1 <= e.quantity <= 3 for e in orders)
    assert len({e.order_id for e in orders}) == len(first_occurrences(orders))
    others = [e for e in stream if e.event_type is not EventType.ORDER]
    assert all(e.order_id is None for e in others)


def test_sessions_browse_the_feed_and_act_only_on_what_they_saw(stream: list[Event]) -> None:
    by_user: dict[str, list[Event]] = defaultdict(list)
    for event in settled(stream):
        by_user[event.user_id].append(event)
    for events in by_user.values():
        events.sort(key=lambda e: e.event_time_ms)
        viewed: set[str] = set()
        carted: set[str] = set()
        for event in events:
            if event.event_type is EventType.APP_OPEN:
                viewed, carted = set(), set()
            elif event.event_type is EventType.VIEW:
                viewed.add(event.product_id or "")
            elif event.event_type is EventType.REMOVE_FROM_CART:
                # Sessions under way at the start had a cart we did not see being filled.
                if carted:
                    assert event.product_id in carted
            else:
                if viewed:
                    assert event.product_id in viewed, event
                if event.event_type is EventType.ADD_TO_CART:
                    carted.add(event.product_id or "")


# --- sessions and users ----------------------------------------------------------------


def test_a_users_sessions_are_separated_by_more_than_the_gap(stream: list[Event]) -> None:
    by_user: dict[str, list[Event]] = defaultdict(list)
    for event in settled(stream):
        by_user[event.user_id].append(event)
    returning = 0
    for events in by_user.values():
        events.sort(key=lambda e: e.event_time_ms)
        for before, after in itertools.pairwise(events):
            pause = after.event_time_ms - before.event_time_ms
            if after.event_type is EventType.APP_OPEN:
                assert pause > SMALL.session_gap_ms
                returning += 1
            else:
                assert 0 < pause <= SMALL.max_think_ms
    assert returning > 100  # the check above ran on many returning users


def test_a_small_population_grows_beyond_its_size_instead_of_breaking_the_gap(
    stream: list[Event],
) -> None:
    indices = {user_index(e.user_id) for e in stream}
    assert any(index < SMALL.users for index in indices)
    assert any(index >= SMALL.users for index in indices)


def test_index_order_is_activity_order() -> None:
    params = dataclasses.replace(SMALL, users=5_000)
    simulation = TrafficSimulation(params, START_MS)
    events = list(itertools.islice(simulation, 20_000))
    appeared = {user_index(e.user_id) for e in events}
    # A population this size rarely runs out of idle users.
    assert sum(i >= params.users for i in appeared) < 0.05 * len(appeared)
    # users_seen also counts sessions whose first event is still pending.
    assert appeared <= {user_index(u.user_id) for u in simulation.users_seen()}
    busy = sum(i in appeared for i in range(50))
    quiet = sum(i in appeared for i in range(params.users - 50, params.users))
    assert busy > 40 and busy > 3 * quiet, (busy, quiet)


def test_users_are_derived_lazily_and_deterministically() -> None:
    profile = user_profile(SMALL, 42)
    assert profile == user_profile(SMALL, 42)
    assert profile.user_id == user_id(42) == "u0000042"
    assert user_index("u0000042") == 42
    assert SMALL.min_favourite_categories <= len(profile.preferences)
    assert len(profile.preferences) <= SMALL.max_favourite_categories
    weights = [w for _, w in profile.preferences]
    assert weights == sorted(weights, reverse=True)
    assert sum(weights) == pytest.approx(1.0)
    assert profile.affinity(profile.top_category) == weights[0]
    assert profile.affinity("no-such-category") == 0.0
    assert profile.language in SMALL.languages
    with pytest.raises(ValueError, match="not a generated user id"):
        user_index("alice")


# --- rate and delivery defects --------------------------------------------------------------


def test_the_stream_runs_at_the_configured_rate_from_the_first_second() -> None:
    params = dataclasses.replace(SMALL, rate=500.0)
    events = take(params, 45_000)
    per_window = Counter((e.event_time_ms - START_MS) // 10_000 for e in events)
    # Warm start: the first ten seconds are as busy as later ones, not a ramp-up.
    for window in range(8):
        assert per_window[window] == pytest.approx(5_000, rel=0.15), (window, per_window)
    times = [e.event_time_ms for e in events]
    assert min(times) >= START_MS


def test_duplicates_and_late_events_come_in_the_configured_shares(stream: list[Event]) -> None:
    originals: dict[str, int] = {}
    duplicates = late = 0
    newest = 0
    for position, event in enumerate(stream):
        if event.event_id in originals:
            duplicates += 1
            # The same event again, a little later in the stream.
            assert stream[originals[event.event_id]] == event
            assert newest - event.event_time_ms <= SMALL.duplicate_delay_ms[1]
            continue
        originals[event.event_id] = position
        if event.event_time_ms < newest:
            late += 1
            assert newest - event.event_time_ms <= SMALL.out_of_order_delay_ms[1]
        newest = max(newest, event.event_time_ms)
    unique = len(originals)
    assert 0.0035 < duplicates / unique < 0.0065
    assert 0.007 < late / unique < 0.013


def test_without_defects_the_stream_is_in_event_time_order_and_unique() -> None:
    clean = dataclasses.replace(SMALL, duplicate_share=0.0, out_of_order_share=0.0)
    events = take(clean, 20_000)
    times = [e.event_time_ms for e in events]
    assert times == sorted(times)
    assert len({e.event_id for e in events}) == len(events)


# --- latent preferences are recoverable ------------------------------------------------------


def test_clicks_reveal_each_users_top_category(stream: list[Event]) -> None:
    profiles: dict[str, UserProfile] = {}
    views: Counter[bool] = Counter()
    clicks: Counter[bool] = Counter()
    for event in first_occurrences(stream):
        if event.event_type not in (EventType.VIEW, EventType.CLICK):
            continue
        profile = profiles.get(event.user_id)
        if profile is None:
            profile = profiles[event.user_id] = user_profile(SMALL, user_index(event.user_id))
        on_top = event.category_id == profile.top_category
        (views if event.event_type is EventType.VIEW else clicks)[on_top] += 1
    top_rate = clicks[True] / views[True]
    other_rate = clicks[False] / views[False]
    print(f"clicks per view: top category {top_rate:.3f}, others {other_rate:.3f}")
    assert top_rate > 3 * other_rate, (top_rate, other_rate)


def test_first_half_clicks_predict_second_half_better_than_popularity(
    stream: list[Event],
) -> None:
    clicks_by_user: dict[str, list[Event]] = defaultdict(list)
    for event in first_occurrences(stream):
        if event.event_type is EventType.CLICK:
            clicks_by_user[event.user_id].append(event)
    popular: Counter[str] = Counter()
    halves = []
    for clicks in clicks_by_user.values():
        if len(clicks) < 6:
            continue
        clicks.sort(key=lambda e: e.event_time_ms)
        middle = len(clicks) // 2
        first = Counter(e.category_id or "" for e in clicks[:middle])
        popular.update(first)
        halves.append((first, [e.category_id for e in clicks[middle:]]))
    assert len(halves) >= 100
    global_top = {c for c, _ in popular.most_common(3)}
    personal_hits = global_hits = total = 0
    for first, second in halves:
        # The user's own top 3 categories, ties and gaps filled by global popularity.
        ranked = sorted(popular, key=lambda c: (-first[c], -popular[c], c))[:3]
        for category in second:
            personal_hits += category in ranked
            global_hits += category in global_top
            total += 1
    personal, global_ = personal_hits / total, global_hits / total
    print(f"hit rate @3: own first-half clicks {personal:.3f}, global popularity {global_:.3f}")
    assert personal > 1.5 * global_ and personal > 0.5, (personal, global_)


# --- catalog, params and the written data set ----------------------------------------------


def test_catalog_popularity_is_heavy_tailed_and_covers_every_category() -> None:
    catalog = Catalog.build(SMALL)
    assert catalog == Catalog.build(SMALL)
    products = catalog.products
    assert len(products) == SMALL.products
    assert len({p.product_id for p in products}) == len(products)
    assert {p.category_id for p in products} == {f"c{i:04d}" for i in range(SMALL.categories)}
    shares = sorted((p.popularity for p in products), reverse=True)
    assert sum(shares) == pytest.approx(1.0)
    assert sum(shares[: len(shares) // 100]) > 0.3  # top 1% of products: a third of the feed
    assert all(p.price_paise > 0 and p.created_ms < SMALL.catalog_epoch_ms for p in products)
    assert all(p.language in SMALL.languages for p in products)


def test_params_round_trip_through_json_and_reject_nonsense() -> None:
    assert TrafficParams.from_json(SMALL.to_json()) == SMALL
    assert TrafficParams.from_json(TrafficParams().to_json()) == TrafficParams()
    with pytest.raises(ValueError, match="unknown traffic parameters: ratee"):
        TrafficParams.from_json('{"ratee": 5}')
    with pytest.raises(ValueError, match="rate must be a positive number"):
        TrafficParams(rate=0)
    with pytest.raises(ValueError, match="max_think_ms must be below session_gap_ms"):
        TrafficParams(session_gap_ms=10_000)


def test_a_written_data_set_loads_back_unchanged(tmp_path) -> None:
    simulation = TrafficSimulation(SMALL, START_MS)
    events = list(itertools.islice(simulation, 3_000))
    users = simulation.users_seen()
    assert {e.user_id for e in events} <= {u.user_id for u in users}
    write_traffic(tmp_path, SMALL, simulation.catalog, users)
    assert load_params(tmp_path) == SMALL
    assert load_catalog(tmp_path) == simulation.catalog
    assert load_users(tmp_path) == users
    # Only the strongest preferences when asked.
    write_traffic(tmp_path / "top1", SMALL, simulation.catalog, users, top_preferences=1)
    assert [u.preferences for u in load_users(tmp_path / "top1")] == [
        u.preferences[:1] for u in users
    ]


def test_product_event_types_all_occur(stream: list[Event]) -> None:
    assert {e.event_type for e in stream} >= PRODUCT_EVENT_TYPES
