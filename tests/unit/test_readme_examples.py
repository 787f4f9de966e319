"""The README's event examples are valid events, one per type: the docs cannot drift."""

import json

from schemas.codec import decode_event, encode_event
from schemas.events import Event, EventType
from tests.conftest import ROOT


def test_every_readme_example_is_a_valid_event_and_every_type_has_one() -> None:
    lines = [
        line
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.startswith('{"event_id"')
    ]
    events = [Event.from_dict(json.loads(line)) for line in lines]
    assert {event.event_type for event in events} == set(EventType)
    for event in events:
        assert decode_event(encode_event(event)) == event
