"""Hypothesis strategies for Avro schemas and values, shared by the Avro property tests."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

from hypothesis import strategies as st

LEAF_TYPES = [
    "boolean",
    "int",
    "long",
    "float",
    "double",
    "string",
    "bytes",
    "enum",
    "fixed",
    "date",
    "ts_ms",
    "ts_us",
    "uuid",
    "decimal",
    "decimal_fixed",
]
COMPLEX_TYPES = ["record", "array", "map", "nullable", "nullable", "nullable_record"]


class _Names:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"T{self.n}"


def _type(draw: Any, names: _Names, depth: int) -> Any:
    kind = draw(st.sampled_from(LEAF_TYPES + (COMPLEX_TYPES if depth < 3 else [])))
    if kind == "enum":
        symbols = draw(
            st.lists(st.sampled_from(["A", "B", "C", "D", "E"]), min_size=1, max_size=4, unique=True)
        )
        return {"type": "enum", "name": names(), "symbols": symbols}
    if kind == "fixed":
        return {"type": "fixed", "name": names(), "size": draw(st.integers(1, 8))}
    if kind == "date":
        return {"type": "int", "logicalType": "date"}
    if kind in ("ts_ms", "ts_us"):
        return {"type": "long", "logicalType": "timestamp-millis" if kind == "ts_ms" else "timestamp-micros"}
    if kind == "uuid":
        return {"type": "string", "logicalType": "uuid"}
    if kind in ("decimal", "decimal_fixed"):
        precision = draw(st.integers(1, 18))
        scale = draw(st.integers(0, precision))
        if kind == "decimal":
            return {"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale}
        return {"type": "fixed", "name": names(), "size": 8, "logicalType": "decimal", "precision": precision,
                "scale": scale}  # fmt: skip
    if kind == "record":
        return _record(draw, names, depth + 1)
    if kind == "nullable_record":
        return ["null", _record(draw, names, depth + 1)]
    if kind == "array":
        return {"type": "array", "items": _type(draw, names, depth + 1)}
    if kind == "map":
        return {"type": "map", "values": _type(draw, names, depth + 1)}
    if kind == "nullable":
        inner = _type(draw, names, depth + 1)
        if isinstance(inner, list):
            return inner
        return ["null", inner] if draw(st.booleans()) else [inner, "null"]
    return kind


def _record(draw: Any, names: _Names, depth: int) -> dict[str, Any]:
    # The first field is a non-null int, so a present nested record never has all its columns null.
    fields = [{"name": "id", "type": "int"}]
    for i in range(draw(st.integers(0, 4))):
        fields.append({"name": f"f{i}", "type": _type(draw, names, depth)})
    return {"type": "record", "name": names(), "fields": fields}


@st.composite
def record_schemas(draw: Any) -> dict[str, Any]:
    """Random record schemas: nested records, unions with null, enums, arrays, maps, fixed, logical types."""
    return _record(draw, _Names(), 0)


def values(schema: Any, named: dict[str, Any] | None = None) -> st.SearchStrategy[Any]:
    """Values that fastavro can write for ``schema`` (an unparsed schema from ``record_schemas``)."""
    named = {} if named is None else named
    if isinstance(schema, list):
        return st.one_of(*[values(b, named) for b in schema])
    if isinstance(schema, str):
        return {
            "null": st.none(),
            "boolean": st.booleans(),
            "int": st.integers(-(2**31), 2**31 - 1),
            "long": st.integers(-(2**53), 2**53),  # nullable longs become float64 columns
            "float": st.floats(width=32, allow_nan=False),
            "double": st.floats(allow_nan=False),
            "string": st.text(max_size=12),
            "bytes": st.binary(max_size=12),
        }[schema]
    logical, kind = schema.get("logicalType"), schema["type"]
    if logical == "date":
        return st.dates()
    if logical == "timestamp-millis":
        return st.datetimes(timezones=st.just(dt.UTC)).map(
            lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)
        )
    if logical == "timestamp-micros":
        return st.datetimes(timezones=st.just(dt.UTC))
    if logical == "uuid":
        return st.uuids().map(str)
    if logical == "decimal":
        p, s = schema["precision"], schema["scale"]
        return st.integers(-(10**p) + 1, 10**p - 1).map(lambda u: decimal.Decimal(u).scaleb(-s))
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "fixed":
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    if kind == "array":
        return st.lists(values(schema["items"], named), max_size=3)
    if kind == "map":
        return st.dictionaries(st.text(max_size=4), values(schema["values"], named), max_size=3)
    if kind == "record":
        return st.fixed_dictionaries({f["name"]: values(f["type"], named) for f in schema["fields"]})
    return values(kind, named)
