"""Guards against hostile Avro payloads, checked before a payload reaches a general-purpose reader.

``Limits`` are the configurable bounds; ``prescan(schema, body, limits)`` walks one Avro body against its
writer schema without building any value and returns the reason it breaks a guard, or None. It is iterative in
the payload (bounded recursion: at most ``max_depth`` nested values), so a hostile payload can neither exhaust
the stack (fastavro's C reader would crash at 100,000 levels) nor make a reader loop or allocate on a forged
count or length: every length is checked against the bytes that remain, every collection against its budget.

The checking itself is bounded by a count of steps, ``max_scan_steps``, never by time, so every replica gives
a record the same verdict. A collection is where the cost of a record hides, so its items are checked the
cheapest way their type allows (``worker.avro.guard_items``): fixed-width items in one step, varint items
with numpy, other items by a tight loop at a step per value. Only the record's own fields, recursive types
and blocks of a few items are walked value by value, at ``_WALK_STEPS`` a value. A step is about 0.1 us of
work. A fast check stops before the first item that breaks a rule and the walk takes that item on, so the
rule named, and the verdict, are the walk's.
Called by the per-record decode path for each record; pure and thread-safe; never raises on bad bytes.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from worker.avro import guard_items as fast
from worker.avro.schema import PRIMITIVES, AvroSchema

_WALK_STEPS = 8  # a value walked costs about as much as 8 checked by the tight loop
_FAST_MIN = 4  # items: a smaller block is walked, cheaper than looking up how to check its items


class Limits(BaseModel):
    """Bounds a single record must respect; a record beyond any of them is a DecodeError."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_message_bytes: int = Field(default=1 << 20, gt=5)
    max_block_count: int = Field(default=1 << 16, gt=0, description="items in one array/map block")
    max_items: int = Field(default=100_000, gt=0, description="items across all collections of one record")
    max_depth: int = Field(default=64, gt=0, le=500, description="nesting of records, arrays, maps, unions")
    max_scan_steps: int = Field(
        default=20_000,
        gt=0,
        description="the work of checking one record: a step per value in a collection (a map key is one), "
        f"{_WALK_STEPS} per value walked on its own (the record's fields, recursive types), one per block "
        f"of fixed-width items, {fast.NUMPY_STEPS} per block of varints checked with numpy",
    )


class _Violation(Exception):
    pass


class _Scan(fast.Budget):
    """One walk over one body: a cursor, and the budget of items and steps it shares with the fast checks."""

    def __init__(self, schema: AvroSchema, body: bytes, limits: Limits) -> None:
        super().__init__(limits.max_block_count, limits.max_items, limits.max_scan_steps)
        self.s = schema
        self.b = body
        self.pos = 0
        self.limits = limits
        self.stops: fast.Stops | None = None  # made for the first numpy check

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

    def step(self, n: int = _WALK_STEPS) -> None:
        self.steps += n
        if self.steps > self.max_steps:
            raise _Violation(f"checking the record takes more than max_scan_steps={self.max_steps} steps")

    def value(self, schema: Any, depth: int) -> None:
        self.steps += _WALK_STEPS  # self.step(), inlined: once per value walked
        if self.steps > self.max_steps:
            self.step(0)  # raises
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
        self.primitive_or_complex(kind, schema, depth)
        return None

    def primitive_or_complex(self, kind: str, schema: Any, depth: int) -> None:
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

    def blocks(self, item: Any, is_map: bool, depth: int) -> None:
        while True:
            count = self.long()
            if count == 0:
                return
            if count < 0:
                count = -count
                self.long()  # the block's byte size: only a skipping hint
            if count > self.limits.max_block_count:
                raise _Violation(
                    f"block of {count} items exceeds max_block_count={self.limits.max_block_count}"
                )
            self.items += count
            if self.items > self.limits.max_items:
                raise _Violation(f"more than max_items={self.limits.max_items} items in one record")
            if item == "null" and not is_map:
                continue  # null items take no bytes: the budget above is the whole check
            done = self.fast(item, is_map, count, depth) if count >= _FAST_MIN else 0
            for _ in range(count - done):  # every item, or from the first a fast check refused
                if is_map:
                    self.step()
                    self.skip(self.long(), "map key")
                self.value(item, depth + 1)

    def fast(self, item: Any, is_map: bool, count: int, depth: int) -> int:
        """Check the next ``count`` items the cheapest way their type allows; move past those that pass and
        return how many did: the next one breaks a rule, or would take more steps than are left."""
        kind = fast.items_of(self.s, item, is_map, self.limits.max_depth)
        if kind.program is None or depth + 1 + kind.height > self.limits.max_depth:
            return 0  # a recursive type, or too deep: the walk finds the error
        if kind.width is not None:
            self.step(1)
            done, self.pos = fast.check_fixed(kind.width, count, self.pos, len(self.b))
        elif kind.varints and count >= fast.NUMPY_MIN:
            stops = self.stops = self.stops or fast.Stops(self.b)
            self.step(fast.NUMPY_STEPS + stops.steps())
            done, self.pos = fast.check_varints(kind, count, self.pos, self.b, stops)
        else:
            done, self.pos = fast.run(kind, count, self.pos, self.b, self)
        return done


def prescan(schema: AvroSchema, body: bytes, limits: Limits) -> str | None:
    """Why ``body`` breaks a guard or is not one whole value of ``schema`` (trailing bytes), else None."""
    if len(body) > limits.max_message_bytes:
        return f"message of {len(body)} bytes exceeds max_message_bytes={limits.max_message_bytes}"
    scan = _Scan(schema, body, limits)
    try:
        scan.value(schema.parsed, 0)
    except _Violation as exc:
        return str(exc)
    if scan.pos != len(body):
        return f"{len(body) - scan.pos} trailing bytes after the record"
    return None
