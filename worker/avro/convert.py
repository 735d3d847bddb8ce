"""Python Avro values <-> columns, per the null convention of ``worker.columns``.

``columns_from_records`` is the reference conversion: the per-record decode path uses it on fastavro's output
and the tests use it on their expected values, so that both decode paths are held to one definition.
``raw_to_column`` turns the fast path's raw arrays (epoch integers, bytes) into the same columns.
Per-row Python work lives here only for kinds that are objects anyway.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from worker.avro.schema import Kind, Leaf
from worker.columns import Batch, Column

_EPOCH = dt.datetime(1970, 1, 1)
_EPOCH_UTC = _EPOCH.replace(tzinfo=dt.UTC)
_EPOCH_DAY = dt.date(1970, 1, 1)
_UNIT = {"ts_ms": dt.timedelta(milliseconds=1), "ts_us": dt.timedelta(microseconds=1)}
NAT = np.iinfo(np.int64).min
_MISSING = object()


def epoch_units(value: Any, kind: Kind) -> int:
    """A timestamp or date as an integer count of units since the epoch (ints pass through)."""
    if isinstance(value, int):
        return value
    if kind == "date":
        return (value - _EPOCH_DAY).days  # type: ignore[no-any-return]
    base = _EPOCH_UTC if value.tzinfo is not None else _EPOCH
    return (value - base) // _UNIT[kind]  # type: ignore[no-any-return]


def decimal_from_bytes(data: bytes, schema: Any) -> decimal.Decimal:
    """Decode a decimal's two's-complement bytes exactly as fastavro does (context precision from schema)."""
    ctx = decimal.Context(prec=schema["precision"])
    unscaled = int.from_bytes(data, byteorder="big", signed=True)
    return ctx.create_decimal(unscaled).scaleb(-schema.get("scale", 0), ctx)


def objects(values: Iterable[Any], n: int) -> Column:
    """A 1-D object array of ``values`` (lists and dicts stay elements, never broadcast)."""
    return np.fromiter(values, dtype=object, count=n)


def values_to_column(leaf: Leaf, values: Sequence[Any]) -> Column:
    """Python values (as fastavro reads or writes them, None for null) to the leaf's column."""
    n = len(values)
    kind = leaf.kind
    if kind in ("int", "float"):
        if leaf.nullable or kind == "float":
            return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        return np.array(values, dtype=np.int64)
    if kind == "bool":
        return objects(values, n) if leaf.nullable else np.array(values, dtype=np.bool_)
    if kind in ("ts_ms", "ts_us", "date"):
        ints = [NAT if v is None else epoch_units(v, kind) for v in values]
        return np.array(ints, dtype=np.int64).view(leaf.dtype)
    if kind == "uuid":
        return objects((None if v is None else str(v) for v in values), n)
    return objects(values, n)


def columns_from_records(leaves: Sequence[Leaf], records: Sequence[dict[str, Any]]) -> Batch:
    """Flatten records (dicts shaped like the reader schema) into one column per leaf."""
    batch: Batch = {}
    for leaf in leaves:
        path = leaf.name.split(".")
        batch[leaf.name] = values_to_column(leaf, [_dig(r, path) for r in records])
    return batch


def _dig(record: dict[str, Any] | None, path: list[str]) -> Any:
    value: Any = record
    for part in path:
        if value is None:
            return None
        value = value[part]
    return value


def raw_to_column(leaf: Leaf, raw: Column, null: Column | None) -> Column:
    """The fast path's raw values of one leaf (numbers, epoch ints, str/bytes objects) as its column.

    ``null`` marks the rows that are null (None when no row can be). Decimals arrive as bytes, uuids as str.
    ``raw`` is the fast path's own fresh array: it may be returned, or written to, without a copy.
    """
    kind = leaf.kind
    has_null = null is not None and bool(null.any())
    if kind in ("int", "float"):
        if not (leaf.nullable or kind == "float"):
            return raw.astype(np.int64, copy=False)
        out = raw.astype(np.float64, copy=False)
        if has_null:
            out[null] = np.nan
        return out
    if kind == "bool" and not leaf.nullable:
        return raw.astype(np.bool_, copy=False)
    if kind in ("ts_ms", "ts_us", "date"):
        ints = raw.astype(np.int64, copy=False)
        if has_null:
            ints[null] = NAT
        return ints.view(leaf.dtype)
    if kind == "decimal":
        out = objects((None if b is None else decimal_from_bytes(b, leaf.schema) for b in raw), len(raw))
    elif kind == "uuid":
        out = objects((None if s is None else str(uuid.UUID(s)) for s in raw), len(raw))
    else:
        out = raw.astype(object, copy=False)
    if has_null:
        out[null] = None
    return out
