"""The guards' fast checks give the verdicts of the item-by-item walk and bound the work of checking a record.

``reference`` below is the guard walk as it was before collections had fast checks: every item walked in
Python. ``prescan`` must agree with it on every body (the same reason, or None both) whenever the step
budget is not what stops it, and must stop hostile shapes by that budget, deterministically.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_avro_strategies import record_schemas, values

from worker.avro import guard_items
from worker.avro.decoder import BatchDecoder
from worker.avro.guards import Limits, prescan
from worker.avro.schema import PRIMITIVES, AvroSchema

ROOT = Path(__file__).parents[2]
UNBOUNDED = Limits(max_scan_steps=10**12)  # only the other limits apply, as in the reference walk
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- the reference: the item-by-item walk ----------------------------------------------------------------


class _Violation(Exception):
    pass


class _Walk:
    def __init__(self, schema: AvroSchema, body: bytes, limits: Limits) -> None:
        self.s, self.b, self.pos, self.limits, self.items = schema, body, 0, limits, 0

    def long(self) -> int:
        b, pos, shift, acc = self.b, self.pos, 0, 0
        while True:
            if pos >= len(b):
                raise _Violation("truncated: varint runs past the end")
            byte = b[pos]
            pos += 1
            acc |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
            if shift >= 70:
                raise _Violation("varint longer than 10 bytes")
        self.pos = pos
        return (acc >> 1) ^ -(acc & 1)

    def skip(self, n: int, what: str) -> None:
        if n < 0:
            raise _Violation(f"negative {what} length {n}")
        if n > len(self.b) - self.pos:
            raise _Violation(f"{what} length {n} runs past the end ({len(self.b) - self.pos} bytes left)")
        self.pos += n

    def value(self, schema: Any, depth: int) -> None:
        if depth > self.limits.max_depth:
            raise _Violation(f"nesting deeper than max_depth={self.limits.max_depth}")
        if isinstance(schema, str) and schema not in PRIMITIVES:
            schema = self.s.named[schema]
        if isinstance(schema, list):
            branch = self.long()
            if not 0 <= branch < len(schema):
                raise _Violation(f"union branch {branch} out of range")
            return self.value(schema[branch], depth + 1)
        kind = schema["type"] if isinstance(schema, dict) else schema
        if isinstance(kind, dict | list):
            return self.value(kind, depth)
        if kind in ("int", "long", "enum"):
            value = self.long()
            if kind == "enum" and not 0 <= value < len(schema["symbols"]):
                raise _Violation(f"enum index {value} out of range")
        elif kind in ("string", "bytes"):
            self.skip(self.long(), kind)
        elif kind == "boolean":
            self.skip(1, kind)
        elif kind in ("float", "double"):
            self.skip(4 if kind == "float" else 8, kind)
        elif kind == "fixed":
            self.skip(schema["size"], kind)
        elif kind == "record":
            for field in schema["fields"]:
                self.value(field["type"], depth + 1)
        elif kind in ("array", "map"):
            self.blocks(schema["items"] if kind == "array" else schema["values"], kind == "map", depth)
        elif kind != "null":
            raise _Violation(f"unknown type {kind!r}")
        return None

    def blocks(self, item: Any, is_map: bool, depth: int) -> None:
        while True:
            count = self.long()
            if count == 0:
                return
            if count < 0:
                count = -count
                self.long()
            if count > self.limits.max_block_count:
                raise _Violation(
                    f"block of {count} items exceeds max_block_count={self.limits.max_block_count}"
                )
            self.items += count
            if self.items > self.limits.max_items:
                raise _Violation(f"more than max_items={self.limits.max_items} items in one record")
            if item == "null" and not is_map:
                continue
            for _ in range(count):
                if is_map:
                    self.skip(self.long(), "map key")
                self.value(item, depth + 1)


def reference(schema: AvroSchema, body: bytes, limits: Limits) -> str | None:
    if len(body) > limits.max_message_bytes:
        return f"message of {len(body)} bytes exceeds max_message_bytes={limits.max_message_bytes}"
    walk = _Walk(schema, body, limits)
    try:
        walk.value(schema.parsed, 0)
    except _Violation as exc:
        return str(exc)
    if walk.pos != len(body):
        return f"{len(body) - walk.pos} trailing bytes after the record"
    return None


# --- bodies with many items, written block by block ------------------------------------------------------


def long(n: int, pad: int = 0) -> bytes:
    """Avro zigzag varint; ``pad`` extra bytes make a longer, non-canonical encoding of the same value."""
    z = (n << 1) ^ (n >> 63) if -(2**63) <= n < 2**63 else n
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    for _ in range(pad):
        out[-1] |= 0x80
        out.append(0)
    return bytes(out)


SMALL_LONGS = st.integers(-70, 70)
LONGS = st.one_of(SMALL_LONGS, st.integers(-(2**63), 2**63 - 1))


@st.composite
def varint(draw: Any, ints: st.SearchStrategy[int] = LONGS, pads: bool = True) -> bytes:
    value = draw(ints)
    canonical = long(value)
    pad = draw(st.sampled_from([0] * 6 + [1, 10 - len(canonical)])) if pads else 0
    return long(value, max(0, min(pad, 10 - len(canonical))))


def rec(name: str, **fields: Any) -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": [{"name": k, "type": t} for k, t in fields.items()]}


ITEM_TYPES: list[Any] = [
    "long",
    "int",
    "double",
    "float",
    "boolean",
    "null",
    "string",
    {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]},
    {"type": "enum", "name": "Wide", "symbols": [f"S{i}" for i in range(300)]},
    {"type": "fixed", "name": "F3", "size": 3},
    rec("LL", a="long", b="int"),
    rec("DB", a="double", b="boolean"),
    rec("LS", a="long", b="string"),
    rec("Empty"),
    ["null", "long"],
    {"type": "array", "items": "long"},
    {"type": "array", "items": "double"},
    {"type": "array", "items": "null"},
    {"type": "map", "values": "double"},
    {"type": "array", "items": ["null", rec("In", x="long")]},
]


def label(t: Any) -> str:
    if isinstance(t, list):
        return "|".join(map(label, t))
    if isinstance(t, str):
        return t
    if t["type"] in ("array", "map"):
        return f"{t['type']}<{label(t['items' if t['type'] == 'array' else 'values'])}>"
    return f"{t['type']} {t['name']}"


@st.composite
def encoded(draw: Any, t: Any, depth: int = 0, pads: bool = True) -> bytes:
    """The bytes of a valid value of item type ``t`` (one of ``ITEM_TYPES`` or a part of one)."""
    if isinstance(t, list):
        branch = draw(st.one_of(st.just(len(t) - 1), st.integers(0, len(t) - 1)))
        return long(branch) + draw(encoded(t[branch], depth + 1))
    kind = t["type"] if isinstance(t, dict) else t
    if kind in ("long", "int"):
        return draw(varint(SMALL_LONGS if depth else LONGS, pads))
    if kind in ("double", "float", "boolean", "fixed"):
        size = {"double": 8, "float": 4, "boolean": 1}.get(kind) or t["size"]
        return draw(st.binary(min_size=size, max_size=size))
    if kind == "null":
        return b""
    if kind == "string":
        text = draw(st.binary(max_size=5))
        return long(len(text)) + text
    if kind == "enum":
        last = len(t["symbols"]) - 1  # often the last index: one zigzag step from out of range
        return draw(varint(st.one_of(st.just(last), st.integers(0, last)), pads))
    if kind == "record":
        return b"".join(draw(encoded(f["type"], depth + 1, pads)) for f in t["fields"])
    inner = t["items"] if kind == "array" else t["values"]
    return draw(collection(inner, kind == "map", 0, draw(st.sampled_from([3, 3, 3, 50])), depth + 1))


@st.composite
def collection(draw: Any, item: Any, is_map: bool, least: int, most: int, depth: int = 0) -> bytes:
    """An array or map of ``least`` to ``most`` items in random blocks; some with a negative count and a
    byte size, as the spec allows."""
    n = draw(st.integers(least, most))
    out = bytearray()
    done = 0
    while done < n:  # one block of all items half the time: the fast checks' favourite
        size = n - done if draw(st.booleans()) else draw(st.integers(1, n - done))
        items = b"".join((long(0) if is_map else b"") + draw(encoded(item, depth)) for _ in range(size))
        out += long(-size) + long(len(items)) if draw(st.booleans()) else long(size)
        out += items
        done += size
    return bytes(out + long(0))


def holder(item: Any, is_map: bool) -> AvroSchema:
    kind = {"type": "map", "values": item} if is_map else {"type": "array", "items": item}
    return AvroSchema.parse(
        {
            "type": "record",
            "name": "H",
            "fields": [{"name": "id", "type": "int"}, {"name": "c", "type": kind}],
        }
    )


@st.composite
def mutated(draw: Any, body: bytes) -> bytes:
    """``body`` as it is, cut short, with a byte changed, inserted or dropped."""
    how = draw(st.sampled_from(["same", "cut", "change", "insert", "drop"]))
    if how == "same" or not body:
        return body
    at = draw(st.integers(0, len(body) - 1))
    if how == "cut":
        return body[:at]
    if how == "change":
        return body[:at] + bytes([draw(st.integers(0, 255))]) + body[at + 1 :]
    if how == "insert":
        return body[:at] + draw(st.binary(min_size=1, max_size=3)) + body[at:]
    return body[:at] + body[at + 1 :]


LIMITS = st.sampled_from(
    [UNBOUNDED, Limits(max_scan_steps=10**12, max_items=150, max_block_count=40, max_depth=3)]
)


@SETTINGS
@given(st.data(), st.sampled_from(range(len(ITEM_TYPES))), st.booleans(), LIMITS)
def test_many_items_get_the_verdict_of_the_item_by_item_walk(
    data: Any, which: int, is_map: bool, limits: Limits
) -> None:
    item = ITEM_TYPES[which]
    schema = holder(item, is_map)
    body = long(7) + data.draw(collection(item, is_map, 0, 120))
    body = data.draw(mutated(body))

    assert prescan(schema, body, limits) == reference(schema, body, limits)


EDGES = (0x00, 0x01, 0x7F, 0x80, 0xFF)  # bytes that end, continue or overflow a varint, or empty a length


def variants(data: Any, body: bytes) -> list[bytes]:
    """``body`` cut at each position, and with each byte set to an edge value or moved by one zigzag step
    (an enum index, a union branch or a length one past its bound): every rule met at its boundary."""
    out = [body[:at] for at in range(len(body))]
    for at, byte in enumerate(body):
        for new in {data.draw(st.sampled_from(EDGES)), (byte + 2) % 256}:
            out.append(body[:at] + bytes([new]) + body[at + 1 :])
    return out


@pytest.mark.parametrize("is_map", [False, True], ids=["array", "map"])
@pytest.mark.parametrize("item", ITEM_TYPES, ids=[label(t) for t in ITEM_TYPES])
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), limits=LIMITS)
def test_every_cut_and_edge_byte_of_a_collection_gets_the_verdict_of_the_walk(
    item: Any, is_map: bool, data: Any, limits: Limits
) -> None:
    schema = holder(item, is_map)
    body = long(7) + data.draw(collection(item, is_map, 4, 12))

    for variant in variants(data, body):
        assert prescan(schema, variant, limits) == reference(schema, variant, limits), variant.hex()


VARINT_ITEMS = [t for t in ITEM_TYPES if label(t) in ("long", "int", "enum E", "enum Wide", "record LL")]


@pytest.mark.parametrize("pads", [False, True], ids=["canonical", "padded"])
@pytest.mark.parametrize("item", VARINT_ITEMS, ids=[label(t) for t in VARINT_ITEMS])
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_cut_and_edge_byte_of_a_numpy_checked_block_gets_the_verdict_of_the_walk(
    item: Any, pads: bool, data: Any
) -> None:
    # Canonical small enum indices are one byte each, numpy's quick case; padded varints (up to 10 bytes,
    # the same value) take the general one, where a 10th byte carries bits 63 to 69.
    schema = holder(item, False)
    n = data.draw(st.integers(guard_items.NUMPY_MIN, guard_items.NUMPY_MIN + 8))
    body = long(7) + long(n) + b"".join(data.draw(encoded(item, pads=pads)) for _ in range(n)) + long(0)

    for variant in variants(data, body):
        assert prescan(schema, variant, UNBOUNDED) == reference(schema, variant, UNBOUNDED), variant.hex()


@SETTINGS
@given(st.data())
def test_random_schemas_and_values_get_the_verdict_of_the_walk(data: Any) -> None:
    raw = data.draw(record_schemas())
    schema = AvroSchema.parse(raw)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema.parsed, data.draw(values(raw)))
    body = data.draw(mutated(buf.getvalue()))

    assert prescan(schema, body, UNBOUNDED) == reference(schema, body, UNBOUNDED)


# --- hostile shapes: the car-insurance event with one writer-only collection of 99,000 items --------------

READER = json.loads((ROOT / "schemas" / "car_insurance_event.avsc").read_text())
EVENT = {
    "ecid": "e-1", "km": 12000, "cartype": "SUV", "age": 42, "gender": "f", "carbrand": "vw",
    "leasing": False, "city": "Basel", "country": "CH", "nationality": "CH", "primaryuser": "yes",
    "pricequote": 812.5, "timestamp": 1_700_000_000_000,
}  # fmt: skip
ITEM = {
    "long": long(123_456),
    "double": b"\x00" * 7 + b"\x3f",
    "float": b"\x00\x00\x80\x3f",
    "boolean": b"\x01",
    "string": long(2) + b"ab",
    "small record": long(5) + long(1) + b"x",
}
SMALL = rec("Small", a="long", b="string")


def hostile(item: str, is_map: bool = False, n: int = 99_000) -> tuple[AvroSchema, bytes]:
    """The writer schema (the event plus ``blob``, resolvable to the event) and one body, its ``blob``
    holding ``n`` items in blocks under max_block_count (map keys all empty: the wire allows repeats)."""
    t: Any = SMALL if item == "small record" else item
    blob = {"type": "map", "values": t} if is_map else {"type": "array", "items": t}
    writer = {
        **READER,
        "fields": [*READER["fields"], {"name": "blob", "type": blob, "default": {} if is_map else []}],
    }
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(READER), EVENT)
    entry = (long(0) if is_map else b"") + ITEM[item]
    blocks = b"".join(long(k) + entry * k for k in (50_000, n - 50_000))
    return AvroSchema.parse(writer), buf.getvalue() + blocks + long(0)


@pytest.mark.parametrize("item", ["long", "double", "float", "boolean"])
def test_99000_numbers_pass_at_a_cost_independent_of_their_count(item: str) -> None:
    schema, body = hostile(item)

    assert reference(schema, body, Limits()) is None
    # The event's fields, two blocks, and for varints one numpy pass over the body: far under a step an item.
    assert prescan(schema, body, Limits(max_scan_steps=5_000)) is None


@pytest.mark.parametrize(
    ("item", "is_map"), [("string", False), ("small record", False), ("long", True), ("double", True)]
)
def test_99000_strings_records_or_map_entries_are_refused_by_the_step_budget(item: str, is_map: bool) -> None:
    schema, body = hostile(item, is_map)

    assert reference(schema, body, Limits()) is None  # within every other limit
    reason = prescan(schema, body, Limits())
    assert reason == "checking the record takes more than max_scan_steps=20000 steps"
    assert prescan(schema, body, Limits()) == reason  # a count, not a clock: the same on every replica
    assert prescan(schema, body, UNBOUNDED) is None


def test_the_decoder_dead_letters_a_record_over_the_step_budget_and_keeps_its_neighbours() -> None:
    schema, body = hostile("string")
    good = body[: body.index(long(50_000))] + long(2) + ITEM["string"] * 2 + long(0)  # a blob of 2 strings
    decoder = BatchDecoder(AvroSchema.parse(READER), writer=schema)

    result = decoder.decode([good, body, good], topic="t", partitions=[0] * 3, offsets=[0, 1, 2])

    assert result.rows.tolist() == [0, 2]
    assert "max_scan_steps" in result.errors[1].reason  # type: ignore[union-attr]


def test_a_long_array_is_checked_with_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = guard_items.check_varints

    def spy(kind: Any, count: int, *args: Any) -> Any:
        calls.append(count)
        return real(kind, count, *args)

    monkeypatch.setattr(guard_items, "check_varints", spy)
    schema, body = hostile("long")

    assert prescan(schema, body, Limits()) is None
    assert calls == [50_000, 49_000]


def test_a_type_name_means_its_own_schema_s_type_in_the_cache() -> None:
    def with_t(t_field: str) -> AvroSchema:
        t = {"type": "record", "name": "T", "fields": [{"name": "v", "type": t_field}]}
        return AvroSchema.parse({"type": "record", "name": "R", "fields": [
            {"name": "t", "type": t}, {"name": "ts", "type": {"type": "array", "items": "T"}}]})  # fmt: skip

    longs, strings = with_t("long"), with_t("string")
    body = long(1) + long(40) + long(3) * 40 + long(0)  # a T, then 40 Ts: longs 3, or 40 strings of 1 byte

    for schema in (longs, strings, longs):
        assert prescan(schema, body, UNBOUNDED) == reference(schema, body, UNBOUNDED)
