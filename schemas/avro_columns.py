"""Many framed Avro events decoded at once into Arrow columns, with NumPy: the replay's
fast path to Parquet.

Decoding record by record (`schemas.wire.decode_event_avro`, then building an `Event`)
costs a few microseconds an event in Python, several times what reading the record from
Kafka costs. Here a batch's values are joined into one byte buffer and every field is
decoded for all records at once: a varint is read for every record in a handful of
vectorised steps, strings are gathered into Arrow's layout (one data buffer, offsets)
without a Python object per value (Arrow copies them, see `_string_column`).

The fast path only ever *accepts*. A record is taken from it when its framing is the
current schema id, every field decodes inside the record, nothing trails it, its text is
UTF-8, its product id (if its type needs one) is printable ASCII, and it passes the
contract's rules as written here in vector form (the reference is
`schemas.events.validate`). Anything else (another schema id, corruption, a Unicode
product id, a rule broken; a batch with any text that is not UTF-8) is left to the
reference decoder, record by record, which accepts it or says why not.
`tests/unit/test_avro_columns.py` checks the two agree on generated, mutated and
corrupted records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from schemas.events import MAX_PRODUCT_ID_BYTES, PRODUCT_EVENT_TYPES, USER_ID_PATTERN, EventType
from schemas.registry import CURRENT_EVENT_SCHEMA_ID, schema_for

Bools = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.int64]

HEADER_SIZE = 5


@dataclass
class _String:
    """A string column: where each value's bytes start in the buffer, and how many."""

    starts: Ints
    lengths: Ints
    present: Bools  # False: null (a union's null branch) or a record not decoded


@dataclass
class DecodedColumns:
    """The fields of the records the fast path accepted (`accepted`, a mask over the
    batch), as Arrow arrays in the batch's order of those records."""

    accepted: Bools
    arrays: dict[str, pa.Array]


class _Batch:
    def __init__(self, values: list[bytes]) -> None:
        self.count = len(values)
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=self.count)
        self.buffer = np.frombuffer(b"".join(values), dtype=np.uint8)
        self.ends = np.cumsum(lengths)
        starts = self.ends - lengths
        self.last = max(len(self.buffer) - 1, 0)
        if len(self.buffer) == 0:
            self.buffer = np.zeros(1, dtype=np.uint8)
        self.ok = lengths >= HEADER_SIZE
        head = np.minimum(starts, self.last)
        self.ok &= self.buffer[head] == 0
        schema_id = np.zeros(self.count, dtype=np.int64)
        for i in range(1, 5):
            schema_id = (schema_id << 8) | self.buffer[np.minimum(starts + i, self.last)]
        self.ok &= schema_id == CURRENT_EVENT_SCHEMA_ID
        self.pos = starts + HEADER_SIZE

    def varint(self, active: Bools) -> Ints:
        """A zigzag varint at `pos` of every active record (advancing `pos`); a record whose
        varint runs past its end or is 10 bytes long leaves the fast path."""
        buffer, ends = self.buffer, self.ends
        raw = np.zeros(self.count, dtype=np.uint64)
        pos = self.pos
        going = active & self.ok
        for shift in range(0, 63, 7):
            inside = pos < ends
            self.ok &= ~going | inside
            going &= inside
            byte = buffer[np.minimum(pos, self.last)]
            raw |= np.where(going, (byte & 0x7F).astype(np.uint64) << np.uint64(shift), 0)
            pos = np.where(going, pos + 1, pos)
            going &= byte >= 0x80
            if not going.any():
                break
        else:
            self.ok &= ~going  # ten bytes or more: the reference decides
        self.pos = pos
        magnitude = (raw >> np.uint64(1)).astype(np.int64)
        return np.where(active, magnitude ^ -((raw & np.uint64(1)).astype(np.int64)), 0)

    def string(self, active: Bools) -> _String:
        lengths = self.varint(active)
        active = active & self.ok
        self.ok &= ~active | (lengths >= 0)
        lengths = np.where(active & self.ok, lengths, 0)
        self.ok &= ~active | (self.pos + lengths <= self.ends)
        lengths = np.where(self.ok, lengths, 0)
        starts = self.pos
        self.pos = self.pos + lengths
        return _String(starts, lengths, active & self.ok)


def _values(avro_type: Any, batch: _Batch, active: Bools) -> tuple[str, Any, Bools]:
    """(kind, decoded, present) of one field for the active records."""
    if isinstance(avro_type, list):
        branches = [b for b in avro_type if b != "null"]
        if len(avro_type) != 2 or len(branches) != 1:
            raise ValueError(f"unsupported union {avro_type!r}")
        null_first = avro_type[0] == "null"
        branch = batch.varint(active)
        batch.ok &= ~active | (branch == 0) | (branch == 1)
        present = active & batch.ok & (branch == (1 if null_first else 0))
        kind, decoded, _ = _values(branches[0], batch, present)
        return kind, decoded, present
    if isinstance(avro_type, dict) and avro_type.get("type") == "enum":
        index = batch.varint(active)
        symbols = avro_type["symbols"]
        batch.ok &= ~active | ((index >= 0) & (index < len(symbols)))
        return "enum", (index, symbols), active.copy()
    if avro_type == "string":
        return "string", batch.string(active), active.copy()
    if avro_type in ("int", "long"):
        values = batch.varint(active)
        if avro_type == "int":
            batch.ok &= ~active | ((values >= -(2**31)) & (values < 2**31))
        return avro_type, values, active.copy()
    raise ValueError(f"unsupported type {avro_type!r}")


def _string_column(batch: _Batch, column: _String) -> pa.Array:
    """The column as an Arrow string array over every record of the batch, nulls where
    absent, without a Python object or a NumPy pass per byte: the values and the bytes
    between them are consecutive in the batch's buffer, so they make a binary array over
    that buffer as it is (2 entries a record), and Arrow takes every other entry. Raises
    pyarrow.ArrowInvalid when a value is not UTF-8."""
    count = batch.count
    lengths = np.where(column.present, column.lengths, 0)
    offsets = np.empty(2 * count + 1, dtype=np.int64)
    offsets[0:-1:2] = column.starts
    offsets[1::2] = column.starts + lengths
    offsets[-1] = offsets[-2]
    spans = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), 2 * count, [None, pa.py_buffer(offsets), pa.py_buffer(batch.buffer)]
    )
    values = spans.take(pa.array(np.arange(0, 2 * count, 2))).cast(pa.large_string())
    if not column.present.all():
        values = pc.if_else(pa.array(column.present), values, pa.scalar(None, pa.large_string()))
    return values.cast(pa.string())


def _matches(values: pa.Array, pattern: str) -> Bools:
    found = pc.fill_null(pc.match_substring_regex(values, pattern), False)
    return np.asarray(found.to_numpy(zero_copy_only=False), dtype=np.bool_)


_SCHEMA: dict[str, Any] = cast("dict[str, Any]", schema_for(CURRENT_EVENT_SCHEMA_ID))
_FIELDS: list[tuple[str, Any]] = [(f["name"], f["type"]) for f in _SCHEMA["fields"]]
_TYPE_SYMBOLS: list[str] = next(t for n, t in _FIELDS if n == "event_type")["symbols"]
_PRODUCT_TYPE_INDEXES = [
    i for i, symbol in enumerate(_TYPE_SYMBOLS) if EventType(symbol) in PRODUCT_EVENT_TYPES
]
_ORDER_INDEX = _TYPE_SYMBOLS.index(EventType.ORDER.value)
_ARROW_INTS = {"int": pa.int32(), "long": pa.int64()}


def decode_event_columns(values: list[bytes]) -> DecodedColumns:
    """Decode a batch of framed event values (see the module docstring). Every field of
    the current schema comes back as an Arrow array over the accepted records;
    `event_type` as strings (its symbols)."""
    if not values:
        return DecodedColumns(np.zeros(0, dtype=np.bool_), _empty_arrays())
    batch = _Batch(values)
    everyone = np.ones(batch.count, dtype=np.bool_)
    decoded: dict[str, tuple[str, Any, Bools]] = {}
    for name, avro_type in _FIELDS:
        decoded[name] = _values(avro_type, batch, everyone)
    ok = batch.ok & (batch.pos == batch.ends)
    strings: dict[str, pa.Array] = {}
    try:
        for name, (kind, column, _present) in decoded.items():
            if kind == "string":
                strings[name] = _string_column(batch, column)
    except pa.ArrowInvalid:  # text that is not UTF-8 somewhere: halve until it is found
        if batch.count == 1:
            return DecodedColumns(np.zeros(1, dtype=np.bool_), _empty_arrays())
        half = batch.count // 2
        return _joined(decode_event_columns(values[:half]), decode_event_columns(values[half:]))
    ok &= _matches(strings["user_id"], f"^{USER_ID_PATTERN}$")
    needs_product = np.isin(decoded["event_type"][1][0], _PRODUCT_TYPE_INDEXES)
    ok &= ~needs_product | _matches(strings["product_id"], _PLAIN_PRODUCT_ID)
    ok &= _contract_rules(decoded, needs_product)
    keep = pa.array(ok)
    arrays: dict[str, pa.Array] = {}
    for name, (kind, column, present) in decoded.items():
        if kind == "string":
            arrays[name] = strings[name].filter(keep)
        elif kind == "enum":
            index, symbols = column
            arrays[name] = pa.array(symbols).take(pa.array(index[ok]))
        else:
            arrays[name] = pa.array(column[ok], type=_ARROW_INTS[kind], mask=~present[ok])
    return DecodedColumns(ok, arrays)


#: Product ids the fast path takes: printable ASCII within the byte limit (other valid
#: ones, printable Unicode, are left to the reference).
_PLAIN_PRODUCT_ID = rf"^[\x20-\x7e]{{1,{MAX_PRODUCT_ID_BYTES}}}$"


def _joined(first: DecodedColumns, second: DecodedColumns) -> DecodedColumns:
    return DecodedColumns(
        np.concatenate([first.accepted, second.accepted]),
        {
            name: pa.concat_arrays([first.arrays[name], second.arrays[name]])
            for name in first.arrays
        },
    )


def _empty_arrays() -> dict[str, pa.Array]:
    types = {"string": pa.string(), "enum": pa.string(), **_ARROW_INTS}
    return {name: pa.array([], type=types[_kind(t)]) for name, t in _FIELDS}


def _kind(avro_type: Any) -> str:
    if isinstance(avro_type, list):
        return _kind(next(b for b in avro_type if b != "null"))
    if isinstance(avro_type, dict):
        return str(avro_type["type"])
    return str(avro_type)


def _contract_rules(decoded: dict[str, tuple[str, Any, Bools]], needs_product: Bools) -> Bools:
    """The rest of `schemas.events.validate`, vectorised (the ids' characters are
    checked by the caller)."""
    _, event_id, _ = decoded["event_id"]
    _, (type_index, _symbols), _ = decoded["event_type"]
    _, time_ms, _ = decoded["event_time_ms"]
    _, product, _ = decoded["product_id"]
    _, order, _ = decoded["order_id"]
    ok = event_id.lengths > 0
    ok &= time_ms > 0
    needs_product = np.isin(type_index, _PRODUCT_TYPE_INDEXES)
    product_ok = product.present & (product.lengths > 0) & (product.lengths <= MAX_PRODUCT_ID_BYTES)
    ok &= ~needs_product | product_ok
    is_order = type_index == _ORDER_INDEX
    ok &= (order.present & (order.lengths > 0)) | (~order.present & ~is_order)
    for name in ("price_paise", "feed_position", "quantity"):
        _, number, present = decoded[name]
        ok &= ~present | (number >= 0)
    return np.asarray(ok, dtype=np.bool_)
