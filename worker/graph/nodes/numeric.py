"""Numeric nodes on float columns: clip, scale ((x - mean) / std), log1p. Nulls (NaN) stay null; the
output is float64, nullable when the input is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, Self

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from worker.columns import Batch
from worker.graph.nodes.base import ColumnName, NodeBase
from worker.graph.plan import Applied, CompileContext, NodeCompiled
from worker.graph.types import ColType, as_float

FloatFn = Callable[[npt.NDArray[np.float64]], npt.NDArray[Any]]


class _Elementwise(NodeBase):
    """A float function applied to each of ``columns``, in place."""

    columns: tuple[ColumnName, ...] = Field(min_length=1)

    def function(self) -> FloatFn:
        raise NotImplementedError

    def compile(self, view: Mapping[str, ColType], ctx: CompileContext) -> NodeCompiled:
        types = self.need_all(view, self.columns)
        for name, ct in types.items():
            if not ct.numeric or ct.width is not None:
                raise self.error(f"column {name!r} is {ct}, {self.node_kind} needs a numeric column")
        fn = self.function()

        def kernel(batch: Batch) -> Applied:
            with np.errstate(all="ignore"):
                return Applied({name: np.asarray(fn(as_float(batch[name])), np.float64) for name in types})

        produces = {name: ColType("float64", ct.nullable or self.makes_nulls) for name, ct in types.items()}
        return NodeCompiled(self.columns, produces, kernel)

    @property
    def makes_nulls(self) -> bool:
        return False


class Clip(_Elementwise):
    """Clip ``columns`` into [``lower``, ``upper``] (either bound may be omitted)."""

    summary: ClassVar[str] = "clip numeric columns into [lower, upper]"
    kind: Literal["clip"] = "clip"
    lower: float | None = None
    upper: float | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.lower is None and self.upper is None:
            raise ValueError("give 'lower', 'upper' or both")
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError("'lower' is above 'upper'")
        return self

    def function(self) -> FloatFn:
        lo, hi = self.lower, self.upper
        return lambda x: np.clip(x, lo, hi)


class Scale(_Elementwise):
    """Standardise ``columns``: (x - ``mean``) / ``std``, with statistics frozen at authoring time."""

    summary: ClassVar[str] = "standardise: (x - mean) / std"
    kind: Literal["scale"] = "scale"
    mean: float = 0.0
    std: float = Field(default=1.0, gt=0)

    def function(self) -> FloatFn:
        mean, std = self.mean, self.std
        return lambda x: (x - mean) / std


class Log1p(_Elementwise):
    """log(1 + x) of ``columns``; values below -1 become null (NaN), -1 becomes -inf."""

    summary: ClassVar[str] = "log(1 + x)"
    kind: Literal["log1p"] = "log1p"

    def function(self) -> FloatFn:
        return np.log1p

    @property
    def makes_nulls(self) -> bool:
        return True
