"""Records (dicts from JSON Lines or an Avro container) to a columnar batch typed by the graph's inputs.

``records_to_batch`` builds each declared input column once from the list of records, under the null
convention of worker/columns.py. A record whose value does not fit its field (wrong JSON type, null in a
non-nullable field, unparsable timestamp, an int beyond int64) is rejected with a ``RecordError`` at stage
``"validate"``; it never stops the batch. Fields the graph does not declare are ignored; a missing field is
null. Dotted names (``device.os``) read nested records.

Timestamps: a ``datetime64`` field takes epoch milliseconds (int), an ISO-8601 string (a zone offset is
converted to UTC; a naive time is taken as UTC) or a ``datetime``/``date`` as fastavro returns them. A
``datetime64[D]`` field also takes days since the epoch as int, as Avro ``date`` does. A ``bytes`` field takes
``bytes`` or, as Avro's JSON encoding does, a string of code points 0-255 (latin-1).

Called by the offline ``score`` command per batch and meant for the streaming worker too; pure, never blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from worker.columns import Batch, Column, StageResult, take
from worker.errors import ConfigError, RecordError

_MISSING = object()


class InputSpec(Protocol):
    """What a declared graph input says about its column (``worker.graph.dsl.InputField`` fits)."""

    @property
    def name(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def nullable(self) -> bool: ...


def records_to_batch(
    records: Sequence[Mapping[str, Any]], inputs: Sequence[InputSpec], *, first_offset: int = 0
) -> StageResult[RecordError]:
    """Columns for ``inputs`` from ``records``; rows that do not fit are rejected, each with its reason.

    ``first_offset`` is the position of ``records[0]`` in its input, recorded as the error's ``offset``.
    """
    n = len(records)
    columns: Batch = {}
    bad = np.zeros(n, dtype=np.bool_)
    reasons: dict[int, str] = {}
    for spec in inputs:
        values = np.fromiter((_get(record, spec.name) for record in records), dtype=object, count=n)
        column, invalid = _convert(values, spec)
        for row in np.flatnonzero(invalid & ~bad):
            reasons[int(row)] = _reason(spec, values[row])
        bad |= invalid
        columns[spec.name] = column
    errors = {
        row: RecordError(reason, offset=first_offset + row, stage="validate")
        for row, reason in reasons.items()
    }
    if not errors:
        return StageResult(columns, np.arange(n, dtype=np.int64))
    rows = np.flatnonzero(~bad).astype(np.int64)
    return StageResult(take(columns, rows), rows, errors)


def _get(record: Mapping[str, Any], name: str) -> Any:
    """``record[name]``, or the nested value for a dotted name; ``_MISSING`` when absent."""
    if name in record:
        return record[name]
    value: Any = record
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _reason(spec: InputSpec, value: Any) -> str:
    if value is None or value is _MISSING:
        return f"field {spec.name!r}: null in a non-nullable {spec.dtype} field"
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return f"field {spec.name!r}: {type(value).__name__} {shown} does not fit {spec.dtype}"


def _convert(values: npt.NDArray[Any], spec: InputSpec) -> tuple[Column, npt.NDArray[np.bool_]]:
    """The column for ``spec`` and the mask of rows whose value does not fit (those hold a placeholder)."""
    null = _mask(values, lambda v: v is None or v is _MISSING)
    work = values.copy()  # converters write placeholders into rejected rows; keep the originals for reasons
    work[null] = None
    converter = _CONVERTERS.get(spec.dtype)
    if converter is None:
        raise ConfigError(f"unsupported dtype {spec.dtype!r}", field=f"inputs.{spec.name}")
    column, invalid = converter(work, null, spec)
    if not spec.nullable:
        invalid |= null
    return column, invalid


def _mask(values: npt.NDArray[Any], test: Callable[[Any], bool]) -> npt.NDArray[np.bool_]:
    return np.fromiter((test(v) for v in values), dtype=np.bool_, count=len(values))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _float(values: Column, null: Column, spec: InputSpec) -> tuple[Column, Column]:
    invalid = ~null & ~_mask(values, _is_number)
    values[invalid] = None
    return values.astype(np.float64), invalid


def _int(values: Column, null: Column, spec: InputSpec) -> tuple[Column, Column]:
    fits = _mask(values, lambda v: isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63)
    invalid = ~null & ~fits
    if spec.nullable:
        values[invalid] = None
        return values.astype(np.float64), invalid
    values[invalid | null] = 0
    return values.astype(np.int64), invalid


def _bool(values: Column, null: Column, spec: InputSpec) -> tuple[Column, Column]:
    invalid = ~null & ~_mask(values, lambda v: isinstance(v, bool | np.bool_))
    if spec.nullable:
        values[invalid] = None
        return values, invalid
    values[invalid | null] = False
    return values.astype(np.bool_), invalid


def _string(values: Column, null: Column, spec: InputSpec) -> tuple[Column, Column]:
    invalid = ~null & ~_mask(values, lambda v: isinstance(v, str))
    values[invalid] = None
    return values, invalid


def _bytes(values: Column, null: Column, spec: InputSpec) -> tuple[Column, Column]:
    as_bytes = np.fromiter((_to_bytes(v) for v in values), dtype=object, count=len(values))
    invalid = ~null & _mask(as_bytes, lambda v: v is None)
    return as_bytes, invalid


def _to_bytes(value: Any) -> bytes | None:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            return None
    return None


def _datetime(values: Column, null: Column, spec: InputSpec) -> tuple[Column, Column]:
    unit = spec.dtype[len("datetime64[") : -1]
    is_int = _mask(values, lambda v: isinstance(v, int) and not isinstance(v, bool))
    out = np.full(len(values), np.datetime64("NaT"), dtype=spec.dtype)
    invalid = np.zeros(len(values), dtype=np.bool_)
    if is_int.any():
        epoch_unit = "D" if unit == "D" else "ms"
        try:
            ints = values[is_int].astype(np.int64)
            out[is_int] = ints.astype(f"datetime64[{epoch_unit}]").astype(spec.dtype)
        except OverflowError:
            invalid |= is_int
    others = ~null & ~is_int
    for row in np.flatnonzero(others):  # strings and datetime objects: parsed one by one (not the Avro path)
        parsed = _to_datetime64(values[row], unit)
        if parsed is None:
            invalid[row] = True
        else:
            out[row] = parsed
    return out, invalid


def _to_datetime64(value: Any, unit: str) -> Any:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return np.datetime64(value, "us").astype(f"datetime64[{unit}]")
    if isinstance(value, date):
        return np.datetime64(value, "D").astype(f"datetime64[{unit}]")
    return None


_CONVERTERS: dict[str, Callable[[Column, Column, InputSpec], tuple[Column, Column]]] = {
    "float64": _float,
    "int64": _int,
    "bool": _bool,
    "string": _string,
    "bytes": _bytes,
    "datetime64[ms]": _datetime,
    "datetime64[us]": _datetime,
    "datetime64[D]": _datetime,
}
