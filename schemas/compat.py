"""Schema evolution checks for Avro record schemas, following Avro's resolution rules.

Pure: takes schemas as loaded JSON (dicts, lists, strings) and returns the problems found; an
empty list means compatible. Covers records (nested records included), primitives with the
legal promotions, unions, enums, arrays and maps. Named-type references by name are resolved
against the types defined in the same schema. Logical types are compared by their underlying
type; fixed, aliases and field order are not checked.
"""

from __future__ import annotations

from typing import Any

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
#: (writer type, reader type) pairs Avro resolves by promotion.
PROMOTIONS = frozenset(
    {
        ("int", "long"),
        ("int", "float"),
        ("int", "double"),
        ("long", "float"),
        ("long", "double"),
        ("float", "double"),
        ("string", "bytes"),
        ("bytes", "string"),
    }
)

Names = dict[str, dict[str, Any]]


def backward_compatible(reader_new: Any, writer_old: Any) -> list[str]:
    """Problems that stop a reader on `reader_new` from reading data written with `writer_old`."""
    return _Checker(reader_new, writer_old).check(reader_new, writer_old, "")


def forward_compatible(new: Any, old: Any) -> list[str]:
    """Problems that stop readers still on `old` from reading data written with `new`."""
    return backward_compatible(old, new)


def full_compatible(new: Any, old: Any) -> list[str]:
    """Both directions: new readers read old data and old readers read new data."""
    return backward_compatible(new, old) + forward_compatible(new, old)


class _Checker:
    def __init__(self, reader: Any, writer: Any) -> None:
        self.reader_names: Names = {}
        self.writer_names: Names = {}
        _collect_names(reader, None, self.reader_names)
        _collect_names(writer, None, self.writer_names)
        # (reader, writer) record pairs being checked: stops recursive types looping.
        self.in_progress: set[tuple[int, int]] = set()

    def check(self, reader: Any, writer: Any, path: str) -> list[str]:
        reader = _resolve(reader, self.reader_names)
        writer = _resolve(writer, self.writer_names)
        if isinstance(writer, list):
            # Data may hold any writer branch: each one must be readable.
            problems: list[str] = []
            for branch in writer:
                problems += self.check(reader, branch, path)
            return problems
        if isinstance(reader, list):
            if any(not self.check(branch, writer, path) for branch in reader):
                return []
            return [
                f"{path or '<root>'}: reader union has no branch for writer type {_kind(writer)!r}"
            ]
        return self._same_shape(reader, writer, path)

    def _same_shape(self, reader: Any, writer: Any, path: str) -> list[str]:
        r_kind, w_kind = _kind(reader), _kind(writer)
        problems: list[str] = []
        if r_kind != w_kind:
            if (w_kind, r_kind) not in PROMOTIONS:
                problems.append(
                    f"{path or '<root>'}: writer type {w_kind!r} cannot be read as {r_kind!r}"
                )
        elif r_kind == "record":
            problems = self._record(reader, writer, path)
        elif r_kind == "enum":
            problems = _enum(reader, writer, path or "<root>")
        elif r_kind == "array":
            problems = self.check(reader["items"], writer["items"], f"{path}[]")
        elif r_kind == "map":
            problems = self.check(reader["values"], writer["values"], f"{path}{{}}")
        return problems

    def _record(self, reader: dict[str, Any], writer: dict[str, Any], path: str) -> list[str]:
        where = path or "<root>"
        if _short_name(reader) != _short_name(writer):
            return [
                f"{where}: record name {_short_name(writer)!r} "
                f"differs from reader's {_short_name(reader)!r}"
            ]
        key = (id(reader), id(writer))
        if key in self.in_progress:
            return []
        self.in_progress.add(key)
        try:
            return self._fields(reader, writer, path)
        finally:
            self.in_progress.discard(key)

    def _fields(self, reader: dict[str, Any], writer: dict[str, Any], path: str) -> list[str]:
        writer_fields = {field["name"]: field for field in writer.get("fields", [])}
        problems: list[str] = []
        for field in reader.get("fields", []):
            name = field["name"]
            field_path = f"{path}.{name}" if path else name
            if name in writer_fields:
                problems += self.check(field["type"], writer_fields[name]["type"], field_path)
            elif "default" not in field:
                problems.append(
                    f"{field_path}: reader field has no default and the writer does not have it"
                )
        return problems


def _enum(reader: dict[str, Any], writer: dict[str, Any], where: str) -> list[str]:
    if _short_name(reader) != _short_name(writer):
        return [f"{where}: enum name {_short_name(writer)!r} differs from {_short_name(reader)!r}"]
    missing = [s for s in writer.get("symbols", []) if s not in reader.get("symbols", [])]
    if missing and "default" not in reader:
        return [f"{where}: reader enum lacks writer symbols {missing} and has no default"]
    return []


def _kind(schema: Any) -> str:
    """'union', a primitive name, or the complex type name ('record', 'enum', ...)."""
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        inner = schema.get("type")
        return inner if isinstance(inner, str) else _kind(inner)
    return str(schema)


def _short_name(schema: dict[str, Any]) -> str:
    return str(schema.get("name", "")).rsplit(".", 1)[-1]


def _resolve(schema: Any, names: Names) -> Any:
    """Replace a reference to a named type (and `{"type": <ref or primitive>}`) by its body."""
    if isinstance(schema, dict) and not isinstance(schema.get("type"), str):
        return _resolve(schema.get("type"), names)
    if isinstance(schema, dict) and schema["type"] not in ("record", "enum", "array", "map"):
        return _resolve(schema["type"], names) if schema["type"] != "fixed" else schema
    if isinstance(schema, str) and schema not in PRIMITIVES:
        return names.get(schema) or names.get(schema.rsplit(".", 1)[-1]) or schema
    return schema


def _collect_names(schema: Any, namespace: str | None, names: Names) -> None:
    if isinstance(schema, list):
        for branch in schema:
            _collect_names(branch, namespace, names)
        return
    if not isinstance(schema, dict):
        return
    kind = schema.get("type")
    if kind in ("record", "enum", "fixed") and "name" in schema:
        name = str(schema["name"])
        space = schema.get("namespace", namespace)
        full = name if "." in name or not space else f"{space}.{name}"
        names[full] = schema
        names.setdefault(full.rsplit(".", 1)[-1], schema)
        namespace = full.rsplit(".", 1)[0] if "." in full else namespace
    if kind == "record":
        for field in schema.get("fields", []):
            _collect_names(field.get("type"), namespace, names)
    elif kind == "array":
        _collect_names(schema.get("items"), namespace, names)
    elif kind == "map":
        _collect_names(schema.get("values"), namespace, names)
    elif not isinstance(kind, str):
        _collect_names(kind, namespace, names)
