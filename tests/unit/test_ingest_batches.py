"""Merging fetched batches that waited while another was applied."""

from schemas.events import EventType
from schemas.hot_layout import Interaction
from streams.app import Prepared


def test_absorb_keeps_fetch_order_and_the_newest_activity_per_user() -> None:
    first = Prepared(
        now_ms=10,
        interactions=[Interaction("u1", EventType.VIEW, "p1", 5)],
        activity={0: {"u1": 5}, 1: {"u2": 9}},
        size=3,
    )
    later = Prepared(
        now_ms=12,
        interactions=[Interaction("u1", EventType.CLICK, "p1", 4)],
        activity={0: {"u1": 4, "u3": 7}, 2: {"u4": 1}},
        size=2,
    )
    first.absorb(later)
    assert first.now_ms == 12
    assert first.size == 5
    assert [i.event_type for i in first.interactions] == [EventType.VIEW, EventType.CLICK]
    assert first.activity == {0: {"u1": 5, "u3": 7}, 1: {"u2": 9}, 2: {"u4": 1}}
