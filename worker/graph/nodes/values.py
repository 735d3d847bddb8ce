"""Value nodes: fillna, astype, text (lower/upper/strip). Numeric work is numpy; string work runs per
distinct value (worker/graph/nodes/lookup.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from worker.columns import Batch
from worker.graph.nodes.base import ColumnName, NodeBase
from worker.graph.nodes.lookup import remap, remap_all
from worker.graph.plan import Applied, CompileContext, NodeCompiled, Rejection, applied
from worker.graph.types import DATETIMES, ColType, DType, null_mask, physical

Scalar = bool | int | float | str
Column = npt.NDArray[Any]


class Fillna(NodeBase):
    """Replace nulls in ``columns`` with ``value`` (a constant, or a statistic frozen at authoring time)."""

    summary: ClassVar[str] = "replace nulls with a constant"
    kind: Literal["fillna"] = "fillna"
    columns: tuple[ColumnName, ...] = Field(min_length=1)
    value: Scalar

    def compile(self, view: Mapping[str, ColType], ctx: CompileContext) -> NodeCompiled:
        types = self.need_all(view, self.columns)
        fill = {name: self._fill_value(name, ct) for name, ct in types.items()}
        targets = {name: ColType(ct.dtype) for name, ct in types.items()}
        plan = tuple((name, ct, fill[name], physical(targets[name])) for name, ct in types.items())

        def kernel(batch: Batch) -> Applied:
            out = {}
            for name, ct, value, dtype in plan:
                filled = col = batch[name]
                if ct.nullable:
                    null = null_mask(col, ct)
                    if null.any():  # inputs may be read-only views of the decoded batch
                        filled = col.copy()
                        filled[null] = value
                out[name] = filled.astype(dtype, copy=False)
            return Applied(out)

        return NodeCompiled(self.columns, targets, kernel)

    def _fill_value(self, name: str, ct: ColType) -> Any:
        v = self.value
        ok = {
            "float64": isinstance(v, int | float) and not isinstance(v, bool),
            "int64": isinstance(v, int) and not isinstance(v, bool),
            "bool": isinstance(v, bool),
            "string": isinstance(v, str),
        }.get(ct.dtype, ct.dtype in DATETIMES and isinstance(v, str))
        if not ok or ct.width is not None:
            raise self.error(f"fill value {v!r} does not fit column {name!r} ({ct})")
        return np.array([v], dtype=ct.dtype)[0] if ct.dtype in DATETIMES else v


class Astype(NodeBase):
    """Convert ``columns`` to ``dtype``. Unparseable strings (or non-finite floats to int) reject the row,
    or become null with ``on_invalid="null"``. Float to int truncates toward zero, as numpy does."""

    summary: ClassVar[str] = "convert columns to another dtype"
    kind: Literal["astype"] = "astype"
    columns: tuple[ColumnName, ...] = Field(min_length=1)
    dtype: DType
    on_invalid: Literal["reject", "null"] = "reject"

    def compile(self, view: Mapping[str, ColType], ctx: CompileContext) -> NodeCompiled:
        types = self.need_all(view, self.columns)
        may_fail = self.on_invalid == "null"
        targets: dict[str, ColType] = {}
        converters: dict[str, Callable[[Column, ColType], tuple[Column, Any]]] = {}
        for name, ct in types.items():
            conv = _converter(ct.dtype, self.dtype)
            if conv is None or ct.width is not None:
                raise self.error(f"cannot convert column {name!r} from {ct} to {self.dtype}")
            fails = ct.dtype in ("string", "float64") and self.dtype != ct.dtype
            targets[name] = ColType(self.dtype, ct.nullable or (fails and may_fail))
            converters[name] = conv
        reject = self.on_invalid == "reject"
        plan = tuple(
            (name, ct, converters[name], targets[name], physical(targets[name])) for name, ct in types.items()
        )

        def kernel(batch: Batch) -> Applied:
            out, rejected = {}, []
            for name, ct, convert, target, dtype in plan:
                col, invalid = convert(batch[name], ct)
                if invalid is not None and invalid.any():
                    if reject:
                        rejected.append(
                            Rejection(invalid, f"column {name!r}: value cannot become {self.dtype}")
                        )
                        col = np.where(invalid, 0.0, col) if col.dtype.kind == "f" else col
                    else:
                        col = col.astype(physical(ColType(target.dtype, True)))
                        col[invalid] = np.nan if col.dtype.kind == "f" else None
                out[name] = col.astype(dtype, copy=False)
            return applied(out, rejected)

        return NodeCompiled(self.columns, targets, kernel)


# int64 values travel as float64 (NaN marks the refused rows): a value is an int64 when its float is in
# [-2**63, 2**63). Outside, numpy's cast to int64 would give INT64_MIN with only a RuntimeWarning.
_INT64_LOW, _INT64_END = -(2.0**63), 2.0**63


def _fits_int64(number: int) -> bool:
    return -(2**63) <= number < 2**63 and float(number) < _INT64_END


def _converter(src: str, dst: str) -> Callable[[Column, ColType], tuple[Column, Any]] | None:
    if src == dst:
        return lambda col, ct: (col, None)
    if (src == "string" and dst in ("float64", "int64", "bool")) or (src == "string" and dst in DATETIMES):
        return _parser(dst)
    if dst == "string" and src != "bytes":
        return _formatter
    if src in ("float64", "int64", "bool") and dst in ("float64", "int64", "bool"):
        return _numeric(dst)
    if src in DATETIMES and dst in DATETIMES:
        return lambda col, ct: (col.astype(dst), None)
    return None


def _parser(dst: str) -> Callable[[Column, ColType], tuple[Column, Any]]:
    def parse(value: str) -> tuple[Any, bool]:
        text = value.strip()
        try:
            if dst == "float64":
                return float(text), True
            if dst == "int64":
                number = int(text)
                return (number, True) if _fits_int64(number) else (None, False)
            if dst == "bool":
                low = text.lower()
                return low in ("true", "1"), low in ("true", "false", "1", "0")
            return np.array([text], dtype=dst)[0], True
        except ValueError:
            return None, False

    null_value = {"float64": np.nan, "int64": np.nan, "bool": None}.get(dst, np.datetime64("NaT"))
    dtype = {"float64": np.float64, "int64": np.float64, "bool": object}.get(dst, dst)

    def convert(col: Column, ct: ColType) -> tuple[Column, Any]:
        out, invalid = remap(col, None, parse, dtype, null_value)
        out[invalid] = null_value
        return out, invalid

    return convert


def _formatter(col: Column, ct: ColType) -> tuple[Column, Any]:
    null = null_mask(col, ct)
    if ct.dtype == "int64" and ct.nullable:
        col = np.where(null, 0, col).astype(np.int64)
    if ct.dtype == "float64":
        # -0.0 == 0.0, so the distinct values are formatted once for both: whichever came first in the batch
        # would name them all. Adding +0.0 turns -0.0 into 0.0, so both are "0.0" in any order.
        col = col + 0.0
    out, _ = remap(col, null, lambda v: (str(v), True), object, None)
    return out, None


def _numeric(dst: str) -> Callable[[Column, ColType], tuple[Column, Any]]:
    def convert(col: Column, ct: ColType) -> tuple[Column, Any]:
        null = null_mask(col, ct) if ct.nullable else None
        if null is not None and not null.any():
            null = None
        if ct.dtype == "bool" and ct.nullable:  # object True / False / None
            col = (col if null is None else np.where(null, False, col)).astype(np.bool_)
        as_float = col.astype(np.float64)  # from int, bool or float: never a floating-point warning
        if dst == "float64":
            return (as_float if null is None else np.where(null, np.nan, as_float)), None
        if dst == "bool":
            out = (as_float != 0).astype(object)
            if null is not None:
                out[null] = None
            return out, None
        if null is None and col.dtype.kind != "f":  # ints and bools are finite and whole already
            return as_float, None
        if null is None:
            null = np.zeros(len(col), dtype=np.bool_)
        invalid = ~null & ~((as_float >= _INT64_LOW) & (as_float < _INT64_END))  # NaN and inf too
        return np.where(null | invalid, np.nan, np.trunc(as_float)), invalid

    return convert


class Text(NodeBase):
    """String clean-up on ``columns``: ``op`` lower, upper or strip. Nulls stay null."""

    summary: ClassVar[str] = "lower / upper / strip string columns"
    kind: Literal["text"] = "text"
    columns: tuple[ColumnName, ...] = Field(min_length=1)
    op: Literal["lower", "upper", "strip"]

    def compile(self, view: Mapping[str, ColType], ctx: CompileContext) -> NodeCompiled:
        types = self.need_all(view, self.columns)
        for name, ct in types.items():
            if ct.dtype != "string":
                raise self.error(f"column {name!r} is {ct}, text needs a string column")
        fn: Callable[[str], str] = getattr(str, self.op)

        def kernel(batch: Batch) -> Applied:
            return Applied({name: remap_all(batch[name], fn, object, None) for name in types})

        return NodeCompiled(self.columns, dict(types), kernel)
