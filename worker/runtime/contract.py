"""The contract between the graph and its two schemas, checked once at start (and for each new graph).

``check_inputs``: the reader schema gives every graph input as a column of the dtype the graph expects.
``check_outputs``: the graph's outputs and the output schema's fields are the same set, and each output's
dtype fits its field's Avro type, so no score goes out short of a field, with a value the encoder bent into
another type (a bool as 0/1), or fails on the first batch. Both raise ``ConfigError`` naming the setting.

What a graph output of each dtype may be written as (``T?``: the graph output may be null)::

    graph dtype       Avro field type (or ["null", that type]; a T? output needs the union)
    float64           double; float (rounded to float32; beyond its range the record is dead-lettered)
    int64             long; int (a value beyond int's range dead-letters its record)
    bool              boolean
    string            string; string with logicalType uuid; enum (a value not a symbol dead-letters it)
    bytes             bytes; fixed (a value of another size dead-letters its record)
    datetime64[ms]    long with logicalType timestamp-millis, timestamp-micros, or their local- forms
    datetime64[us]    long with logicalType timestamp-micros or local-timestamp-micros
    datetime64[D]     int with logicalType date; long with any logicalType datetime64[ms] accepts

Anything else is refused: a datetime into a plain long (which unit?), microseconds into milliseconds
(truncated) or a timestamp into a date, a number into a timestamp, a bool into a number, decimals, times,
durations, nanosecond timestamps, arrays, maps and unions other than [null, T]. A logicalType Avro does not
define for the base type is ignored, as the Avro specification says. Nested records are fields with dotted
names (``device.os``), as in worker/columns.py.

Every field of the output schema must be a graph output, even one with a default: Avro binary has no absent
fields, the encoder writes every field from the score batch and fills in no defaults (a default only helps a
reader that resolves an older writer schema).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from worker.avro.schema import AvroSchema, Leaf, null_branch, type_name
from worker.errors import ConfigError
from worker.graph.dsl import InputField, OutputField
from worker.graph.types import DType, physical

_MS_OR_US = (("long", "timestamp-millis"), ("long", "local-timestamp-millis"),
             ("long", "timestamp-micros"), ("long", "local-timestamp-micros"))  # fmt: skip
_US = (("long", "timestamp-micros"), ("long", "local-timestamp-micros"))
# (Avro base type, logical type or None) a graph output of each dtype may be written as.
FITS: dict[DType, tuple[tuple[str, str | None], ...]] = {
    "float64": (("double", None), ("float", None)),
    "int64": (("long", None), ("int", None)),
    "bool": (("boolean", None),),
    "string": (("string", None), ("string", "uuid"), ("enum", None)),
    "bytes": (("bytes", None), ("fixed", None)),
    "datetime64[ms]": _MS_OR_US,
    "datetime64[us]": _US,
    "datetime64[D]": (("int", "date"), *_MS_OR_US),
}
_TIMESTAMPS = [f"{p}timestamp-{unit}" for p in ("", "local-") for unit in ("millis", "micros", "nanos")]
# The logical types of the Avro specification, by the base types they are defined on; others are ignored.
_LOGICAL: dict[str, frozenset[str]] = {
    "decimal": frozenset({"bytes", "fixed"}),
    "uuid": frozenset({"string"}),
    "date": frozenset({"int"}),
    "time-millis": frozenset({"int"}),
    "time-micros": frozenset({"long"}),
    "duration": frozenset({"fixed"}),
    **dict.fromkeys(_TIMESTAMPS, frozenset({"long"})),
}
FIELD = "output.schema"


def check_inputs(leaves: Sequence[Leaf], inputs: Sequence[InputField]) -> None:
    """The reader schema must provide every graph input with its dtype: checked at start, named by field."""
    by_name = {leaf.name: leaf for leaf in leaves}
    for field in inputs:
        leaf = by_name.get(field.name)
        where = f"graph input {field.name!r}"
        if leaf is None:
            raise ConfigError(f"{where} is not a field of the reader schema", field="input.reader_schema")
        if leaf.nullable and not field.nullable:
            raise ConfigError(f"{where} is non-null in the graph but nullable in the reader schema",
                              field="input.reader_schema")  # fmt: skip
        if leaf.dtype != (column := physical(field.coltype)):  # compare columns: int64? is a float64 column
            message = (
                f"{where} ({field.coltype}) needs a {column} column; the reader schema gives {leaf.dtype}"
            )
            raise ConfigError(message, field="input.reader_schema")


@dataclass(frozen=True)
class _Field:
    """One field of the output record as the encoder writes it: a column of the score batch."""

    name: str  # dotted below nested records
    avro: Any  # the field's type as declared, for messages
    inner: Any  # the dereferenced type without its null branch
    nullable: bool  # [null, T]
    default: str | None  # the default as JSON, None when there is none


def check_outputs(schema: AvroSchema, outputs: Sequence[OutputField]) -> None:
    """Every graph output is a field of the output schema with a type that fits it, and every field of the
    schema is a graph output; raises ConfigError (field ``output.schema``) naming the first that is not."""
    fields = {f.name: f for f in _fields(schema)}
    for output in outputs:
        field = fields.get(output.name)
        if field is None:
            known = ", ".join(fields) or "none"
            raise ConfigError(f"graph output {output.name!r} ({output.coltype}) is not a field of the output "
                              f"schema (its fields: {known}); the score record would go out without it",
                              field=FIELD)  # fmt: skip
        _check_fit(field, output)
    produced = {output.name for output in outputs}
    for field in fields.values():
        if field.name not in produced:
            default = "" if field.default is None else f", default {field.default}"
            raise ConfigError(f"field {field.name!r} ({_show(field.avro)}{default}) is not a graph output; "
                              "the worker writes every field of the score record from the graph's outputs "
                              f"and fills in no defaults: add {field.name!r} to the graph's outputs or "
                              "remove it from the schema", field=FIELD)  # fmt: skip


def _check_fit(field: _Field, output: OutputField) -> None:
    head = (f"field {field.name!r} is {_show(field.avro)} in the output schema, but graph output "
            f"{output.name!r} is {output.coltype}")  # fmt: skip
    if type_name(field.inner) == "null":
        raise ConfigError(f"{head}: a field that is always null cannot hold it", field=FIELD)
    if _base_and_logical(field.inner) not in FITS[output.dtype]:
        fits = " or ".join(_show_fit(base, logical) for base, logical in FITS[output.dtype])
        raise ConfigError(f"{head}; a {output.dtype} output needs Avro {fits}", field=FIELD)
    if output.nullable and not field.nullable:
        nullable = _show(["null", field.avro])
        raise ConfigError(f"{head} (may be null): a null would fail its record; make the field {nullable} "
                          "or fill the nulls in the graph", field=FIELD)  # fmt: skip


def _base_and_logical(avro: Any) -> tuple[str, str | None]:
    """An Avro type as (base type, logical type), the logical type None where Avro ignores it."""
    base = type_name(avro)
    if base == "union":
        return base, None
    logical = avro.get("logicalType") if isinstance(avro, dict) else None
    return base, logical if base in _LOGICAL.get(str(logical), ()) else None


def _fields(schema: AvroSchema) -> list[_Field]:
    root = schema.deref(schema.parsed)
    if type_name(root) != "record":
        raise ConfigError("the output schema must be a record", field=FIELD)
    out: list[_Field] = []
    _walk(schema, root, "", (root["name"],), out)
    return out


def _walk(schema: AvroSchema, record: Any, prefix: str, path: tuple[str, ...], out: list[_Field]) -> None:
    """The fields of ``record``, nested records (nullable or not) flattened as the encoder does."""
    for f in record["fields"]:
        name, declared = f"{prefix}{f['name']}", f["type"]
        ftype = schema.deref(declared)
        branch = null_branch(ftype)
        inner = schema.deref(branch[1]) if branch else ftype
        if type_name(inner) == "record" and inner["name"] not in path:
            _walk(schema, inner, f"{name}.", (*path, inner["name"]), out)
            continue
        default = json.dumps(f["default"]) if "default" in f else None
        out.append(_Field(name, declared, inner, branch is not None, default))


def _show(avro: Any) -> str:
    """An Avro type in a message: ``long (timestamp-millis)``, ``["null", "double"]``, ``enum Color``."""
    if isinstance(avro, list):
        return "[" + ", ".join(_quoted(b) for b in avro) + "]"
    if isinstance(avro, str):
        return avro
    base, logical = type_name(avro), avro.get("logicalType")
    if base in ("record", "enum", "fixed") and "name" in avro:
        return f"{base} {avro['name']}"
    if base in ("array", "map"):
        return f"{base}<{_show(avro.get('items', avro.get('values')))}>"
    return f"{base} ({logical})" if logical else base


def _quoted(avro: Any) -> str:
    return f'"{avro}"' if isinstance(avro, str) else _show(avro)


def _show_fit(base: str, logical: str | None) -> str:
    return f"{base} ({logical})" if logical else base
