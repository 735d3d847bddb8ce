"""The scoring graph: a JSON DSL of nodes (vectorised preprocessing and ONNX Runtime inference), validated
and compiled once at start, then run per batch.

    spec = load_graph("graph.json")                        # GraphError names the node for any problem
    graph = compile_graph(spec, models)                    # types every column, loads and checks models
    result = graph.run(batch, on_node=metrics.observe)     # StageResult[ScoringError]; never raises for a row
"""

from worker.graph.builder import GraphBuilder
from worker.graph.compile import compile_graph, load_graph
from worker.graph.dsl import NODE_KINDS, GraphSpec, InputField, Node, OutputField
from worker.graph.onnx_node import ModelLoader, ONNXNode
from worker.graph.onnx_runtime import Session, TensorInfo
from worker.graph.plan import NodeInfo
from worker.graph.runner import CompiledGraph
from worker.graph.testing import InMemoryModels
from worker.graph.types import ColType, DType

__all__ = [
    "NODE_KINDS",
    "ColType",
    "CompiledGraph",
    "DType",
    "GraphBuilder",
    "GraphSpec",
    "InMemoryModels",
    "InputField",
    "ModelLoader",
    "Node",
    "NodeInfo",
    "ONNXNode",
    "OutputField",
    "Session",
    "TensorInfo",
    "compile_graph",
    "load_graph",
]
