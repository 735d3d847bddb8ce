"""The authoring API, RTML style: build nodes with the node classes (``id`` optional) and turn them into the
JSON DSL with ``GraphBuilder.generate_dsl``. Every node class is re-exported here under its RTML-like name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from worker.graph.dsl import GraphSpec, InputField, Node, OutputField
from worker.graph.nodes.categorical import Bucketize, Map, OneHotEncoder, TopK
from worker.graph.nodes.columns import Copy, Drop, Rename, Select
from worker.graph.nodes.datetime_parts import DatetimeParts
from worker.graph.nodes.expression import Expr
from worker.graph.nodes.numeric import Clip, Log1p, Scale
from worker.graph.nodes.post import PickProba, Threshold
from worker.graph.nodes.values import Astype, Fillna, Text
from worker.graph.onnx_node import ONNXNode

__all__ = [
    "Astype", "Bucketize", "Clip", "Copy", "DatetimeParts", "Drop", "Expr", "Fillna", "GraphBuilder", "Log1p",
    "Map", "ONNXNode", "OneHotEncoder", "PickProba", "Rename", "Scale", "Select", "Text", "Threshold", "TopK",
]  # fmt: skip

FieldLike = InputField | OutputField | Mapping[str, Any]


class GraphBuilder:
    """Turns authored nodes into a validated ``GraphSpec`` or its JSON DSL."""

    @staticmethod
    def build(
        nodes: Sequence[Node],
        edges: Sequence[tuple[str, str]] | None = None,
        *,
        name: str,
        inputs: Sequence[FieldLike],
        outputs: Sequence[FieldLike],
    ) -> GraphSpec:
        """The ``GraphSpec`` of ``nodes`` (a chain in list order when ``edges`` is None). Unnamed nodes get
        ids ``{kind}_{index}``. Raises pydantic's ``ValidationError`` for malformed fields."""
        return GraphSpec.model_validate(
            {
                "name": name,
                "inputs": list(inputs),
                "nodes": list(nodes),
                "edges": None if edges is None else [tuple(e) for e in edges],
                "outputs": list(outputs),
            }
        )

    @staticmethod
    def generate_dsl(
        nodes: Sequence[Node],
        edges: Sequence[tuple[str, str]] | None = None,
        *,
        name: str,
        inputs: Sequence[FieldLike],
        outputs: Sequence[FieldLike],
        indent: int | None = 2,
    ) -> str:
        """The JSON DSL of the graph, ready for ``load_graph``; fields left at their default are omitted."""
        spec = GraphBuilder.build(nodes, edges, name=name, inputs=inputs, outputs=outputs)
        data = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        # The discriminator and the version are defaults on the classes: never omit them, and put them first.
        data["nodes"] = [
            {"kind": n.kind, **raw} for raw, n in zip(data.get("nodes", []), spec.nodes, strict=True)
        ]
        return json.dumps({"dsl_version": spec.dsl_version, **data}, indent=indent)
