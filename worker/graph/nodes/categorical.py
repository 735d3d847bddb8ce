"""Categorical nodes: map, top-k grouping, one-hot encoding, numeric bucketing. Categories, mappings and bin
edges are frozen at authoring time, so scoring never learns from the stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import repeat
from typing import Any, ClassVar, Literal, Self

import numpy as np
from pydantic import Field, model_validator

from worker.columns import Batch
from worker.graph.nodes.base import ColumnName, NodeBase
from worker.graph.nodes.lookup import remap_all
from worker.graph.plan import Applied, CompileContext, NodeCompiled, Rejection, applied
from worker.graph.types import ColType, as_float


class Map(NodeBase):
    """Look up each value of string ``column`` in ``mapping`` (e.g. ``{"vw": "volkswagen"}``).

    Unmapped values: ``unmapped="keep"`` keeps them (string targets only), ``"null"`` makes them null,
    ``"default"`` gives ``default``. Nulls stay null. Targets are all strings or all numbers (float64).
    """

    summary: ClassVar[str] = "dict lookup on a string column, with an explicit rule for unmapped values"
    kind: Literal["map"] = "map"
    column: ColumnName
    mapping: dict[str, str] | dict[str, float] = Field(min_length=1)
    unmapped: Literal["keep", "null", "default"] = "keep"
    default: str | float | None = None
    output: ColumnName | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        numeric = not isinstance(next(iter(self.mapping.values())), str)
        if (self.unmapped == "default") != (self.default is not None):
            raise ValueError("'default' is given exactly when unmapped is 'default'")
        if self.default is not None and isinstance(self.default, str) == numeric:
            raise ValueError("'default' must have the type of the mapping's values")
        if numeric and self.unmapped == "keep":
            raise ValueError("unmapped 'keep' needs string targets; use 'null' or 'default'")
        return self

    def compile(self, view: Mapping[str, ColType], ctx: CompileContext) -> NodeCompiled:
        ct = self.need(view, self.column)
        if ct.dtype != "string":
            raise self.error(f"column {self.column!r} is {ct}, map needs a string column")
        numeric = not isinstance(next(iter(self.mapping.values())), str)
        nullable = ct.nullable or self.unmapped == "null"
        target = ColType("float64" if numeric else "string", nullable)
        table: dict[str, Any] = dict(self.mapping)
        keep, default = self.unmapped == "keep", self.default
        null_value = np.nan if numeric else None
        source, output = self.column, self.output or self.column

        def lookup(value: str) -> Any:
            found = table.get(value, value if keep else default)
            return null_value if found is None else found

        def kernel(batch: Batch) -> Applied:
            return Applied(
                {output: remap_all(batch[source], lookup, np.float64 if numeric else object, null_value)}
            )

        return NodeCompiled((source,), {output: target}, kernel)


class TopK(NodeBase):
    """Keep the categories in ``keep`` (the top k, frozen at authoring time); every other non-null value
    becomes ``other``."""

    summary: ClassVar[str] = "group categories outside a frozen top-k into 'Others'"
    kind: Literal["top_k"] = "top_k"
    column: ColumnName
    keep: tuple[str, ...] = Field(min_length=1)
    other: str = "Others"
    output: ColumnName | None = None

    def compile(self, view: Mapping[str, ColType], ctx: CompileContext) -> NodeCompiled:
        ct = self.need(view, self.column)
        if ct.dtype != "string":
            raise self.error(f"column {self.column!r} is {ct}, top_k needs a string column")
        kept, other = frozenset(self.keep), self.other
        source, output = self.column, self.output or self.column

        def kernel(batch: Batch) -> Applied:
            return Applied(
                {output: remap_all(batch[source], lambda v: v if v in kept else other, object, None)}
            )

        return NodeCompiled((source,), {output: ct}, kernel)


class OneHotEncoder(NodeBase):
    """One column per category of string ``column``, named like pandas ``get_dummies``:
    ``{prefix}_{category}`` (prefix defaults to the column). ``drop_first`` drops the first category's column.
    Nulls encode as all zeros; values outside ``categories`` encode as all zeros (``handle_unknown="ignore"``)
    or reject the row. The source column is removed unless ``keep_source``."""

    summary: ClassVar[str] = "one-hot encode with categories frozen at authoring time"
    kind: Literal["one_hot"] = "one_hot"
    column: ColumnName
    categories: tuple[str, ...] = Field(min_length=1)
    prefix: str | None = None
    drop_first: bool = False
    handle_unknown: Literal["ignore", "reject"] = "ignore"
    dtype: Literal["float64", "int64", "bool"] = "float64"
    keep_source: bool = False

    def compile(self, view: Mapping[str, ColType], ctx: CompileContext) -> NodeCompiled:
        ct = self.need(view, self.column)
        if ct.dtype != "string":
            raise self.error(f"column {self.column!r} is {ct}, one_hot needs a string column")
        if len(set(self.categories)) != len(self.categories):
            raise self.error("categories repeat a value")
        prefix, source = self.prefix if self.prefix is not None else self.column, self.column
        cats = self.categories[1:] if self.drop_first else self.categories
        names = [f"{prefix}_{c}" for c in cats]
        # Codes: a category's index, then ``unknown``, then null (only a nullable column holds None). Row j of
        # ``table`` is output column j over the codes, so one gather builds every column as a contiguous row.
        unknown = len(self.categories)
        codes_of: dict[Any, int] = {c: i for i, c in enumerate(self.categories)}
        if ct.nullable:
            codes_of[None] = unknown + 1
        offset = 1 if self.drop_first else 0
        table = np.zeros((len(names), unknown + 2), dtype=self.dtype)
        table[np.arange(len(names)), np.arange(len(names)) + offset] = 1
        reject = self.handle_unknown == "reject"

        def kernel(batch: Batch) -> Applied:
            values = batch[source].tolist()
            codes = np.fromiter(map(codes_of.get, values, repeat(unknown)), dtype=np.intp, count=len(values))
            out = dict(zip(names, table.take(codes, axis=1), strict=True))
            if not reject:
                return Applied(out)
            rejected = Rejection(codes == unknown, f"column {source!r}: category not in the frozen list")
            return applied(out, [rejected])

        produces = {name: ColType(self.dtype) for name in names}
        removes = frozenset() if self.keep_source else frozenset({source}) - set(names)
        return NodeCompiled((source,), produces, kernel, removes=removes)


class Bucketize(NodeBase):
    """Label numeric ``column`` by bins between ``edges`` (``len(labels) == len(edges) - 1``), each bin closed
    on the side ``closed`` names, as ``pandas.cut(right=closed == "right")``. Outside values and nulls get
    ``outside`` (null when None)."""

    summary: ClassVar[str] = "numeric bucketing into labels, closed side explicit"
    kind: Literal["bucketize"] = "bucketize"
    column: ColumnName
    edges: tuple[float, ...] = Field(min_length=2)
    labels: tuple[str, ...] = Field(min_length=1)
    closed: Literal["right", "left"]
    outside: str | None = None
    output: ColumnName | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if len(self.labels) != len(self.edges) - 1:
            raise ValueError("need exactly one label per bin: len(labels) == len(edges) - 1")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges must increase strictly")
        return self

    def compile(self, view: Mapping[str, ColType], ctx: CompileContext) -> NodeCompiled:
        ct = self.need(view, self.column)
        if not ct.numeric or ct.width is not None:
            raise self.error(f"column {self.column!r} is {ct}, bucketize needs a numeric column")
        edges = np.asarray(self.edges, dtype=np.float64)
        side: Literal["left", "right"] = "left" if self.closed == "right" else "right"
        source, output = self.column, self.output or self.column
        # searchsorted gives 0 below the first bin, len(edges) above the last (NaN sorts last), and i for bin
        # i - 1 in between: with ``outside`` at both ends of the table, one gather labels every row.
        table = np.array([self.outside, *self.labels, self.outside], dtype=object)

        def kernel(batch: Batch) -> Applied:
            return Applied({output: table[np.searchsorted(edges, as_float(batch[source]), side=side)]})

        def nan_edges(batch: Batch) -> Applied:  # NaN edges pass the "increase strictly" check: bound by hand
            x = as_float(batch[source])
            idx = np.searchsorted(edges, x, side=side)
            if side == "left":  # right-closed (a, b]: the first edge itself is outside
                inside = (x > edges[0]) & (x <= edges[-1])
            else:  # left-closed [a, b)
                inside = (x >= edges[0]) & (x < edges[-1])
            return Applied({output: table[np.where(inside, idx, 0)]})

        if np.isnan(edges).any():
            kernel = nan_edges
        return NodeCompiled((source,), {output: ColType("string", self.outside is None)}, kernel)
