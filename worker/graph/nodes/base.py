"""The base of every node kind: a frozen pydantic model whose ``compile`` checks its input columns.

A node kind subclasses ``NodeBase``, declares ``kind: Literal["..."]`` and its params as fields, and
implements ``compile(view, ctx) -> NodeCompiled``: ``view`` maps every column the node can see to its type.
``compile`` raises ``GraphError`` naming the node (use ``self.error``) for any problem; it is called once, at
start.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, StringConstraints

from worker.errors import GraphError
from worker.graph.plan import CompileContext, NodeCompiled
from worker.graph.types import ColType

ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]*$"
NodeId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
ColumnName = Annotated[str, StringConstraints(min_length=1)]


class NodeBase(BaseModel):
    """Common fields of all nodes. ``id`` may be omitted when authoring: the graph then names the node
    ``{kind}_{index}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    summary: ClassVar[str] = ""

    id: NodeId | None = None

    @property
    def node_id(self) -> str:
        """The node's id (always set once the node is part of a ``GraphSpec``)."""
        return self.id if self.id is not None else "<unnamed>"

    @property
    def node_kind(self) -> str:
        kind: str = getattr(self, "kind", type(self).__name__)
        return kind

    def error(self, message: str) -> GraphError:
        """A ``GraphError`` naming this node."""
        return GraphError(message, node_id=self.node_id)

    def need(self, view: Mapping[str, ColType], name: str) -> ColType:
        """The type of input column ``name``, or a GraphError naming the missing column."""
        if name not in view:
            known = ", ".join(sorted(view)) or "none"
            raise self.error(f"missing input column {name!r} (available: {known})")
        return view[name]

    def need_all(self, view: Mapping[str, ColType], names: Iterable[str]) -> dict[str, ColType]:
        return {name: self.need(view, name) for name in names}

    def compile(self, view: Mapping[str, ColType], ctx: CompileContext) -> NodeCompiled:
        """Check the params against ``view`` and build the kernel. Raises GraphError; never blocks."""
        raise NotImplementedError
