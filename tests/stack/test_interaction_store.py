"""The interaction store end to end against the oracle: real broker, worker(s), Redis, CQL.

Hypothesis draws streams with duplicates, late events, session gaps and returning users;
the merged hot + cold state, read through the feed service's read client, must equal the
pure reference model (`schemas.hot_layout.reference_last_k`). Also across a worker
restart and with two workers in one group where one is killed mid-stream.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from schemas.events import Event, EventType
from schemas.hot_layout import active_key, reference_last_k
from streams.settings import Settings
from tests.conftest import TcpProxy, on_backend, wait_for
from tests.stack.oracle import (
    GAP_S,
    RELATIVE,
    TYPES,
    Store,
    all_cold,
    difference,
    random_events,
    send_phase,
    settle,
)


@dataclass
class Stream:
    """Events to send in phases; between phases every user's session ends."""

    phases: list[list[Event]]

    @property
    def events(self) -> list[Event]:
        return [event for phase in self.phases for event in phase]

    @property
    def users(self) -> set[str]:
        return {event.user_id for event in self.events}


_ids = itertools.count()


@st.composite
def streams(draw: st.DrawFn, users: int = 4, products: int = 8) -> Stream:
    """Phases of events for a few users: repeats, duplicates and late arrivals included.

    Times are offsets from the moment the phase is sent, so they pass the worker's
    sanity bounds; negative offsets are late events.
    """
    tag = f"h{next(_ids)}"
    phases = []
    for _ in range(draw(st.integers(2, 3))):
        rows = draw(
            st.lists(
                st.tuples(
                    st.integers(0, users - 1),
                    st.sampled_from(TYPES),
                    st.integers(0, products - 1),
                    st.integers(-5_000, 0),
                ),
                min_size=1,
                max_size=25,
            )
        )
        phases.append(rows)
    duplicate_every = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**16))
    rng = random.Random(seed)
    built: list[list[Event]] = []
    for number, rows in enumerate(phases):
        events = [
            Event(
                f"{tag}-{number}-{index}",
                f"{tag}-u{user}",
                event_type,
                RELATIVE + offset,  # made absolute when sent
                product_id=f"p{product}",
                order_id=f"o{index}" if event_type is EventType.ORDER else None,
            )
            for index, (user, event_type, product, offset) in enumerate(rows)
        ]
        events += events[::duplicate_every]  # same event ids again: redeliveries
        rng.shuffle(events)
        built.append(events)
    return Stream(built)


ORACLE_EXAMPLES = hypothesis_settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)


@ORACLE_EXAMPLES
@given(stream=streams())
def test_merged_state_equals_the_oracle_through_flushes_and_returns(
    stream: Stream,
    session_settings: Settings,
    store: Store,
    running_worker: Callable[[], str],
) -> None:
    check_against_oracle(stream, session_settings, store, running_worker)


@ORACLE_EXAMPLES
@given(stream=streams())
def test_merged_state_equals_the_oracle_on_a_redis_cluster(
    stream: Stream,
    cluster_settings: Settings,
    cluster_store: Store,
    running_cluster_worker: Callable[[], str],
) -> None:
    check_against_oracle(stream, cluster_settings, cluster_store, running_cluster_worker)


def check_against_oracle(
    stream: Stream, settings: Settings, store: Store, worker_log: Callable[[], str]
) -> None:
    sent: list[Event] = []
    for phase in stream.phases:
        sent += send_phase(settings, phase)
        settle(store, sent, worker_log)
        # Quiet time: the partition clocks advance, sessions end, users move to the
        # cold tier; the next phase brings them back (re-hydration).
        all_cold(store, {e.user_id for e in sent}, worker_log)
        settle(store, sent, worker_log)


@pytest.fixture
def running_worker(
    worker: Callable, session_settings: Settings, isolated_env: dict[str, str]
) -> Iterator[Callable[[], str]]:
    """One worker for all examples of a test (examples use distinct users)."""
    with worker(isolated_env) as running:
        yield lambda: running.log_text()[-3000:]


@pytest.fixture
def cluster_settings(session_settings: Settings) -> Settings:
    return on_backend(session_settings, "cluster", k=None)


@pytest.fixture
def cluster_store(cluster_settings: Settings) -> Iterator[Store]:
    reader = Store(cluster_settings)
    yield reader
    reader.close()


@pytest.fixture
def running_cluster_worker(
    worker: Callable, cluster_settings: Settings, isolated_env: dict[str, str]
) -> Iterator[Callable[[], str]]:
    """One worker on the Redis Cluster for all examples of the test."""
    env = {
        **isolated_env,
        "SIGNALS_REDIS_URL": cluster_settings.redis_url,
        "SIGNALS_REDIS_CLUSTER": "1",
    }
    with worker(env) as running:
        yield lambda: running.log_text()[-3000:]


def test_a_worker_restart_mid_stream_loses_and_duplicates_nothing(
    session_settings: Settings, isolated_env: dict[str, str], store: Store, worker: Callable
) -> None:
    rng = random.Random(5)
    users = [f"r-u{i}" for i in range(6)]

    def phase(number: int, size: int) -> list[Event]:
        return random_events(rng, f"r{number}", users, size)

    sent: list[Event] = []
    with worker(isolated_env) as first:
        sent += send_phase(session_settings, phase(0, 120))
        settle(store, sent, first.log_text)
        all_cold(store, set(users), first.log_text)
        sent += send_phase(session_settings, phase(1, 120))
        first.process.kill()  # no goodbye: whatever was not committed is re-read
        first.process.wait()
    sent += send_phase(session_settings, phase(2, 120))
    with worker(isolated_env) as second:
        settle(store, sent, second.log_text)
        all_cold(store, set(users), second.log_text)
        settle(store, sent, second.log_text)


def test_two_workers_one_killed_mid_stream_the_other_completes_the_state(
    session_settings: Settings, isolated_env: dict[str, str], store: Store, worker: Callable
) -> None:
    rng = random.Random(9)
    users = [f"t-u{i}" for i in range(16)]  # spread over the topic's partitions
    sent: list[Event] = []

    def burst(number: int, size: int) -> list[Event]:
        return random_events(rng, f"t{number}", users, size)

    with worker(isolated_env) as survivor:
        sent += send_phase(session_settings, burst(0, 200))
        settle(store, sent, survivor.log_text)
        # The second worker joins a running group, taking half the partitions.
        with worker(isolated_env) as victim:
            wait_for(
                lambda: "newly assigned partitions" in victim.log_text(),
                60,
                "the second worker to be assigned partitions",
                on_fail=victim.log_text,
            )
            for number in range(1, 4):
                sent += send_phase(session_settings, burst(number, 100))
                if number == 2:
                    victim.process.kill()  # mid-stream, without leaving the group
                    victim.process.wait()
        settle(store, sent, lambda: survivor.log_text() + victim.log_text())
        all_cold(store, set(users), survivor.log_text)
        settle(store, sent, survivor.log_text)


def test_the_read_client_answers_from_both_tiers_on_a_cluster_too(
    session_settings: Settings, isolated_env: dict[str, str], worker: Callable
) -> None:
    """The worker and the reader on the Redis Cluster: flush and re-hydration there."""
    cluster = on_backend(session_settings, "cluster", k=None)
    env = {**isolated_env, "SIGNALS_REDIS_URL": cluster.redis_url, "SIGNALS_REDIS_CLUSTER": "1"}
    store = Store(cluster)
    try:
        users = [f"c-u{i}" for i in range(8)]
        events = [
            Event(
                f"c-{i}",
                users[i % 8],
                TYPES[i % len(TYPES)],
                RELATIVE - i,
                product_id=f"p{i % 5}",
                order_id="o" if TYPES[i % len(TYPES)] is EventType.ORDER else None,
            )
            for i in range(80)
        ]
        returning = [
            Event(f"c2-{i}", user, EventType.VIEW, RELATIVE, product_id="p-new")
            for i, user in enumerate(users)
        ]
        with worker(env) as running:
            sent = send_phase(cluster, events)
            settle(store, sent, running.log_text)
            assert set(store.tiers(set(users)).values()) == {"hot"}
            all_cold(store, set(users), running.log_text)
            settle(store, sent, running.log_text)
            sent += send_phase(cluster, returning)
            settle(store, sent, running.log_text)
    finally:
        store.close()


def test_a_user_back_after_an_eviction_a_crash_interrupted_gets_their_history(
    session_settings: Settings, isolated_env: dict[str, str], store: Store, worker: Callable
) -> None:
    """An eviction deletes the user's keys, then leaves the active set; a crash between the
    two leaves the user indexed without keys, and the worker's hot check (the active set)
    says hot. Their next event must still bring their history back with it."""
    history = [
        Event(f"h-{i}", "h-u1", EventType.VIEW, RELATIVE - 10 + i, product_id=f"p{i}")
        for i in range(3)
    ]
    partitions: set[int] = set()
    with worker(isolated_env) as running:
        sent = send_phase(session_settings, history, on_delivery=partitions)
        settle(store, sent, running.log_text)
        all_cold(store, {"h-u1"}, running.log_text)
        [partition] = partitions
        # The interrupted eviction: keys gone (the flush did that), still in the active
        # set; with a score a minute ahead, so no flush pass completes the eviction first.
        with redis.Redis.from_url(session_settings.redis_url) as client:
            client.zadd(
                active_key(session_settings.redis_key_prefix, partition),
                {"h-u1": int(time.time() * 1000) + 60_000},
            )
        back = [Event("h-back", "h-u1", EventType.VIEW, RELATIVE, product_id="p-new")]
        sent += send_phase(session_settings, back)
        wait_for(
            lambda: store.tiers({"h-u1"}) == {"h-u1": "hot"},
            10,
            "the returning user to be hot",
            on_fail=running.log_text,
        )
        # Hot again, in one write with their history: never the new event alone.
        expected = reference_last_k(sent, session_settings.last_k)
        assert store.state({"h-u1"}) == expected, difference(store, expected, {"h-u1"})
        assert "re-hydrating them" in running.log_text()


def test_a_cold_tier_outage_blocks_flushes_and_returns_but_loses_nothing(
    session_settings: Settings, isolated_env: dict[str, str], store: Store, worker: Callable
) -> None:
    """The worker reaches CQL through a proxy the test cuts: no eviction without a
    confirmed cold write, no returning user applied without their history, and both
    complete by themselves when the cold tier is back."""
    proxy = TcpProxy(session_settings.cql_port)
    env = {**isolated_env, "SIGNALS_CQL_PORT": str(proxy.port)}
    first = [
        Event(f"o-{i}", f"o-u{i % 3}", EventType.VIEW, RELATIVE - i, product_id=f"p{i}")
        for i in range(9)
    ]
    try:
        with worker(env) as running:
            sent = send_phase(session_settings, first)
            settle(store, sent, running.log_text)
            all_cold(store, {e.user_id for e in first}, running.log_text)  # flushed once

            fresh = [Event("o-new", "o-u1", EventType.VIEW, RELATIVE, product_id="p-y")]
            proxy.cut()
            sent += send_phase(session_settings, fresh)
            # o-u1 is returning: re-hydration needs the cold tier, so the batch waits
            # (retrying). A user never stored would not: the cold-tier index says so.
            wait_for(
                lambda: "store unavailable" in running.log_text(),
                30,
                "the worker to log that the cold tier is unavailable",
                on_fail=running.log_text,
            )
            time.sleep(1.0)
            assert store.tiers({"o-u1"}) == {"o-u1": "cold"}, "applied without its history"
            proxy.restore()
            settle(store, sent, running.log_text)

            back = [
                Event(f"o-back-{user}", user, EventType.CLICK, RELATIVE, product_id="p-x")
                for user in ("o-u0", "o-u9")
            ]
            sent += send_phase(session_settings, back)
            wait_for(
                lambda: set(store.tiers({"o-u0", "o-u9"}).values()) == {"hot"},
                10,
                "both users to be hot again",
                on_fail=running.log_text,
            )
            proxy.cut()  # their sessions end while the cold tier is away: nobody is evicted
            time.sleep(GAP_S + 2.0)
            assert set(store.tiers({"o-u0", "o-u9"}).values()) == {"hot"}
            proxy.restore()
            all_cold(store, {"o-u0", "o-u9"}, running.log_text)
            settle(store, sent, running.log_text)
            assert running.process.poll() is None, "the worker must survive the outage"
    finally:
        proxy.close()
