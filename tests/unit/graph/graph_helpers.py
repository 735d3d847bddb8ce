"""Helpers for the graph tests: tiny ONNX models built with onnx.helper, and a one-call graph runner."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from worker.graph import GraphSpec, InMemoryModels, compile_graph, load_graph

ONNX_TYPES = {
    "float": TensorProto.FLOAT,
    "double": TensorProto.DOUBLE,
    "int64": TensorProto.INT64,
    "string": TensorProto.STRING,
}


def model_bytes(
    nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: Sequence[Any] = (), domain: str = ""
) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    return bytes(model.SerializeToString())


def linear(weights: Sequence[float], *, name: str = "X", width: Any = None, elem: str = "float") -> bytes:
    """Y[n, 1] = X[n, k] @ weights."""
    k = len(weights)
    x = helper.make_tensor_value_info(name, ONNX_TYPES[elem], [None, width if width is not None else k])
    y = helper.make_tensor_value_info("Y", ONNX_TYPES[elem], [None, 1])
    w = helper.make_tensor("W", ONNX_TYPES[elem], [k, 1], list(weights))
    return model_bytes([helper.make_node("MatMul", [name, "W"], ["Y"])], [x], [y], [w])


def two_inputs() -> bytes:
    """S[n, 1] = sum(A[n, 2], axis=1) * B[n, 1]."""
    a = helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, 2])
    b = helper.make_tensor_value_info("B", TensorProto.FLOAT, [None, 1])
    s = helper.make_tensor_value_info("S", TensorProto.FLOAT, [None, 1])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("ReduceSum", ["A", "axes"], ["R"], keepdims=1),
        helper.make_node("Mul", ["R", "B"], ["S"]),
    ]
    return model_bytes(nodes, [a, b], [s], [axes])


def spec_of(
    nodes: list[Any],
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    edges: list[Any] | None = None,
) -> GraphSpec:
    raw: dict[str, Any] = {"name": "t", "inputs": inputs, "nodes": nodes, "outputs": outputs}
    if edges is not None:
        raw["edges"] = edges
    return load_graph(raw)


def run(
    nodes: list[Any],
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    batch: dict[str, Any],
    models: InMemoryModels | None = None,
    edges: list[Any] | None = None,
) -> Any:
    graph = compile_graph(spec_of(nodes, inputs, outputs, edges), models or InMemoryModels())
    return graph.run({k: np.asarray(v) if not isinstance(v, np.ndarray) else v for k, v in batch.items()})
