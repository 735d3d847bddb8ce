"""Avro schemas as the decoder and encoder see them: parsed once, named types resolved, flattened to columns.

``AvroSchema`` wraps a schema parsed by fastavro (full names, named types registered) and answers the two
questions every other module asks: "what is this (possibly named) type?" and "which columns does it make?".
``layout()`` flattens a record schema into ``Leaf`` columns with dotted names following the null convention of
``worker.columns``. Called at start or once per new writer schema id, never per event.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import fastavro
import numpy as np

Kind = Literal["int", "float", "bool", "str", "uuid", "bytes", "ts_ms", "ts_us", "date", "decimal", "object"]

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_TS_KINDS: dict[str, Kind] = {
    "timestamp-millis": "ts_ms",
    "local-timestamp-millis": "ts_ms",
    "timestamp-micros": "ts_us",
    "local-timestamp-micros": "ts_us",
}


class SchemaParseError(ValueError):
    """The schema text is not a valid Avro schema (callers turn it into a ConfigError or a DecodeError)."""


@dataclass(frozen=True)
class AvroSchema:
    """A parsed Avro schema with its named types; immutable and shared."""

    parsed: Any
    named: dict[str, Any]
    text: str

    @staticmethod
    def parse(schema: str | dict[str, Any] | list[Any]) -> AvroSchema:
        """Parse Avro schema JSON text or an already loaded JSON value; raises SchemaParseError."""
        try:
            raw = json.loads(schema) if isinstance(schema, str) else schema
            named: dict[str, Any] = {}
            parsed = fastavro.parse_schema(raw, named_schemas=named)
            text = json.dumps(raw, separators=(",", ":"))
        except (ValueError, TypeError, KeyError, fastavro.schema.SchemaParseException) as exc:
            raise SchemaParseError(f"invalid Avro schema: {exc}") from exc
        except RecursionError as exc:  # json recurses per level: a hostile schema must not crash the worker
            raise SchemaParseError(f"invalid Avro schema: nested too deeply ({exc})") from exc
        return AvroSchema(parsed=parsed, named=named, text=text)

    @staticmethod
    def load(path: str | Path) -> AvroSchema:
        """Load an ``.avsc`` file; raises OSError or SchemaParseError."""
        return AvroSchema.parse(Path(path).read_text(encoding="utf-8"))

    def deref(self, schema: Any) -> Any:
        """The definition of ``schema``, following a reference to a named type."""
        if isinstance(schema, str) and schema not in PRIMITIVES:
            return self.named[schema]
        return schema

    def is_recursive(self) -> bool:
        """Whether a named type contains itself (a payload may then nest without bound)."""
        return _recursive(self, self.parsed, ())


def type_name(schema: Any) -> str:
    """The Avro type of a dereferenced schema: a primitive name, 'record', 'enum', ..., or 'union'."""
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        return (
            str(schema["type"]) if not isinstance(schema["type"], dict | list) else type_name(schema["type"])
        )
    return str(schema)


def null_branch(schema: Any) -> tuple[int, Any] | None:
    """For a union ``[null, T]`` or ``[T, null]``: (index of null, T); otherwise None."""
    if isinstance(schema, list) and len(schema) == 2 and "null" in schema:
        idx = schema.index("null")
        return idx, schema[1 - idx]
    return None


def _recursive(s: AvroSchema, schema: Any, seen: tuple[str, ...]) -> bool:
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return False
        if schema in seen:
            return True
        return _recursive(s, s.named[schema], seen)
    if isinstance(schema, list):
        return any(_recursive(s, b, seen) for b in schema)
    kind = schema["type"]
    if kind == "record":
        inner = (*seen, schema["name"])
        return any(_recursive(s, f["type"], inner) for f in schema["fields"])
    if kind == "array":
        return _recursive(s, schema["items"], seen)
    if kind == "map":
        return _recursive(s, schema["values"], seen)
    if isinstance(kind, dict | list):
        return _recursive(s, kind, seen)
    return False


@dataclass(frozen=True)
class Leaf:
    """One output column: its dotted name, kind, nullability and the (dereferenced) Avro type behind it."""

    name: str
    kind: Kind
    nullable: bool
    schema: Any

    @property
    def dtype(self) -> np.dtype[Any]:
        """The numpy dtype of this column, per the null convention of ``worker.columns``."""
        return leaf_dtype(self.kind, self.nullable)


def leaf_dtype(kind: Kind, nullable: bool) -> np.dtype[Any]:
    """The column dtype for a kind (see the table in ``worker.columns``)."""
    if kind == "int":
        return np.dtype(np.float64 if nullable else np.int64)
    if kind == "float":
        return np.dtype(np.float64)
    if kind == "bool":
        return np.dtype(object if nullable else np.bool_)
    if kind in ("ts_ms", "ts_us", "date"):
        return np.dtype({"ts_ms": "datetime64[ms]", "ts_us": "datetime64[us]", "date": "datetime64[D]"}[kind])
    return np.dtype(object)


def leaf_kind(schema: Any) -> Kind:
    """The column kind of a dereferenced non-union schema (unions with two non-null branches are objects)."""
    if isinstance(schema, list):
        return "object"
    logical = schema.get("logicalType") if isinstance(schema, dict) else None
    base = type_name(schema)
    if logical in _TS_KINDS and base == "long":
        return _TS_KINDS[logical]
    if logical == "date" and base == "int":
        return "date"
    if logical == "decimal" and base in ("bytes", "fixed"):
        return "decimal"
    if logical == "uuid" and base == "string":
        return "uuid"
    if logical in ("time-millis", "time-micros"):
        return "object"
    simple: dict[str, Kind] = {
        "int": "int",
        "long": "int",
        "float": "float",
        "double": "float",
        "boolean": "bool",
        "string": "str",
        "enum": "str",
        "bytes": "bytes",
        "fixed": "bytes",
    }
    return simple.get(base, "object")


def layout(schema: AvroSchema) -> tuple[Leaf, ...]:
    """The columns of a record schema, nested records flattened to dotted names (stopping at a cycle)."""
    root = schema.deref(schema.parsed)
    if type_name(root) != "record":
        raise SchemaParseError("a topic's value schema must be a record")
    leaves: list[Leaf] = []
    _flatten(schema, root, "", False, path=(root["name"],), out=leaves)
    return tuple(leaves)


def _flatten(
    s: AvroSchema, record: Any, prefix: str, nullable: bool, *, path: tuple[str, ...], out: list[Leaf]
) -> None:
    for field in record["fields"]:
        name = f"{prefix}{field['name']}"
        ftype = s.deref(field["type"])
        opt = null_branch(ftype)
        inner, is_null = (s.deref(opt[1]), True) if opt else (ftype, False)
        if type_name(inner) == "record" and inner["name"] not in path:
            _flatten(s, inner, f"{name}.", nullable or is_null, path=(*path, inner["name"]), out=out)
        elif type_name(ftype) == "null":
            out.append(Leaf(name, "object", True, ftype))
        else:
            kind = leaf_kind(inner)
            out.append(Leaf(name, kind, nullable or is_null or kind == "object", inner))
