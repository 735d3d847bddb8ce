"""Every load/compile problem is a GraphError that names the node id and the problem."""

from __future__ import annotations

from typing import Any

import pytest
from graph_helpers import model_bytes, spec_of
from onnx import TensorProto, helper

from worker.errors import GraphError
from worker.graph import InMemoryModels, compile_graph, load_graph

F = [{"name": "x", "dtype": "float64"}]
OUT = [{"name": "x", "dtype": "float64"}]


def compile_err(
    nodes: list[Any],
    inputs: Any = F,
    outputs: Any = OUT,
    edges: Any = None,
    models: InMemoryModels | None = None,
) -> GraphError:
    with pytest.raises(GraphError) as info:
        compile_graph(spec_of(nodes, inputs, outputs, edges), models or InMemoryModels())
    return info.value


def load_err(raw: dict[str, Any]) -> GraphError:
    with pytest.raises(GraphError) as info:
        load_graph(raw)
    return info.value


def test_unknown_kind_names_node() -> None:
    err = load_err({"name": "t", "inputs": F, "outputs": OUT, "nodes": [{"id": "n1", "kind": "nope"}]})
    assert err.node_id == "n1"
    assert "unknown kind 'nope'" in str(err)


def test_unknown_param_names_node_and_param() -> None:
    raw = {"id": "fill", "kind": "fillna", "columns": ["x"], "value": 0, "valu": 1}
    err = load_err({"name": "t", "inputs": F, "outputs": OUT, "nodes": [raw]})
    assert err.node_id == "fill"
    assert "unknown param 'valu'" in str(err)


def test_bad_param_value_names_node_and_auto_id() -> None:
    err = load_err({"name": "t", "inputs": F, "outputs": OUT, "nodes": [{"kind": "clip", "columns": ["x"]}]})
    assert err.node_id == "clip_0"


def test_invalid_json_and_bad_id_pattern() -> None:
    with pytest.raises(GraphError, match="not valid JSON"):
        load_graph("{nope")
    err = load_err(
        {
            "name": "t",
            "inputs": F,
            "outputs": OUT,
            "nodes": [{"id": "1bad", "kind": "log1p", "columns": ["x"]}],
        }
    )
    assert err.node_id == "1bad"
    assert "'id'" in str(err)


def test_duplicate_id() -> None:
    err = compile_err(
        [{"id": "a", "kind": "log1p", "columns": ["x"]}, {"id": "a", "kind": "log1p", "columns": ["x"]}]
    )
    assert err.node_id == "a"
    assert "duplicate" in str(err)


def test_dangling_edge() -> None:
    err = compile_err([{"id": "a", "kind": "log1p", "columns": ["x"]}], edges=[["a", "ghost"]])
    assert err.node_id == "ghost"
    assert "dangling edge" in str(err)


def test_cycle() -> None:
    nodes = [{"id": "a", "kind": "log1p", "columns": ["x"]}, {"id": "b", "kind": "log1p", "columns": ["x"]}]
    err = compile_err(nodes, edges=[["a", "b"], ["b", "a"]])
    assert err.node_id in ("a", "b")
    assert "cycle" in str(err)


def test_unreachable_node() -> None:
    nodes = [{"id": n, "kind": "log1p", "columns": ["x"]} for n in ("a", "b", "c")]
    err = compile_err(nodes, edges=[["a", "b"]])
    assert err.node_id == "c"
    assert "unreachable" in str(err)


def test_missing_input_column() -> None:
    err = compile_err([{"id": "scale", "kind": "scale", "columns": ["y"]}])
    assert err.node_id == "scale"
    assert "missing input column 'y'" in str(err)


def test_column_not_visible_from_other_branch() -> None:
    nodes = [
        {"id": "a", "kind": "expr", "expr": "x + 1", "output": "y"},
        {"id": "b", "kind": "log1p", "columns": ["y"]},
        {"id": "c", "kind": "log1p", "columns": ["x"]},
    ]
    err = compile_err(nodes, edges=[["a", "c"], ["b", "c"]])
    assert err.node_id == "b"
    assert "missing input column 'y'" in str(err)


def test_dtype_mismatch() -> None:
    err = compile_err([{"id": "low", "kind": "text", "columns": ["x"], "op": "lower"}])
    assert err.node_id == "low"
    assert "needs a string column" in str(err)


def test_fill_value_type_mismatch() -> None:
    err = compile_err([{"id": "f", "kind": "fillna", "columns": ["x"], "value": "zero"}])
    assert err.node_id == "f"
    assert "does not fit column 'x'" in str(err)


def test_declared_output_not_produced() -> None:
    err = compile_err(
        [{"id": "a", "kind": "log1p", "columns": ["x"]}], outputs=[{"name": "score", "dtype": "float64"}]
    )
    assert "declared output 'score' not produced" in str(err)


def test_declared_output_type_mismatch() -> None:
    err = compile_err([{"id": "a", "kind": "log1p", "columns": ["x"]}])
    assert "may be null" in str(err)
    err = compile_err([], outputs=[{"name": "x", "dtype": "int64"}])
    assert "has dtype float64, declared int64" in str(err)


def test_merge_conflict_names_both_producers() -> None:
    nodes = [
        {"id": "a", "kind": "scale", "columns": ["x"], "mean": 1},
        {"id": "b", "kind": "scale", "columns": ["x"]},
        {"id": "c", "kind": "select", "columns": ["x"]},
    ]
    err = compile_err(nodes, edges=[["a", "c"], ["b", "c"]])
    assert err.node_id == "c"
    assert "'a'" in str(err) and "'b'" in str(err)


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("x.real", "Attribute not allowed"),
        ("x[0]", "Subscript not allowed"),
        ("(lambda: 1)()", "call not allowed"),
        ("__import__('os')", "function '__import__' not allowed"),
        ("'a' + x", "literal 'a' not allowed"),
        ("where(x, 1, 0)", "condition is needed"),
        ("y + 1", "unknown column 'y'"),
        ("log(x, 2)", "takes 1 argument"),
    ],
)
def test_expression_rejections(expr: str, problem: str) -> None:
    err = compile_err([{"id": "e", "kind": "expr", "expr": expr, "output": "z"}])
    assert err.node_id == "e"
    assert problem in str(err)


def onnx_err(node: dict[str, Any], model: bytes, inputs: Any = F, **kw: Any) -> GraphError:
    with pytest.raises(GraphError) as info:
        spec = spec_of([{"id": "m", "kind": "onnx", "model_id": "mid", **node}], inputs, OUT)
        compile_graph(spec, InMemoryModels({"mid": model}), **kw)
    return info.value


def test_onnx_input_name_mismatch(models: InMemoryModels) -> None:
    err = onnx_err({"inputs": {"Z": ["x"]}}, models.load("lin"))
    assert err.node_id == "m"
    assert "unknown ['Z'], unbound ['X']" in str(err)


def test_onnx_features_on_multi_input_model(models: InMemoryModels) -> None:
    err = onnx_err({"features": ["x"]}, models.load("two"))
    assert "has 2 inputs" in str(err)


def test_onnx_shape_mismatch(models: InMemoryModels) -> None:
    err = onnx_err({"features": ["x"]}, models.load("lin"))
    assert err.node_id == "m"
    assert "expects 2 features per row, 1 are bound" in str(err)


def test_onnx_type_mismatch(models: InMemoryModels) -> None:
    inputs = [*F, {"name": "s", "dtype": "string"}]
    err = onnx_err({"features": ["x", "s"]}, models.load("lin"), inputs)
    assert "column 's' (string) does not fit model input 'X' (tensor(float))" in str(err)


def test_onnx_unknown_output(models: InMemoryModels) -> None:
    err = onnx_err({"features": ["x", "x"], "outputs": {"P": "p"}}, models.load("lin"))
    assert "has no output 'P'" in str(err)


def test_onnx_custom_domain_refused_unless_allowed() -> None:
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 1])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 1])
    model = model_bytes([helper.make_node("Identity", ["X"], ["Y"])], [x], [y], domain="com.evil")
    err = onnx_err({"features": ["x"]}, model)
    assert "non-standard op domain(s) ['com.evil']" in str(err)
    spec = spec_of([{"id": "m", "kind": "onnx", "model_id": "mid", "features": ["x"]}], F, OUT)
    graph = compile_graph(spec, InMemoryModels({"mid": model}), allow_custom_domains=True)
    assert graph.model_ids == ("mid",)


def test_onnx_corrupt_model_and_missing_provider(models: InMemoryModels) -> None:
    assert "not a valid ONNX model" in str(onnx_err({"features": ["x"]}, b"\x00garbage"))
    err = onnx_err({"features": ["x", "x"]}, models.load("lin"), providers=["NoSuchProvider"])
    assert "NoSuchProvider" in str(err)


def test_onnx_fixed_batch_dimension_refused() -> None:
    # ONNX Runtime would refuse every batch of another size: a wiring problem to name at start, not per batch.
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 2])
    model = model_bytes([helper.make_node("Relu", ["X"], ["Y"])], [x], [y])
    err = onnx_err({"features": ["x", "x"], "outputs": {"Y": "p"}}, model)
    assert err.node_id == "m"
    assert "model input 'X' has a fixed batch dimension of 1 (shape [1, 2])" in str(err)
