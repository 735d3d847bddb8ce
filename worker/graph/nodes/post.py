"""Post-processing nodes: pick one class's probability from a 2-D column, threshold a score into a label."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal, Self

import numpy as np
from pydantic import model_validator

from worker.columns import Batch
from worker.graph.nodes.base import ColumnName, NodeBase
from worker.graph.plan import Applied, CompileContext, NodeCompiled
from worker.graph.types import ColType, as_float, null_mask


class PickProba(NodeBase):
    """Take one class's column out of a 2-D probability column (an ONNX tensor or ZipMap output), by ``index``
    or by class ``label`` (when the model declares its labels)."""

    summary: ClassVar[str] = "pick one class probability from a 2-D column"
    kind: Literal["pick"] = "pick"
    column: ColumnName
    index: int | None = None
    label: str | int | None = None
    output: ColumnName

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.index is None) == (self.label is None):
            raise ValueError("give exactly one of 'index' or 'label'")
        return self

    def compile(self, view: Mapping[str, ColType], ctx: CompileContext) -> NodeCompiled:
        ct = self.need(view, self.column)
        if ct.width is None:
            raise self.error(f"column {self.column!r} is {ct}, not a 2-D probability column")
        index = self.index
        if self.label is not None:
            if ct.labels is None:
                raise self.error(f"column {self.column!r} has no class labels; pick by 'index'")
            if str(self.label) not in ct.labels:
                raise self.error(f"class {self.label!r} not among {list(ct.labels)}")
            index = ct.labels.index(str(self.label))
        assert index is not None
        if not 0 <= index < ct.width:
            raise self.error(f"index {index} out of range for {ct.width} classes")
        source, output, i = self.column, self.output, index

        def kernel(batch: Batch) -> Applied:
            return Applied({output: np.ascontiguousarray(batch[source][:, i])})

        return NodeCompiled((source,), {output: ColType("float64", ct.nullable)}, kernel)


class Threshold(NodeBase):
    """``output`` = ``above`` where score ``column`` >= ``threshold``, else ``below`` (both strings, or both
    omitted for a bool). Null scores give a null label."""

    summary: ClassVar[str] = "threshold a score into a label"
    kind: Literal["threshold"] = "threshold"
    column: ColumnName
    threshold: float
    output: ColumnName
    above: str | None = None
    below: str | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.above is None) != (self.below is None):
            raise ValueError("give both 'above' and 'below' labels, or neither for a bool")
        return self

    def compile(self, view: Mapping[str, ColType], ctx: CompileContext) -> NodeCompiled:
        ct = self.need(view, self.column)
        if not ct.numeric or ct.width is not None:
            raise self.error(f"column {self.column!r} is {ct}, threshold needs a numeric column")
        source, output, t = self.column, self.output, self.threshold
        labels = None if self.above is None else np.array([self.below, self.above, None], dtype=object)

        def kernel(batch: Batch) -> Applied:
            col = batch[source]
            hit = as_float(col) >= t
            null = null_mask(col, ct)
            if labels is None:
                if not ct.nullable:
                    return Applied({output: hit})
                out = hit.astype(object)
                out[null] = None
                return Applied({output: out})
            return Applied({output: labels[np.where(null, 2, hit.astype(np.intp))]})

        dtype: Literal["string", "bool"] = "bool" if labels is None else "string"
        return NodeCompiled((source,), {output: ColType(dtype, ct.nullable)}, kernel)
