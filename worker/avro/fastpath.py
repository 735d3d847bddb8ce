"""The fast decode path: one writer schema, a whole batch at once, resolved to the reader schema as it reads.

``compile_fast(writer, reader)`` turns a (writer, reader) pair into a tree of closures once per writer schema;
``FastReader.read(cursor, rows)`` then walks every row of the batch in lockstep, field by field, with numpy
(``worker.avro.vector``), so the per-event cost is a handful of array operations per field. It covers the
common event shapes: primitives, enums, fixed, nested records, ``[null, T]`` unions and logical types.
Arrays, maps, unions of several types and recursive schemas raise ``Unsupported`` at compile time and go to
the per-record path. A row that fails a read, ends early or leaves trailing bytes comes back in ``bad``; the
decoder hands those rows to the per-record path, which says why (or decodes them: that path is the authority).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from worker.avro.convert import raw_to_column
from worker.avro.resolve import PROMOTIONS, find_writer_field, first_matching_branch, names_match
from worker.avro.schema import AvroSchema, Leaf, layout, leaf_kind, null_branch, type_name
from worker.avro.vector import Cursor, Rows, count, subset
from worker.columns import Batch

Raw = npt.NDArray[Any]
Leaves = dict[str, tuple[Raw, npt.NDArray[np.bool_] | None]]
ValueRead = Callable[[Cursor, Rows], Raw]
RecordRead = Callable[[Cursor, Rows], Leaves]
# The epoch offsets fastavro can turn into a datetime / date (years 1 to 9999): [low, limit).
_TS_LIMITS = {
    "ts_ms": (-62_135_596_800_000, 253_402_300_800_000),
    "ts_us": (-62_135_596_800_000_000, 253_402_300_800_000_000),
    "date": (-719_162, 2_932_897),
}


_NOTHING: Raw = np.zeros(0, dtype=np.int64)
_NUMERIC = frozenset({"int", "float", "ts_ms", "ts_us", "date"})


class Unsupported(Exception):
    """The schema pair uses something the fast path does not read; use the per-record path."""


@dataclass(frozen=True)
class FastReader:
    """A compiled reader for one (writer, reader) pair; immutable, reusable across batches."""

    leaves: tuple[Leaf, ...]
    read_record: RecordRead

    def read(self, cursor: Cursor, rows: Rows) -> tuple[npt.NDArray[np.bool_], Batch]:
        """Decode ``rows`` of ``cursor``: (which of them are good, the columns of the good ones)."""
        raw = self.read_record(cursor, rows)
        cursor.fail(rows, cursor.pos[rows] != cursor.end[rows])  # trailing bytes or a short record
        bad = cursor.bad[rows]
        every = not bad.any()
        good = ~bad
        columns: Batch = {}
        for leaf in self.leaves:
            values, null = raw[leaf.name]
            if not every:
                values, null = values[good], None if null is None else null[good]
            columns[leaf.name] = raw_to_column(leaf, values, null)
        return good, columns


def compile_fast(writer: AvroSchema, reader: AvroSchema) -> FastReader:
    """Compile the fast reader; raises ``Unsupported``. The pair must already be known to resolve."""
    if writer.is_recursive() or reader.is_recursive():
        raise Unsupported("recursive schema")
    leaves = layout(reader)
    by_name = {leaf.name: leaf for leaf in leaves}
    rec = _record(
        writer, writer.deref(writer.parsed), reader, reader.deref(reader.parsed), "", by_name=by_name
    )
    return FastReader(leaves=leaves, read_record=rec)


def _record(
    w: AvroSchema, wt: Any, r: AvroSchema, rt: Any, prefix: str, *, by_name: dict[str, Leaf]
) -> RecordRead:
    if type_name(wt) != "record" or not names_match(wt, rt):
        raise Unsupported("record mismatch")
    steps: list[RecordRead] = []
    read_names = set()
    reader_for = {}
    for rf in rt["fields"]:
        wf = find_writer_field(wt, rf)
        if wf is not None:
            reader_for[wf["name"]] = rf
    for wf in wt["fields"]:
        rf = reader_for.get(wf["name"])
        if rf is None:
            steps.append(_discard(_value(w, wf["type"], None, None)))
        else:
            read_names.add(rf["name"])
            steps.append(_field(w, wf["type"], r, rf["type"], f"{prefix}{rf['name']}", by_name=by_name))
    defaults = [rf for rf in rt["fields"] if rf["name"] not in read_names]
    for rf in defaults:
        steps.append(_default(r, rf, f"{prefix}{rf['name']}", by_name=by_name))

    def read(cur: Cursor, rows: Rows) -> Leaves:
        out: Leaves = {}
        for step in steps:
            out.update(step(cur, rows))
        return out

    return read


def _field(
    w: AvroSchema, wt: Any, r: AvroSchema, rt: Any, name: str, *, by_name: dict[str, Leaf]
) -> RecordRead:
    wt, rt = w.deref(wt), r.deref(rt)
    w_opt, r_opt = null_branch(wt), null_branch(rt)
    if (isinstance(wt, list) and w_opt is None) or (isinstance(rt, list) and r_opt is None):
        raise Unsupported("union of several types")
    if w_opt is not None:
        if r_opt is None:
            raise Unsupported("nullable writer, non-null reader")
        null_idx, inner = w_opt
        return _nullable(null_idx, _field(w, inner, r, r_opt[1], name, by_name=by_name))
    if r_opt is not None:
        if type_name(wt) == "null":
            return _all_null(name, by_name)
        if first_matching_branch(w, wt, r, rt) != 1 - r_opt[0]:
            raise Unsupported("writer type matches the null branch")
        rt = r.deref(r_opt[1])
    if type_name(rt) == "record" and name in by_name and by_name[name].kind == "object":
        raise Unsupported("record column")
    if type_name(rt) == "record":
        return _record(w, wt, r, rt, f"{name}.", by_name=by_name)
    value = _value(w, wt, r, rt)
    return lambda cur, rows: {name: (value(cur, rows), None)}


def _nullable(null_idx: int, inner: RecordRead) -> RecordRead:
    def read(cur: Cursor, rows: Rows) -> Leaves:
        branch = cur.long(rows)
        if (branch & ~1).any():  # neither 0 nor 1
            cur.fail(rows, (branch != 0) & (branch != 1))
        present = branch == 1 - null_idx
        absent = ~present
        sub = inner(cur, subset(rows, present))
        out: Leaves = {}
        for leaf, (values, null) in sub.items():
            full = np.empty(len(branch), dtype=values.dtype)
            full[present] = values
            full[absent] = None if values.dtype == object else 0
            if null is None:
                out[leaf] = (full, absent)
            else:
                is_null = absent.copy()
                is_null[present] |= null
                out[leaf] = (full, is_null)
        return out

    return read


def _all_null(name: str, by_name: dict[str, Leaf]) -> RecordRead:
    def read(cur: Cursor, rows: Rows) -> Leaves:
        n = count(rows, len(cur.pos))
        return {name: (np.full(n, None, dtype=object), np.ones(n, dtype=np.bool_))}

    if name not in by_name:
        raise Unsupported("null into a nested record")
    return read


def _discard(value: ValueRead) -> RecordRead:
    def read(cur: Cursor, rows: Rows) -> Leaves:
        value(cur, rows)
        return {}

    return read


def _value(w: AvroSchema, wt: Any, r: AvroSchema | None, rt: Any) -> ValueRead:
    """A reader of one non-record value; ``rt`` None reads and discards."""
    wt = w.deref(wt)
    if r is not None:
        rt = r.deref(rt)
    wk = type_name(wt)
    if isinstance(wt, list):
        opt = null_branch(wt)
        if opt is None or rt is not None:
            raise Unsupported("union")
        inner = _value(w, opt[1], None, None)
        return _skip_nullable(opt[0], inner)
    if wk == "record":
        if rt is not None:
            raise Unsupported("record value")
        fields = [_value(w, f["type"], None, None) for f in wt["fields"]]
        return _skip_all(fields)
    rk = wk if rt is None else type_name(rt)
    if rk != wk and rk not in PROMOTIONS.get(wk, frozenset()):
        raise Unsupported(f"{wk} as {rk}")
    base = _primitive(wk, wt, rt)
    if rt is None:
        return base
    return _checked(base, leaf_kind(rt))


def _primitive(wk: str, wt: Any, rt: Any) -> ValueRead:
    if wk in ("int", "long"):
        return Cursor.long
    if wk == "double":
        return Cursor.double
    if wk == "float":
        return Cursor.float
    if wk == "boolean":
        return Cursor.boolean
    if wk == "null":
        return lambda cur, rows: np.full(count(rows, len(cur.pos)), None, dtype=object)
    if wk == "fixed":
        size = int(wt["size"])
        return lambda cur, rows: cur.bytes(rows, size)
    if wk == "string" or (wk == "bytes" and rt is not None and type_name(rt) == "string"):
        return Cursor.string
    if wk == "bytes":
        return Cursor.bytes
    if wk == "enum":
        return _enum(wt, rt)
    raise Unsupported(wk)


def _enum(wt: Any, rt: Any) -> ValueRead:
    symbols = rt["symbols"] if rt is not None else wt["symbols"]
    default = rt.get("default") if rt is not None else None
    mapped = [s if s in symbols else default for s in wt["symbols"]]
    table = np.array([*mapped, None], dtype=object)
    limit = len(wt["symbols"])

    def read(cur: Cursor, rows: Rows) -> Raw:
        idx = cur.long(rows)
        out_of_range = (idx < 0) | (idx >= limit)
        idx[out_of_range] = limit
        values = table[idx]
        cur.fail(rows, out_of_range | (values == None))  # noqa: E711 (elementwise comparison)
        return values

    return read


def _checked(base: ValueRead, kind: str) -> ValueRead:
    """Add the checks fastavro's logical readers make (dates in range, valid uuids), so both paths agree."""
    if kind in _TS_LIMITS:
        low, limit = _TS_LIMITS[kind]

        def read_ts(cur: Cursor, rows: Rows) -> Raw:
            values = base(cur, rows)
            if len(values) and (int(values.min()) < low or int(values.max()) >= limit):
                cur.fail(rows, (values < low) | (values >= limit))
            return values

        return read_ts
    if kind == "uuid":

        def read_uuid(cur: Cursor, rows: Rows) -> Raw:
            values = base(cur, rows)
            cur.fail(rows, np.fromiter(map(_not_uuid, values), dtype=np.bool_, count=len(values)))
            return values

        return read_uuid
    return base


def _not_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return True
    return False


def _skip_nullable(null_idx: int, inner: ValueRead) -> ValueRead:
    def read(cur: Cursor, rows: Rows) -> Raw:
        branch = cur.long(rows)
        cur.fail(rows, (branch != 0) & (branch != 1))
        inner(cur, subset(rows, branch == 1 - null_idx))
        return branch

    return read


def _skip_all(fields: list[ValueRead]) -> ValueRead:
    def read(cur: Cursor, rows: Rows) -> Raw:
        for f in fields:
            f(cur, rows)
        return _NOTHING

    return read


def _default(r: AvroSchema, rf: Any, name: str, by_name: dict[str, Leaf]) -> RecordRead:
    """Constant columns for a reader field the writer does not have (its default, or null)."""
    value = rf["default"]
    targets = [leaf for leaf in by_name.values() if leaf.name == name or leaf.name.startswith(f"{name}.")]

    def read(cur: Cursor, rows: Rows) -> Leaves:
        out: Leaves = {}
        for leaf in targets:
            v = _dig(value, leaf.name[len(name) :].split(".")[1:])
            filler = 0 if v is None and leaf.kind in _NUMERIC else _raw_default(leaf, v)
            n = count(rows, len(cur.pos))
            out[leaf.name] = (np.full(n, filler, dtype=object), np.full(n, v is None, dtype=np.bool_))
        return out

    return read


def _dig(value: Any, path: list[str]) -> Any:
    for part in path:
        if value is None:
            return None
        value = value[part]
    return value


def _raw_default(leaf: Leaf, value: Any) -> Any:
    """A JSON default as a raw value: Avro encodes bytes and fixed defaults as ISO-8859-1 strings."""
    if value is None:
        return None
    if leaf.kind in ("bytes", "decimal") and isinstance(value, str):
        return value.encode("latin-1")
    return value
