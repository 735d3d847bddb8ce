"""The fast checks behind ``worker.avro.guards``: the items of a collection, many at a time.

``items_of`` compiles an item type once into a flat ``program`` of checks: a varint, a length and its bytes,
a fixed width, an enum index, a union branch, a nested collection. ``run`` checks items with it in a tight
loop, ``check_fixed`` checks items of one fixed width in one step, ``check_varints`` items that are nothing
but varints with numpy. A recursive item type has no program: the guard walks it value by value.

Every check applies the rules of the guard's walk (lengths within the bytes left, varints of 10 bytes at
most, block counts and item and step budgets) and stops before the first item that breaks one, without
saying which: the walk takes that item on and names the rule. A fast check changes how long a verdict
takes, not the verdict. Pure functions, but for the ``Budget`` a record's checks share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from worker.avro.schema import PRIMITIVES, AvroSchema

VARINT, LENGTH, FIXED, ENUM, UNION, COLLECTION = range(6)
# An op: (VARINT, 0), (LENGTH, 0), (FIXED, bytes), (ENUM, symbols), (UNION, programs), (COLLECTION, Items).
Op = tuple[int, Any]
Program = tuple[Op, ...]
NUMPY_MIN = 64  # varint items: below this, the tight loop costs less than numpy's fixed cost
NUMPY_STEPS = 48  # the steps a numpy check counts for: about its fixed cost (a step is about 0.1 us)
_WIDTHS = {"null": 0, "boolean": 1, "float": 4, "double": 8}
_STRING: Program = ((LENGTH, 0),)
_SHIFTS = (7 * np.arange(9)).astype(np.uint64)  # the weights of a varint's first 9 bytes: 63 bits, exact
_CACHE: dict[tuple[int, bool, int], tuple[Any, Items]] = {}  # (id of a type, map?, max depth) -> its Items
_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Items:
    """How the items of a collection are checked. ``program`` None: walk them (a recursive type).
    ``cost``: the steps an item counts for (the values in it, the largest union branch taken, a nested
    collection's items counted when met); ``height``: how deep values nest in an item. ``width``: the bytes
    of every item, when fixed; ``varints``: how many varints an item is, when nothing else (else 0);
    ``symbols``: for items that are one enum index, how many symbols the enum has."""

    program: Program | None
    cost: int = 1
    height: int = 0
    width: int | None = None
    varints: int = 0
    symbols: int | None = None
    nested: bool = False  # the program checks a collection: items and steps are counted as it runs


_WALKED = Items(None)


class Budget:
    """What one record may still use: items of collections, steps of checking, and the block bound (the
    guard's walk is one, so that it and the fast checks count together)."""

    def __init__(self, max_block: int, max_items: int, max_steps: int) -> None:
        self.items = self.steps = 0
        self.max_block, self.max_items, self.max_steps = max_block, max_items, max_steps


def items_of(s: AvroSchema, item: Any, is_map: bool, max_depth: int) -> Items:
    """How to check the items of type ``item`` (a map's values, after their string key), compiled once per
    type. The cache is keyed by the type's definition, an object of one parsed schema (a name could mean
    another type in another schema), and holds it, so its id is not reused while the entry lives."""
    t = definition(s, item)
    key = (id(t), is_map, max_depth)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is t:
        return hit[1]
    kind = _Compiler(s, max_depth).items(t, is_map, (), 0)
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.clear()
    _CACHE[key] = (t, kind)
    return kind


def definition(s: AvroSchema, t: Any) -> Any:
    """``t`` with named references followed and ``{"type": {...}}`` unwrapped, as the walk reads it."""
    while True:
        if isinstance(t, str) and t not in PRIMITIVES:
            t = s.named[t]
        elif isinstance(t, dict) and isinstance(t["type"], dict | list):
            t = t["type"]
        else:
            return t


class _Compiler:
    def __init__(self, s: AvroSchema, max_depth: int) -> None:
        self.s, self.max_depth = s, max_depth

    def items(self, item: Any, is_map: bool, seen: tuple[str, ...], depth: int) -> Items:
        found = self.compile(item, seen, depth)
        if found is None:
            return _WALKED
        ops, cost, height = found
        if is_map:
            # 2 steps for the key: it costs about as much as an item's own bookkeeping
            return Items(_merged(((LENGTH, 0), *ops)), cost + 2, height, nested=_nests(ops))
        ops = _merged(ops)
        kinds = {op for op, _ in ops}
        if kinds <= {FIXED}:
            return Items(ops, cost, height, width=sum(arg for _, arg in ops))
        if kinds == {VARINT}:
            return Items(ops, cost, height, varints=len(ops))
        if kinds == {ENUM} and len(ops) == 1:
            return Items(ops, cost, height, varints=1, symbols=int(ops[0][1]))
        return Items(ops, cost, height, nested=_nests(ops))

    def compile(self, t: Any, seen: tuple[str, ...], depth: int) -> tuple[Program, int, int] | None:
        """(program, cost, height) of a value of type ``t``, read as the guard's walk reads it; None for a
        recursive type, or one nesting deeper than max_depth (the walk refuses it)."""
        if depth > self.max_depth:
            return None
        t = definition(self.s, t)
        if isinstance(t, list):
            branches = [self.compile(b, seen, depth + 1) for b in t]
            found = [b for b in branches if b is not None]
            if len(found) < len(branches):
                return None
            programs = tuple(_merged(b[0]) for b in found)
            return ((UNION, programs),), 1 + max(b[1] for b in found), 1 + max(b[2] for b in found)
        kind = t["type"] if isinstance(t, dict) else t
        if kind in ("int", "long", "string", "bytes"):
            return ((VARINT if kind in ("int", "long") else LENGTH, 0),), 1, 0
        if kind in _WIDTHS or kind == "fixed":
            width = _WIDTHS[kind] if kind in _WIDTHS else int(t["size"])
            return ((FIXED, width),) if width else (), 1, 0
        if kind == "enum":
            return ((ENUM, len(t["symbols"])),), 1, 0
        if kind in ("array", "map"):
            inner = self.items(t["items" if kind == "array" else "values"], kind == "map", seen, depth + 1)
            # 3 steps: entering it and reading its end; each block adds 2 and its items' cost
            return None if inner.program is None else (((COLLECTION, inner),), 3, 1 + inner.height)
        if kind != "record" or t["name"] in seen:
            return None  # a recursive record, or a type the walk refuses
        fields = [self.compile(f["type"], (*seen, t["name"]), depth + 1) for f in t["fields"]]
        parts = [f for f in fields if f is not None]
        if len(parts) < len(fields):
            return None
        ops = tuple(op for f in parts for op in f[0])
        return ops, 1 + sum(f[1] for f in parts), 1 + max((f[2] for f in parts), default=-1)


def _nests(ops: Program) -> bool:
    return any(op == COLLECTION or (op == UNION and any(map(_nests, arg))) for op, arg in ops)


def _merged(ops: Program) -> Program:
    """Adjacent fixed widths as one: the same bytes, one check."""
    out: list[Op] = []
    for op in ops:
        if op[0] == FIXED and out and out[-1][0] == FIXED:
            out[-1] = (FIXED, out[-1][1] + op[1])
        else:
            out.append(op)
    return tuple(out)


def check_fixed(width: int, count: int, pos: int, end: int) -> tuple[int, int]:
    """(items that fit, the position after them) for ``count`` items of ``width`` bytes at ``pos``."""
    fit = count if width == 0 else min(count, (end - pos) // width)
    return fit, pos + fit * width


def run(kind: Items, count: int, pos: int, body: bytes, budget: Budget) -> tuple[int, int]:
    """(items that pass, the position after them) for up to ``count`` items at ``pos``; the items and steps
    of the items that pass are charged to ``budget``, those of the first that fails are not."""
    assert kind.program is not None
    program, cost, end = kind.program, kind.cost, len(body)
    if not kind.nested:  # every item costs ``cost`` steps and counts no items: charged once, at the end
        n = max(0, min(count, (budget.max_steps - budget.steps) // cost))
        done, pos = _strings(n, pos, body) if program == _STRING else _flat(program, n, pos, body, budget)
        budget.steps += done * cost
        return done, pos
    for done in range(count):
        items, steps = budget.items, budget.steps
        budget.steps += cost
        after = _item(program, pos, body, end, budget) if budget.steps <= budget.max_steps else -1
        if after < 0:
            budget.items, budget.steps = items, steps
            return done, pos
        pos = after
    return count, pos


def _flat(program: Program, count: int, pos: int, b: bytes, budget: Budget) -> tuple[int, int]:
    end = len(b)
    for done in range(count):
        after = _item(program, pos, b, end, budget)
        if after < 0:
            return done, pos
        pos = after
    return count, pos


def _strings(count: int, pos: int, b: bytes) -> tuple[int, int]:
    """``_flat`` for items that are one length and its bytes (strings, bytes): the commonest walked item."""
    end = len(b)
    for done in range(count):
        if pos >= end:
            return done, pos
        z = b[pos]
        after = pos + 1
        if z >= 0x80:
            z, after = _varint_rest(b, after, z)
            if after < 0:
                return done, pos
        if z & 1 or (z >> 1) > end - after:  # negative, or past the end
            return done, pos
        pos = after + (z >> 1)
    return count, pos


def _item(program: Program, pos: int, b: bytes, end: int, budget: Budget) -> int:
    """The position after one value of ``program``, or -1 when it breaks a rule."""
    for op, arg in program:
        if op == FIXED:
            pos += arg
            if pos > end:
                return -1
            continue
        if op == COLLECTION:
            pos = _collection(arg, pos, b, end, budget)
            if pos < 0:
                return -1
            continue
        if pos >= end:
            return -1
        z = b[pos]
        pos += 1
        if z >= 0x80:
            z, pos = _varint_rest(b, pos, z)
            if pos < 0:
                return -1
        if op == VARINT:
            continue
        value = (z >> 1) ^ -(z & 1)
        if op == LENGTH:
            if not 0 <= value <= end - pos:
                return -1
            pos += value
        elif op == ENUM:
            if not 0 <= value < arg:
                return -1
        else:  # UNION
            if not 0 <= value < len(arg):
                return -1
            pos = _item(arg[value], pos, b, end, budget)
            if pos < 0:
                return -1
    return pos


def _collection(kind: Items, pos: int, b: bytes, end: int, budget: Budget) -> int:
    """The position after an array or map whose items are ``kind``, or -1 when it breaks a rule."""
    assert kind.program is not None
    while True:
        count, pos = _varint(b, pos, end)
        if pos < 0 or count == 0:
            return pos
        if count < 0:
            count = -count
            pos = _varint(b, pos, end)[1]  # the block's byte size: only a skipping hint
            if pos < 0:
                return -1
        budget.items += count
        budget.steps += 2 if kind.width is not None else 2 + count * kind.cost
        if count > budget.max_block or budget.items > budget.max_items or budget.steps > budget.max_steps:
            return -1
        if kind.width is not None:  # null or fixed-width items (never a map's: its keys vary)
            pos += count * kind.width
            if pos > end:
                return -1
            continue
        for _ in range(count):
            pos = _item(kind.program, pos, b, end, budget)
            if pos < 0:
                return -1


def _varint(b: bytes, pos: int, end: int) -> tuple[int, int]:
    """(value, position after) of the varint at ``pos``; position -1 when it is not one."""
    if pos >= end:
        return 0, -1
    z = b[pos]
    if z < 0x80:
        return (z >> 1) ^ -(z & 1), pos + 1
    z, pos = _varint_rest(b, pos + 1, z)
    return (z >> 1) ^ -(z & 1), pos


def _varint_rest(b: bytes, pos: int, first: int) -> tuple[int, int]:
    """(zigzag-encoded value, position after) of a varint whose first byte ``first`` was read; position -1
    when it runs past the end or beyond 10 bytes, as the walk's ``long`` refuses."""
    acc, shift, end = first & 0x7F, 7, len(b)
    while pos < end:
        byte = b[pos]
        pos += 1
        acc |= (byte & 0x7F) << shift
        if byte < 0x80:
            return acc, pos
        shift += 7
        if shift >= 70:
            return 0, -1
    return 0, -1


class Stops:
    """The offsets of a body's bytes below 0x80 (the last byte of every varint), found on first use."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self._at: npt.NDArray[np.intp] | None = None

    def steps(self) -> int:
        """What finding them costs, in steps (a pass over the body: about 1 us per 2 KiB), if not done."""
        return len(self.body) >> 8 if self._at is None else 0

    def at(self) -> npt.NDArray[np.intp]:
        if self._at is None:
            self._at = np.flatnonzero(np.frombuffer(self.body, dtype=np.uint8) < 0x80)
        return self._at


def check_varints(kind: Items, count: int, pos: int, body: bytes, stops: Stops) -> tuple[int, int]:
    """(items that pass, the position after them) for ``count`` items of ``kind.varints`` varints each,
    enum indices checked against ``kind.symbols``, found with numpy among the body's varint ends."""
    at = stops.at()
    k = kind.varints
    first = int(np.searchsorted(at, pos))
    ends = at[first : first + count * k]
    starts = np.concatenate(([pos], ends[:-1] + 1))
    lens = ends - starts + 1
    too_long = np.flatnonzero(lens > 10)
    fit = (int(too_long[0]) if too_long.size else len(ends)) // k  # items before the first bad varint
    if kind.symbols is not None and fit:
        bad = np.flatnonzero(_not_an_index(body, starts[:fit], lens[:fit], kind.symbols))
        fit = int(bad[0]) if bad.size else fit
    return fit, (int(ends[fit * k - 1]) + 1 if fit else pos)


def _not_an_index(
    body: bytes, starts: npt.NDArray[np.intp], lens: npt.NDArray[np.intp], symbols: int
) -> npt.NDArray[np.bool_]:
    """Which varints (10 bytes at most) do not read as an index in [0, symbols), as the walk reads them:
    the zigzag of their 7-bit groups, a 10th byte adding bits 63 to 69."""
    buf = np.frombuffer(body, dtype=np.uint8)
    width = int(lens.max())
    if width == 1:  # one byte each, the usual case: the bytes are the zigzag values
        z1 = buf[starts]
        one: npt.NDArray[np.bool_] = ((z1 & 1) != 0) | ((z1 >> 1) >= symbols)
        return one
    cols = np.arange(width)
    groups = (buf[np.minimum(starts[:, None] + cols, len(buf) - 1)] & 0x7F).astype(np.uint64)
    groups[cols >= lens[:, None]] = 0
    z = (groups[:, :9] << _SHIFTS[: min(width, 9)]).sum(axis=1, dtype=np.uint64)
    high = groups[:, 9] if width == 10 else np.zeros(len(lens), dtype=np.uint64)
    # z + high * 2**63 reads as an index i in [0, symbols) exactly when it is even and z / 2 < symbols.
    odd = (z & np.uint64(1)) != 0
    out: npt.NDArray[np.bool_] = (high != 0) | odd | ((z >> np.uint64(1)) >= symbols)
    return out
