"""The replay contract: which event times a range selects, the file names and the manifest.

Analysts, notebooks and the training job read this layout directly, so it is pinned here.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from schemas.events import Event
from schemas.registry import CURRENT_EVENT_SCHEMA_ID, raw_schema_for
from schemas.replay_layout import (
    MANIFEST_VERSION,
    PARQUET_SCHEMA,
    Chunk,
    EventTimeRange,
    Manifest,
    parse_offsets,
    parse_part_name,
    parse_partitions,
    part_name,
    utc_date,
)

START_MS = 1_760_000_000_000
END_MS = START_MS + 3_600_000
#: 2024-01-01T00:00:00Z.
MIDNIGHT_MS = 1_704_067_200_000
KAFKA_COLUMNS = ["kafka_partition", "kafka_offset", "kafka_timestamp_ms"]


def chunk(partition: int, from_offset: int, to_offset: int, selected: int = 0) -> Chunk:
    """A completed chunk whose single file is named like the replay names it."""
    return Chunk(
        partition=partition,
        from_offset=from_offset,
        to_offset=to_offset,
        files=[
            f"date=2024-01-01/event_type=view/{part_name(partition, from_offset, to_offset - 1)}"
        ],
        selected=selected,
        outside=1,
        errors=2,
    )


# --- EventTimeRange ---------------------------------------------------------------------


def test_a_range_includes_its_start_and_excludes_its_end() -> None:
    """Half-open so consecutive ranges neither overlap nor leave a gap."""
    selected = EventTimeRange(START_MS, END_MS)
    assert selected.contains(START_MS)
    assert selected.contains(END_MS - 1)
    assert not selected.contains(END_MS)
    assert not selected.contains(START_MS - 1)


def test_consecutive_ranges_select_each_time_exactly_once() -> None:
    """Splitting a replay into ranges must not drop or duplicate an event."""
    first = EventTimeRange(START_MS, START_MS + 10)
    second = EventTimeRange(START_MS + 10, START_MS + 20)
    for time_ms in range(START_MS - 2, START_MS + 22):
        expected = START_MS <= time_ms < START_MS + 20
        assert (first.contains(time_ms) + second.contains(time_ms) == 1) is expected


def test_a_range_whose_end_equals_its_start_is_rejected_as_empty() -> None:
    """An empty range would silently replay nothing."""
    with pytest.raises(ValueError, match="empty"):
        EventTimeRange(START_MS, START_MS)


def test_a_range_whose_end_is_before_its_start_is_rejected() -> None:
    """Swapped bounds are a distinct mistake and get their own message."""
    with pytest.raises(ValueError, match="before start"):
        EventTimeRange(START_MS, START_MS - 1)


def test_a_one_millisecond_range_is_allowed() -> None:
    """The smallest non-empty range holds exactly its start."""
    single = EventTimeRange(START_MS, START_MS + 1)
    assert single.contains(START_MS)
    assert not single.contains(START_MS + 1)


def test_the_scan_window_widens_the_range_by_skew_before_and_lateness_after() -> None:
    """Broker time can trail event time by the skew and lead it by the lateness."""
    selected = EventTimeRange(START_MS, END_MS)
    assert selected.scan_window(future_skew_ms=60_000, lateness_ms=3_600_000) == (
        START_MS - 60_000,
        END_MS + 3_600_000,
    )
    assert selected.scan_window(0, 0) == (START_MS, END_MS)


# --- utc_date ---------------------------------------------------------------------------


def test_the_date_folder_is_the_utc_day_of_the_event_time() -> None:
    """Exactly midnight starts the new day; one millisecond before is still the old one."""
    assert utc_date(MIDNIGHT_MS) == "2024-01-01"
    assert utc_date(MIDNIGHT_MS - 1) == "2023-12-31"
    assert utc_date(MIDNIGHT_MS + 86_400_000 - 1) == "2024-01-01"
    assert utc_date(MIDNIGHT_MS + 86_400_000) == "2024-01-02"


# --- part file names --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("partition", "first", "last"),
    [(0, 0, 0), (3, 100, 199), (9999, 10**19, 10**20 - 1), (12, 7, 7)],
)
def test_a_part_name_parses_back_to_its_partition_and_offsets(
    partition: int, first: int, last: int
) -> None:
    """Resuming finds a chunk's files by parsing their names."""
    name = part_name(partition, first, last)
    assert name.startswith("part-p") and name.endswith(".parquet")
    assert parse_part_name(name) == (partition, first, last)


def test_part_names_sort_by_partition_then_offset() -> None:
    """Zero padding makes a plain listing come out in offset order (9 before 10)."""
    keys = [(0, 9, 9), (0, 10, 99), (0, 100, 100), (0, 1_000, 5_000), (1, 0, 0), (10, 2, 3)]
    names = [part_name(*key) for key in keys]
    assert sorted(names) == names
    assert sorted(reversed(names)) == names


@pytest.mark.parametrize(
    "name",
    [
        "_manifest.json",
        "part-p0001-00000000000000000000-00000000000000000009.jsonl",
        "part-p1-0-9.parquet",
        "part-p0001-00000000000000000000-00000000000000000009.parquet.tmp",
        "xpart-p0001-00000000000000000000-00000000000000000009.parquet",
        "",
    ],
)
def test_other_names_are_not_part_files(name: str) -> None:
    """Temporary files and errors must never be mistaken for data of a chunk."""
    assert parse_part_name(name) is None


# --- parse_offsets ----------------------------------------------------------------------


def test_offsets_parse_into_half_open_ranges_per_partition() -> None:
    """TO is excluded, matching how the chunk records `[from, to)`."""
    assert parse_offsets("0:100-200,3:0-50") == {0: (100, 200), 3: (0, 50)}
    assert parse_offsets(" 7:1-2 ") == {7: (1, 2)}


def test_an_empty_offset_range_is_rejected() -> None:
    """FROM == TO selects nothing, which is always a typo."""
    with pytest.raises(ValueError, match="empty"):
        parse_offsets("0:5-5")
    with pytest.raises(ValueError, match="empty"):
        parse_offsets("0:6-5")


def test_a_partition_given_twice_is_rejected() -> None:
    """Two ranges for one partition are ambiguous: which one was meant?"""
    with pytest.raises(ValueError, match="twice"):
        parse_offsets("0:1-2,0:3-4")


@pytest.mark.parametrize("text", ["", "garbage", "0:5", "0-5", "a:1-2", "0:1-2,", "-1:0-5"])
def test_malformed_offsets_are_rejected(text: str) -> None:
    """The message says what the expected shape is."""
    with pytest.raises(ValueError, match="PARTITION:FROM-TO"):
        parse_offsets(text)


# --- parse_partitions -------------------------------------------------------------------


def test_partitions_parse_singles_and_inclusive_ranges_sorted() -> None:
    """A range like 5-7 includes both ends (unlike offsets)."""
    assert parse_partitions("0,2,5-7") == [0, 2, 5, 6, 7]
    assert parse_partitions("5-7,1") == [1, 5, 6, 7]
    assert parse_partitions("3,1-3, 2") == [1, 2, 3]
    assert parse_partitions("4-4") == [4]


def test_a_backwards_partition_range_is_rejected() -> None:
    """7-5 is empty, not 5-7 silently reversed."""
    with pytest.raises(ValueError, match="empty partition range"):
        parse_partitions("7-5")


@pytest.mark.parametrize("text", ["", "x", "1,", "1-", "-1", "1-2-3", "1;2"])
def test_malformed_partitions_are_rejected(text: str) -> None:
    """Anything but numbers and ranges is an error, not a guess."""
    with pytest.raises(ValueError, match="is not a partition"):
        parse_partitions(text)


# --- Manifest ---------------------------------------------------------------------------


def sample_manifest() -> Manifest:
    """Two partitions with two chunks on partition 0."""
    return Manifest(
        request={"start_ms": START_MS, "end_ms": END_MS, "partitions": [0, 1, 2]},
        chunks=[chunk(0, 100, 200, selected=5), chunk(0, 200, 300, selected=7), chunk(1, 0, 50)],
        finished=False,
    )


def test_a_manifest_survives_a_json_round_trip() -> None:
    """The manifest is the only record of progress between runs."""
    manifest = sample_manifest()
    text = manifest.to_json()
    assert json.loads(text)["version"] == MANIFEST_VERSION
    assert Manifest.from_json(text) == manifest
    finished = Manifest(request={}, chunks=[], finished=True)
    assert Manifest.from_json(finished.to_json()) == finished


def test_resuming_continues_after_each_partitions_last_completed_chunk() -> None:
    """Every record lands in exactly one file: nothing before `to_offset` is redone."""
    manifest = sample_manifest()
    assert manifest.resume_offsets({0: 100, 1: 0, 2: 40}) == {0: 300, 1: 50, 2: 40}


def test_resuming_ignores_chunks_of_partitions_not_requested() -> None:
    """Only the requested partitions are resumed; their order of chunks does not matter."""
    manifest = sample_manifest()
    manifest.chunks.reverse()
    assert manifest.resume_offsets({1: 10}) == {1: 50}
    assert manifest.resume_offsets({}) == {}
    assert Manifest(request={}).resume_offsets({0: 5}) == {0: 5}


def test_files_are_every_completed_chunks_files() -> None:
    """Files no completed chunk names are the interrupted chunk's, to delete."""
    manifest = sample_manifest()
    assert manifest.files() == {
        f"date=2024-01-01/event_type=view/{part_name(0, 100, 199)}",
        f"date=2024-01-01/event_type=view/{part_name(0, 200, 299)}",
        f"date=2024-01-01/event_type=view/{part_name(1, 0, 49)}",
    }
    assert Manifest(request={}).files() == set()


def test_totals_add_up_the_counts_per_partition() -> None:
    """The summary reports per partition, over all its chunks."""
    assert sample_manifest().totals() == {
        0: {"selected": 12, "outside": 2, "errors": 4},
        1: {"selected": 0, "outside": 1, "errors": 2},
    }


@pytest.mark.parametrize("version", [MANIFEST_VERSION + 1, 0, None, "1"])
def test_a_manifest_of_another_version_is_refused(version: object) -> None:
    """Resuming from a layout this code does not know could mix two layouts."""
    data = json.loads(sample_manifest().to_json())
    data["version"] = version
    with pytest.raises(ValueError, match="manifest version"):
        Manifest.from_json(json.dumps(data))


def test_a_manifest_without_a_version_is_refused() -> None:
    """A file that is not a manifest at all must not be taken for one."""
    data = json.loads(sample_manifest().to_json())
    del data["version"]
    with pytest.raises(ValueError, match="manifest version"):
        Manifest.from_json(json.dumps(data))


# --- PARQUET_SCHEMA ---------------------------------------------------------------------


def test_the_parquet_columns_are_the_event_fields_without_the_folder_column() -> None:
    """`event_type` lives in the folder name; the Kafka position follows the event."""
    names = PARQUET_SCHEMA.names
    event_names = [f.name for f in dataclasses.fields(Event) if f.name != "event_type"]
    assert names[-3:] == KAFKA_COLUMNS
    assert sorted(names[:-3]) == sorted(event_names)
    assert len(names) == len(set(names))


def test_the_parquet_columns_follow_the_avro_field_order() -> None:
    """The schema is the Avro record's, so its order is the `.avsc`'s, not the dataclass's."""
    avro_fields = raw_schema_for(CURRENT_EVENT_SCHEMA_ID)["fields"]
    avro_names = [f["name"] for f in avro_fields if f["name"] != "event_type"]
    assert PARQUET_SCHEMA.names == [*avro_names, *KAFKA_COLUMNS]


def test_required_parquet_columns_are_the_non_optional_event_fields() -> None:
    """Only fields every event has, and the Kafka position, are non-nullable."""
    required = {f.name for f in PARQUET_SCHEMA if not f.nullable}
    assert required == {
        "event_id",
        "user_id",
        "event_time_ms",
        "platform",
        "language",
        *KAFKA_COLUMNS,
    }
