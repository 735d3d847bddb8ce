"""``ScoreEncoder``: score columns (a ``Batch``) to one Avro record per row, framed for Kafka.

The runtime calls ``encode`` once per batch of scores; it never blocks (the schema id is resolved when the
encoder is built, see ``for_topic``). Output bytes are identical to fastavro's ``schemaless_writer`` for the
same schema and values: primitives, enums, strings and non-null nested records are encoded column by column
with numpy (``worker.avro.wire``); other types (arrays, maps, decimals, nullable records, multi-type unions)
are written row by row through fastavro for that field only. The encoder is composed from closures once per
schema: no code generation. A row whose values do not fit the schema (a null into a non-null field, an int out
of range, an unknown enum symbol) is an ``EncodeError`` for that row only.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import fastavro
import numpy as np
import numpy.typing as npt

from worker.avro import wire
from worker.avro.registry import SchemaNotFound, SchemaRefused, SchemaRegistryClient
from worker.avro.schema import AvroSchema, Kind, layout, leaf_kind, null_branch, type_name
from worker.columns import Batch, Column, batch_len
from worker.errors import ConfigError, EncodeError

_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
_UNITS = {"ts_ms": "ms", "ts_us": "us", "date": "D"}
Mask = npt.NDArray[np.bool_]


class _Rows:
    """Per-row verdicts of one encode call: the first reason each bad row failed."""

    __slots__ = ("bad", "reasons")

    def __init__(self) -> None:
        self.bad: Mask | None = None  # built on the first failure: most batches have none
        self.reasons: dict[int, str] = {}

    def fail(self, mask: Mask, reason: str) -> None:
        if not mask.any():
            return
        new = mask if self.bad is None else mask & ~self.bad
        for i in np.flatnonzero(new).tolist():
            self.reasons[i] = reason
        self.bad = mask.copy() if self.bad is None else self.bad | mask


def _where(write: Mask | None, mask: Mask) -> Mask:
    """``mask`` restricted to the rows that write (``write`` None: all of them)."""
    return mask if write is None else write & mask


FieldEncoder = Callable[[Batch, _Rows], list[wire.Segment]]


@dataclass(frozen=True)
class Encoded:
    """What ``encode`` returns: ``values[k]`` is the record of input row ``rows[k]``; the rest failed."""

    values: list[bytes]
    rows: npt.NDArray[np.int64]
    errors: dict[int, EncodeError]


class ScoreEncoder:
    """Encodes batches against one record schema; ``schema_id`` set means Confluent framing."""

    def __init__(self, schema: AvroSchema, *, schema_id: int | None = None) -> None:
        root = schema.deref(schema.parsed)
        if type_name(root) != "record":
            raise ConfigError("the output schema must be a record", field="schema")
        self.schema = schema
        self.schema_id = schema_id
        self._header = b"" if schema_id is None else b"\x00" + schema_id.to_bytes(4, "big")
        kinds = {leaf.name: leaf.kind for leaf in layout(schema)}
        self._fields = _record_fields(schema, root, "", kinds)

    @classmethod
    def for_topic(
        cls,
        schema: AvroSchema,
        topic: str,
        registry: SchemaRegistryClient,
        *,
        auto_register: bool = True,
        dry_run: bool = False,
    ) -> ScoreEncoder:
        """Confluent framing with the id of ``schema`` under ``<topic>-value``; registered when allowed.

        Called at start; blocks on the registry; raises ConfigError (field ``output.schema``) if the schema is
        refused or, without auto-registration, not registered; RegistryUnavailable when the registry cannot be
        reached. ``dry_run`` (``run --check``) registers nothing: it looks the id up and, when the schema has
        none yet and would be registered, asks whether the registry would accept it; that encoder then has no
        id (``schema_id`` None): it is for checking, never for encoding.
        """
        subject, field = f"{topic}-value", "output.schema"
        try:
            if auto_register and not dry_run:
                return cls(schema, schema_id=registry.register(subject, schema))
            return cls(schema, schema_id=registry.lookup(subject, schema))
        except SchemaRefused as exc:
            raise ConfigError(f"the registry refused it under {subject}: {exc}", field=field) from exc
        except SchemaNotFound as exc:
            if not auto_register:
                message = f"not registered under {subject}, and schema_registry.auto_register is false"
                raise ConfigError(f"{message}: register it first", field=field) from exc
        if not registry.compatible(subject, schema):
            level = registry.compatibility(subject)
            raise ConfigError(f"the registry would refuse it under {subject}: not compatible with the "
                              f"subject's latest version (compatibility {level})", field=field)  # fmt: skip
        return cls(schema)

    def encode(
        self,
        columns: Batch,
        *,
        topic: str | None = None,
        partitions: Sequence[int] | None = None,
        offsets: Sequence[int] | None = None,
    ) -> Encoded:
        """Encode every row; raises ConfigError if a column the schema needs is missing from the batch."""
        n = batch_len(columns)
        if n == 0:
            return Encoded([], np.zeros(0, dtype=np.int64), {})
        verdicts = _Rows()
        segments = [segment for encode in self._fields for segment in encode(columns, verdicts)]
        values = wire.assemble(self._header, segments, n)
        if not verdicts.reasons:
            return Encoded(values, np.arange(n, dtype=np.int64), {})
        errors = {
            i: EncodeError(
                reason,
                topic=topic,
                partition=None if partitions is None else partitions[i],
                offset=None if offsets is None else offsets[i],
                schema_id=self.schema_id,
            )
            for i, reason in verdicts.reasons.items()
        }
        assert verdicts.bad is not None  # set with the first reason
        rows = np.flatnonzero(~verdicts.bad).astype(np.int64)
        return Encoded([values[i] for i in rows.tolist()], rows, errors)


def _record_fields(
    schema: AvroSchema, record: Any, prefix: str, kinds: dict[str, Kind]
) -> list[FieldEncoder]:
    encoders: list[FieldEncoder] = []
    for f in record["fields"]:
        name = f"{prefix}{f['name']}"
        ftype = schema.deref(f["type"])
        opt = null_branch(ftype)
        inner = schema.deref(opt[1]) if opt else ftype
        if type_name(ftype) == "record":
            encoders.extend(_record_fields(schema, ftype, f"{name}.", kinds))
        elif isinstance(ftype, list) and (opt is None or type_name(inner) == "record"):
            encoders.append(_generic(schema, f["type"], name, kinds))
        else:
            encoders.append(_leaf(schema, inner, name, None if opt is None else opt[0], f["type"], kinds))
    return encoders


def _leaf(  # noqa: PLR0917
    schema: AvroSchema, inner: Any, name: str, null_idx: int | None, full_type: Any, kinds: dict[str, Kind]
) -> FieldEncoder:
    kind = leaf_kind(inner)
    base = type_name(inner)
    if kind in ("decimal", "uuid", "object"):
        return _generic(schema, full_type, name, kinds)
    value: Callable[[Column, Mask | None, _Rows], list[wire.Segment]]
    if base in ("int", "long"):
        value = _ints(name, _INT_RANGE[base], _UNITS.get(kind))
    elif base in ("float", "double"):
        value = _floats(name, "<f4" if base == "float" else "<f8")
    elif base == "boolean":
        value = _bools
    elif base == "enum":
        value = _enum(name, inner["symbols"])
    elif base in ("string", "bytes", "fixed"):
        value = _blobs(name, base, inner.get("size") if isinstance(inner, dict) else None)
    else:
        return _generic(schema, full_type, name, kinds)

    present = 2 * (1 - null_idx) if null_idx is not None else 0  # zigzag of the non-null branch index

    def encode(columns: Batch, rows: _Rows) -> list[wire.Segment]:
        col = _column(columns, name)
        null = _nulls(col)
        if null_idx is None:
            if null is not None:
                rows.fail(null, f"{name}: null in a non-null field")
            return value(col, None if null is None else ~null, rows)
        if null is None:
            return [wire.constant(present, len(col)), *value(col, None, rows)]
        branch = np.where(null, null_idx, 1 - null_idx).astype(np.uint8) * 2  # zigzag of 0 / 1
        return [wire.Segment(branch, None, 1), *value(col, ~null, rows)]

    return encode


def _column(columns: Batch, name: str) -> Column:
    try:
        return columns[name]
    except KeyError:
        raise ConfigError("the score batch has no such column", field=name) from None


def _nulls(col: Column) -> Mask | None:
    """The null rows of ``col``; None when there are none (then no mask work is needed downstream)."""
    kind = col.dtype.kind
    if kind == "f":
        null = np.isnan(col)
    elif kind == "M":
        null = np.isnat(col)
    elif kind == "O":
        null = np.asarray(col == None, dtype=np.bool_)  # noqa: E711 (elementwise, in C)
    else:
        return None
    return null if null.any() else None


def _ints(name: str, bounds: tuple[int, int], unit: str | None) -> Any:
    low, high = bounds
    as_time = np.dtype(f"datetime64[{unit or 'ms'}]")
    checked = bounds != _INT_RANGE["long"]  # every int64 fits a long

    def value(col: Column, write: Mask | None, rows: _Rows) -> list[wire.Segment]:
        if col.dtype.kind == "M":
            col = col.astype(as_time, copy=False).view(np.int64)
        elif col.dtype == object:
            col = np.array(
                [0 if v is None or not isinstance(v, int | np.integer) else v for v in col], dtype=object
            )
        if col.dtype.kind == "f":
            ok = np.isfinite(col) & (np.abs(col) < 2.0**63)
            ok[ok] &= col[ok] == np.floor(col[ok])
            rows.fail(_where(write, ~ok), f"{name}: not an integer")
            col = np.where(ok, col, 0.0)
        ints = (
            col.astype(np.int64, copy=False)
            if col.dtype != object
            else np.array(col.tolist(), dtype=np.int64)
        )
        if checked and len(ints) and (int(ints.min()) < low or int(ints.max()) > high):
            out = _where(write, (ints < low) | (ints > high))
            rows.fail(out, f"{name}: out of range for Avro {unit or 'int/long'}")
        return [wire.longs(ints, write)]

    return value


def _floats(name: str, fmt: str) -> Any:
    def value(col: Column, write: Mask | None, rows: _Rows) -> list[wire.Segment]:
        if col.dtype == object:
            col = np.array([0.0 if v is None else v for v in col], dtype=np.float64)
        out = col.astype(fmt, copy=False)
        if fmt == "<f4":  # struct.pack('<f') (fastavro) refuses finite doubles beyond float32's range
            rows.fail(_where(write, np.isinf(out) & np.isfinite(col)), f"{name}: out of range for Avro float")
        return [wire.fixed_width(out, write)]

    return value


def _bools(col: Column, write: Mask | None, rows: _Rows) -> list[wire.Segment]:
    as_bool = (
        col.astype(np.bool_) if col.dtype != object else np.array([bool(v) for v in col], dtype=np.bool_)
    )
    return [wire.fixed_width(as_bool.astype(np.uint8), write)]


def _enum(name: str, symbols: list[str]) -> Any:
    index = {s: i for i, s in enumerate(symbols)}

    def value(col: Column, write: Mask | None, rows: _Rows) -> list[wire.Segment]:
        idx = np.fromiter((index.get(v, -1) if isinstance(v, str) else -1 for v in col), np.int64, len(col))
        rows.fail(_where(write, idx < 0), f"{name}: not a symbol of the enum")
        return [wire.longs(np.maximum(idx, 0), write)]

    return value


def _blobs(name: str, base: str, size: int | None) -> Any:
    want = str if base == "string" else bytes

    def value(col: Column, write: Mask | None, rows: _Rows) -> list[wire.Segment]:
        keep: Mask | None
        if set(map(type, col)) <= {want}:
            keep = write
        else:
            wrong = np.fromiter((not isinstance(v, want) for v in col), np.bool_, len(col))
            rows.fail(_where(write, wrong), f"{name}: not a {want.__name__}")
            keep = _where(write, ~wrong)
        if base == "string":
            chunks = _utf8(name, col, keep, rows)
        elif keep is None or keep.all():
            chunks = list(col)
        else:
            chunks = [v if k else b"" for v, k in zip(col, keep, strict=True)]
        if size is not None:
            lens = np.fromiter(map(len, chunks), np.int64, len(chunks))
            rows.fail(_where(keep, lens != size), f"{name}: fixed value is not {size} bytes")
            kept = [True] * len(chunks) if keep is None else keep.tolist()
            chunks = [
                c if len(c) == size else bytes(size) if k else b"" for c, k in zip(chunks, kept, strict=True)
            ]
        return wire.blobs(chunks, prefix=size is None, write=keep)

    return value


def _utf8(name: str, col: Column, keep: Mask | None, rows: _Rows) -> list[bytes]:
    try:
        if keep is None or keep.all():
            return list(map(str.encode, col))
        return [v.encode() if k else b"" for v, k in zip(col, keep, strict=True)]
    except UnicodeEncodeError:
        broken = np.zeros(len(col), dtype=np.bool_)
        chunks = []
        kept = [True] * len(col) if keep is None else keep.tolist()
        for i, (v, k) in enumerate(zip(col, kept, strict=True)):
            try:
                chunks.append(v.encode() if k else b"")
            except UnicodeEncodeError:
                broken[i] = True
                chunks.append(b"")
        rows.fail(broken, f"{name}: not encodable as UTF-8")
        return chunks


def _generic(schema: AvroSchema, full_type: Any, name: str, kinds: dict[str, Kind]) -> FieldEncoder:
    """Row by row through fastavro, for the field types the vectorised encoders do not cover."""
    named = dict(schema.named)
    wrapper = fastavro.parse_schema(
        {"type": "record", "name": "_rtml_field", "fields": [{"name": "v", "type": full_type}]},
        named_schemas=named,
    )
    prefix = f"{name}."

    def encode(columns: Batch, rows: _Rows) -> list[wire.Segment]:
        n = batch_len(columns)
        if name in columns:
            kind = kinds.get(name, "object")
            values = [_python(v, kind) for v in columns[name]]
        else:
            values = _records_from_leaves(columns, prefix, n, kinds)
        chunks: list[bytes] = []
        for i, v in enumerate(values):
            buf = io.BytesIO()
            try:
                fastavro.schemaless_writer(buf, wrapper, {"v": v})
            except Exception as exc:  # fastavro's validation of one value: a row error, translated here
                rows.fail(np.arange(n) == i, f"{name}: {type(exc).__name__}: {exc}")
            chunks.append(buf.getvalue())
        return wire.blobs(chunks, prefix=False)

    return encode


def _python(v: Any, kind: Kind) -> Any:
    """A column element as fastavro expects it: NaN and NaT as None, numpy scalars as Python ones."""
    if isinstance(v, float | np.floating):
        if np.isnan(v):
            return None
        return int(v) if kind == "int" and float(v).is_integer() else float(v)
    if isinstance(v, np.datetime64):
        return None if np.isnat(v) else int(v.astype(np.int64))
    return v.item() if isinstance(v, np.generic) else v


class _Node(dict[str, Any]):
    """A record rebuilt from dotted columns (as opposed to a map value, which is a plain dict)."""


def _records_from_leaves(
    columns: Batch, prefix: str, n: int, kinds: dict[str, Kind]
) -> list[dict[str, Any] | None]:
    """Rebuild a nested record per row from its dotted leaf columns; all leaves null means a null record."""
    names = [c for c in columns if c.startswith(prefix)]
    if not names:
        raise ConfigError("the score batch has no column for this record", field=prefix.rstrip("."))
    out: list[dict[str, Any] | None] = []
    for i in range(n):
        rec = _Node()
        for c in names:
            node = rec
            parts = c[len(prefix) :].split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, _Node())
            node[parts[-1]] = _python(columns[c][i], kinds.get(c, "object"))
        out.append(_collapse(rec))
    return out


def _collapse(node: _Node) -> dict[str, Any] | None:
    """Nested records whose columns are all null become null (the flattening cannot tell them apart)."""
    for key, value in node.items():
        if isinstance(value, _Node):
            node[key] = _collapse(value)
    return None if all(v is None for v in node.values()) else dict(node)
