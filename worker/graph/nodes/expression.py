"""The safe expression node: one new column computed from a whitelisted, vectorised expression."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

from pydantic import Field

from worker.columns import Batch
from worker.graph.expr import ExprError, compile_expr
from worker.graph.nodes.base import ColumnName, NodeBase
from worker.graph.plan import Applied, CompileContext, NodeCompiled
from worker.graph.types import ColType


class Expr(NodeBase):
    """``output`` = ``expr`` evaluated over whole columns (see worker/graph/expr.py for what is allowed).
    A numeric result is float64 (nullable: NaN propagates); a condition gives a non-null bool."""

    summary: ClassVar[str] = "a safe vectorised expression, e.g. 'km / (age + 1)'"
    kind: Literal["expr"] = "expr"
    expr: str = Field(min_length=1, max_length=2000)
    output: ColumnName

    def compile(self, view: Mapping[str, ColType], ctx: CompileContext) -> NodeCompiled:
        try:
            expression = compile_expr(self.expr, view)
        except ExprError as exc:
            raise self.error(str(exc)) from exc
        if not expression.columns:
            raise self.error(f"expression {self.expr!r} reads no column")
        output, first = self.output, expression.columns[0]

        def kernel(batch: Batch) -> Applied:
            return Applied({output: expression.evaluate(batch, len(batch[first]))})

        ct = ColType("bool") if expression.kind == "bool" else ColType("float64", nullable=True)
        return NodeCompiled(expression.columns, {output: ct}, kernel)
