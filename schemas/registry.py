"""Embedded schema registry: fixed, versioned integer ids for the Avro contracts.

The ids are part of the wire format (Confluent framing carries them in every message), so an
id, once published, always names the same schema: add new versions under new ids, never
renumber or edit a published `.avsc`. Schemas are read from `schemas/avro/` and parsed with
`fastavro.parse_schema` once, lazily on first use; importing this module does no I/O.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fastavro import parse_schema
from fastavro.types import Schema

AVRO_DIR = Path(__file__).resolve().parent / "avro"

#: Schema id -> `.avsc` file in `schemas/avro/`. Append only.
SCHEMA_FILES: MappingProxyType[int, str] = MappingProxyType(
    {1: "event-v1.avsc", 2: "trigger-v1.avsc", 3: "trigger-v2.avsc"}
)

#: The id producers write today.
CURRENT_EVENT_SCHEMA_ID = 1
#: The id rank-refresh triggers are written with (`schemas.triggers`).
CURRENT_TRIGGER_SCHEMA_ID = 3
#: Every trigger schema a reader accepts (older ones resolve to the current one).
TRIGGER_SCHEMA_IDS = frozenset({2, 3})


class UnknownSchema(LookupError):
    """No schema is registered under `schema_id`."""

    def __init__(self, schema_id: int) -> None:
        super().__init__(f"unknown schema id {schema_id}")
        self.schema_id = schema_id


def raw_schema_for(schema_id: int) -> dict[str, Any]:
    """The schema as written in its `.avsc` (plain JSON), e.g. for compatibility checks.

    Returns a fresh copy each call, so callers may modify it.
    """
    return json.loads(_raw_text(schema_id))  # type: ignore[no-any-return]


def schema_for(schema_id: int) -> Schema:
    """The parsed schema registered under `schema_id`; raises UnknownSchema."""
    parsed = _parsed().get(schema_id)
    if parsed is None:
        raise UnknownSchema(schema_id)
    return parsed


def registered() -> MappingProxyType[int, Schema]:
    """Every registered schema id with its parsed schema (read-only)."""
    return _parsed()


@cache
def _raw_text(schema_id: int) -> str:
    name = SCHEMA_FILES.get(schema_id)
    if name is None:
        raise UnknownSchema(schema_id)
    return (AVRO_DIR / name).read_text(encoding="utf-8")


@cache
def _parsed() -> MappingProxyType[int, Schema]:
    # Each file gets its own named-type namespace: versions reuse their record's name.
    return MappingProxyType(
        {
            schema_id: parse_schema(json.loads(_raw_text(schema_id)), named_schemas={})
            for schema_id in SCHEMA_FILES
        }
    )
