"""The JSON DSL of a scoring graph: strict, frozen pydantic models with a discriminated union on ``kind``.

A graph declares its ``inputs`` (the batch columns it reads, typed as in worker/graph/types.py), ``nodes``
(each with a stable ``id`` that every error, log line and metric names), optional ``edges`` (pairs of node
ids; without them the nodes form a chain in list order) and ``outputs`` (the fields of the score record, each
taken ``from`` a column). Parsing only checks shapes; ``compile_graph`` checks everything else.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from worker.graph.nodes.base import ColumnName, NodeBase
from worker.graph.nodes.categorical import Bucketize, Map, OneHotEncoder, TopK
from worker.graph.nodes.columns import Copy, Drop, Rename, Select
from worker.graph.nodes.datetime_parts import DatetimeParts
from worker.graph.nodes.expression import Expr
from worker.graph.nodes.numeric import Clip, Log1p, Scale
from worker.graph.nodes.post import PickProba, Threshold
from worker.graph.nodes.values import Astype, Fillna, Text
from worker.graph.onnx_node import ONNXNode
from worker.graph.types import ColType, DType

DSL_VERSION: Literal["1"] = "1"

Node = Annotated[
    Select
    | Drop
    | Rename
    | Copy
    | Fillna
    | Astype
    | Text
    | Map
    | TopK
    | Bucketize
    | OneHotEncoder
    | Clip
    | Scale
    | Log1p
    | DatetimeParts
    | Expr
    | ONNXNode
    | PickProba
    | Threshold,
    Field(discriminator="kind"),
]
NODE_KINDS: tuple[type[NodeBase], ...] = (
    Select, Drop, Rename, Copy, Fillna, Astype, Text, Map, TopK, Bucketize, OneHotEncoder,
    Clip, Scale, Log1p, DatetimeParts, Expr, ONNXNode, PickProba, Threshold,
)  # fmt: skip


class InputField(BaseModel):
    """A column the graph reads from the decoded batch."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ColumnName
    dtype: DType
    nullable: bool = False

    @property
    def coltype(self) -> ColType:
        return ColType(self.dtype, self.nullable)


class OutputField(BaseModel):
    """A field of the score record, taken from column ``from`` (default: the same name)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    name: ColumnName
    dtype: DType
    nullable: bool = False
    from_: ColumnName | None = Field(default=None, alias="from")

    @property
    def source(self) -> str:
        return self.from_ if self.from_ is not None else self.name

    @property
    def coltype(self) -> ColType:
        return ColType(self.dtype, self.nullable)


class GraphSpec(BaseModel):
    """A whole scoring graph. Nodes without an ``id`` are named ``{kind}_{index}`` when parsed."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Annotated[str, Field(min_length=1)]
    dsl_version: Literal["1"] = DSL_VERSION
    inputs: tuple[InputField, ...] = Field(min_length=1)
    nodes: tuple[Node, ...] = ()
    edges: tuple[tuple[str, str], ...] | None = None
    outputs: tuple[OutputField, ...] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _name_nodes(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("nodes"), list | tuple):
            data = {**data, "nodes": [auto_id(node, i) for i, node in enumerate(data["nodes"])]}
        return data

    def canonical_json(self) -> str:
        """The spec as canonical JSON (sorted keys, no spaces, aliases): what ``digest`` hashes."""
        import json

        return json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))


def auto_id(node: Any, index: int) -> Any:
    """Give an unnamed node (a dict or a node model) the id ``{kind}_{index}``."""
    if isinstance(node, NodeBase) and node.id is None:
        return node.model_copy(update={"id": f"{node.node_kind}_{index}"})
    if isinstance(node, dict) and node.get("id") is None and isinstance(node.get("kind"), str):
        return {**node, "id": f"{node['kind']}_{index}"}
    return node
