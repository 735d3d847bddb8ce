"""Writer-to-reader schema resolution by the Avro specification's rules.

``incompatibility(writer, reader)`` says why data written with ``writer`` cannot always be read as ``reader``
(None when it can): fields added with a default, removed fields, aliases, promotions int->long->float->double,
string<->bytes, union branches and enum defaults. The check is the Schema Registry's BACKWARD rule: every
value the writer can produce must resolve. Called once per new writer schema id, its verdict cached by the
decoder; pure and cheap.
"""

from __future__ import annotations

from typing import Any

from worker.avro.schema import AvroSchema, type_name

PROMOTIONS: dict[str, frozenset[str]] = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}


def short(name: str) -> str:
    """The unqualified part of a full name."""
    return name.rsplit(".", 1)[-1]


def names_match(writer: Any, reader: Any) -> bool:
    """Named types resolve when their unqualified names match or the reader lists the writer's as an alias."""
    w = short(writer["name"])
    return w == short(reader["name"]) or w in {short(a) for a in reader.get("aliases", ())}


def find_writer_field(writer_record: Any, reader_field: Any) -> Any | None:
    """The writer field a reader field reads: same name, else one of the reader field's aliases."""
    by_name = {f["name"]: f for f in writer_record["fields"]}
    for name in (reader_field["name"], *reader_field.get("aliases", ())):
        if name in by_name:
            return by_name[name]
    return None


def first_matching_branch(
    w: AvroSchema, wt: Any, r: AvroSchema, branches: list[Any], seen: set[tuple[str, str]] | None = None
) -> int | None:
    """The reader union branch a non-union writer type resolves to: an exact match first, then a promotion."""
    for exact in (True, False):
        for i, branch in enumerate(branches):
            if (
                _match(
                    w, w.deref(wt), r, r.deref(branch), exact=exact, seen=set() if seen is None else set(seen)
                )
                is None
            ):
                return i
    return None


def incompatibility(writer: AvroSchema, reader: AvroSchema) -> str | None:
    """Why ``writer`` data cannot be read as ``reader``, or None if every value resolves."""
    return _resolve(writer, writer.parsed, reader, reader.parsed, seen=set(), at="")


def _resolve(
    w: AvroSchema, wt: Any, r: AvroSchema, rt: Any, *, seen: set[tuple[str, str]], at: str
) -> str | None:
    wt, rt = w.deref(wt), r.deref(rt)
    if isinstance(wt, list):
        for branch in wt:
            why = _resolve(w, branch, r, rt, seen=seen, at=at)
            if why:
                return why
        return None
    if isinstance(rt, list):
        if first_matching_branch(w, wt, r, rt, seen) is None:
            return f"{at or 'value'}: writer type {type_name(wt)} matches no branch of the reader union"
        return None
    return _match(w, wt, r, rt, exact=False, seen=seen, at=at)


def _match(
    w: AvroSchema, wt: Any, r: AvroSchema, rt: Any, *, exact: bool, seen: set[tuple[str, str]], at: str = ""
) -> str | None:
    wk, rk = type_name(wt), type_name(rt)
    where = at or "value"
    if isinstance(rt, list) or isinstance(wt, list):
        return _resolve(w, wt, r, rt, seen=seen, at=at)
    if wk != rk:
        if not exact and rk in PROMOTIONS.get(wk, frozenset()):
            return None
        return f"{where}: writer type {wk} cannot be read as {rk}"
    if wk in ("record", "enum", "fixed") and not names_match(wt, rt):
        return f"{where}: writer {wk} {wt['name']} does not match reader {rt['name']}"
    if wk == "record":
        return _record(w, wt, r, rt, seen=seen, at=at)
    if wk == "enum":
        missing = [s for s in wt["symbols"] if s not in rt["symbols"]]
        if missing and "default" not in rt:
            return f"{where}: enum symbols {missing} unknown to the reader, which has no default"
    if wk == "fixed" and wt["size"] != rt["size"]:
        return f"{where}: fixed size {wt['size']} cannot be read as size {rt['size']}"
    if wk == "array":
        return _resolve(w, wt["items"], r, rt["items"], seen=seen, at=f"{where}[]")
    if wk == "map":
        return _resolve(w, wt["values"], r, rt["values"], seen=seen, at=f"{where}{{}}")
    return None


def _record(
    w: AvroSchema, wt: Any, r: AvroSchema, rt: Any, *, seen: set[tuple[str, str]], at: str
) -> str | None:
    key = (wt["name"], rt["name"])
    if key in seen:
        return None
    seen.add(key)
    for rf in rt["fields"]:
        path = f"{at}.{rf['name']}" if at else rf["name"]
        wf = find_writer_field(wt, rf)
        if wf is None:
            if "default" not in rf:
                return f"{path}: reader field has no default and the writer does not have it"
            continue
        why = _resolve(w, wf["type"], r, rf["type"], seen=seen, at=path)
        if why:
            return why
    return None
