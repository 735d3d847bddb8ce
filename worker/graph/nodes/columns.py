"""Column plumbing: select, drop, rename, copy. Schema-only work: the kernels move references, never data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

from pydantic import Field

from worker.columns import Batch
from worker.graph.nodes.base import ColumnName, NodeBase
from worker.graph.plan import Applied, CompileContext, NodeCompiled
from worker.graph.types import ColType


def _nothing(batch: Batch) -> Applied:
    return Applied({})


class Select(NodeBase):
    """Keep only ``columns``; every other column is removed from what later nodes see."""

    summary: ClassVar[str] = "keep only the listed columns"
    kind: Literal["select"] = "select"
    columns: tuple[ColumnName, ...] = Field(min_length=1)

    def compile(self, view: Mapping[str, ColType], ctx: CompileContext) -> NodeCompiled:
        self.need_all(view, self.columns)
        return NodeCompiled((), {}, _nothing, removes=frozenset(view) - set(self.columns))


class Drop(NodeBase):
    """Remove ``columns``."""

    summary: ClassVar[str] = "remove the listed columns"
    kind: Literal["drop"] = "drop"
    columns: tuple[ColumnName, ...] = Field(min_length=1)

    def compile(self, view: Mapping[str, ColType], ctx: CompileContext) -> NodeCompiled:
        self.need_all(view, self.columns)
        return NodeCompiled((), {}, _nothing, removes=frozenset(self.columns))


class Rename(NodeBase):
    """Rename columns: ``mapping`` old name -> new name. The old names disappear."""

    summary: ClassVar[str] = "rename columns (old -> new)"
    kind: Literal["rename"] = "rename"
    mapping: dict[ColumnName, ColumnName] = Field(min_length=1)

    def compile(self, view: Mapping[str, ColType], ctx: CompileContext) -> NodeCompiled:
        types = self.need_all(view, self.mapping)
        if len(set(self.mapping.values())) != len(self.mapping):
            raise self.error("two columns renamed to the same name")
        pairs = tuple(self.mapping.items())

        def kernel(batch: Batch) -> Applied:
            return Applied({new: batch[old] for old, new in pairs})

        produces = {new: types[old] for old, new in pairs}
        return NodeCompiled(
            tuple(self.mapping), produces, kernel, removes=frozenset(self.mapping) - set(produces)
        )


class Copy(NodeBase):
    """Copy columns under new names: ``mapping`` source -> destination. Sources stay."""

    summary: ClassVar[str] = "copy columns (source -> destination)"
    kind: Literal["copy"] = "copy"
    mapping: dict[ColumnName, ColumnName] = Field(min_length=1)

    def compile(self, view: Mapping[str, ColType], ctx: CompileContext) -> NodeCompiled:
        types = self.need_all(view, self.mapping)
        if set(self.mapping.values()) & set(self.mapping):
            raise self.error("a copy destination is also a source; use rename")
        pairs = tuple(self.mapping.items())

        def kernel(batch: Batch) -> Applied:
            return Applied({new: batch[old] for old, new in pairs})

        return NodeCompiled(tuple(self.mapping), {new: types[old] for old, new in pairs}, kernel)
