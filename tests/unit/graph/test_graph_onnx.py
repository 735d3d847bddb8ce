"""The ONNX node: binding by name, multi-input models, ZipMap and tensor probabilities, ensembles."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import onnx
import pytest
from graph_helpers import linear, run, spec_of

from worker.graph import InMemoryModels, compile_graph

XY = [{"name": "x", "dtype": "float64", "nullable": True}, {"name": "y", "dtype": "float64"}]


def test_features_bind_by_name_in_declared_order(models: InMemoryModels) -> None:
    x, y = np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])
    node = {"id": "m", "kind": "onnx", "model_id": "lin", "features": ["y", "x"], "outputs": {"Y": "s"}}
    result = run([node], XY, [{"name": "s", "dtype": "float64"}], {"x": x, "y": y}, models)
    np.testing.assert_allclose(result.columns["s"], y * 1.0 + x * 2.0)


def test_nan_and_inf_rows_are_rejected_and_the_rest_scored(models: InMemoryModels) -> None:
    x, y = np.array([1.0, np.nan, 3.0, 4.0]), np.array([1.0, 1.0, np.inf, 1.0])
    node = {"id": "m", "kind": "onnx", "model_id": "lin", "features": ["x", "y"], "outputs": {"Y": "s"}}
    result = run([node], XY, [{"name": "s", "dtype": "float64"}], {"x": x, "y": y}, models)
    assert result.rows.tolist() == [0, 3]
    np.testing.assert_allclose(result.columns["s"], x[[0, 3]] + 2 * y[[0, 3]])
    assert sorted(result.errors) == [1, 2]
    assert result.errors[1].node_id == "m" and result.errors[1].model_id == "lin"
    assert "'x'" in result.errors[1].reason and "'y'" in result.errors[2].reason


def test_multi_input_model(models: InMemoryModels) -> None:
    x, y = np.array([1.0, 2.0]), np.array([3.0, 5.0])
    node = {
        "id": "m",
        "kind": "onnx",
        "model_id": "two",
        "inputs": {"A": ["x", "y"], "B": ["y"]},
        "outputs": {"S": "s"},
    }
    result = run([node], XY, [{"name": "s", "dtype": "float64"}], {"x": x, "y": y}, models)
    np.testing.assert_allclose(result.columns["s"], (x + y) * y)


def test_double_input_model_gets_float64() -> None:
    models = InMemoryModels({"d": linear([0.5], elem="double")})
    node = {"id": "m", "kind": "onnx", "model_id": "d", "features": ["y"], "outputs": {"Y": "s"}}
    y = np.array([1e-300, 2.0])
    result = run([node], XY, [{"name": "s", "dtype": "float64"}], {"x": y, "y": y}, models)
    np.testing.assert_array_equal(result.columns["s"], y * 0.5)


def sklearn_model(zipmap: bool, labels: Any) -> tuple[bytes, Any, np.ndarray]:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    y = np.asarray(labels)[(X[:, 0] + X[:, 1] > 0).astype(int)]
    clf = LogisticRegression().fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onx = to_onnx(clf, X[:1].astype(np.float32), options={id(clf): {"zipmap": zipmap}}, target_opset=17)
    return onx.SerializeToString(), clf, X


@pytest.mark.parametrize("zipmap", [True, False])
@pytest.mark.parametrize("labels", [[0, 1], ["no", "yes"]])
def test_sklearn_classifier_probabilities_pick_by_label(zipmap: bool, labels: Any) -> None:
    model, clf, X = sklearn_model(zipmap, labels)
    label_out, proba_out = (o.name for o in onnx.load_model_from_string(model).graph.output)
    nodes = [
        {
            "id": "clf",
            "kind": "onnx",
            "model_id": "c",
            "features": ["x", "y"],
            "outputs": {label_out: "label", proba_out: "proba"},
        },
        {"id": "pick", "kind": "pick", "column": "proba", "label": labels[1], "output": "p1"},
    ]
    label_type = "int64" if isinstance(labels[0], int) else "string"
    outputs = [{"name": "p1", "dtype": "float64"}, {"name": "label", "dtype": label_type}]
    result = run(nodes, XY, outputs, {"x": X[:, 0].copy(), "y": X[:, 1].copy()}, InMemoryModels({"c": model}))
    np.testing.assert_allclose(result.columns["p1"], clf.predict_proba(X)[:, 1], atol=1e-5)
    assert result.columns["label"].tolist() == clf.predict(X).tolist()


def test_split_probabilities_into_columns() -> None:
    model, clf, X = sklearn_model(True, [0, 1])
    proba_out = onnx.load_model_from_string(model).graph.output[1].name
    node = {
        "id": "clf",
        "kind": "onnx",
        "model_id": "c",
        "features": ["x", "y"],
        "split": True,
        "outputs": {proba_out: "prob"},
    }
    outputs = [{"name": "prob_0", "dtype": "float64"}, {"name": "prob_1", "dtype": "float64"}]
    result = run(
        [node], XY, outputs, {"x": X[:, 0].copy(), "y": X[:, 1].copy()}, InMemoryModels({"c": model})
    )
    np.testing.assert_allclose(result.columns["prob_0"], clf.predict_proba(X)[:, 0], atol=1e-5)


def test_two_onnx_nodes_as_an_ensemble_dag() -> None:
    models = InMemoryModels({"a": linear([1.0, 0.0]), "b": linear([0.0, 1.0])})
    nodes = [
        {"id": "champion", "kind": "onnx", "model_id": "a", "features": ["x", "y"], "outputs": {"Y": "sa"}},
        {"id": "challenger", "kind": "onnx", "model_id": "b", "features": ["x", "y"], "outputs": {"Y": "sb"}},
        {"id": "blend", "kind": "expr", "expr": "(sa + sb) / 2", "output": "score"},
    ]
    edges = [["champion", "blend"], ["challenger", "blend"]]
    outputs = [{"name": "score", "dtype": "float64", "nullable": True}, {"name": "sa", "dtype": "float64"}]
    x, y = np.array([1.0, np.nan, 5.0]), np.array([3.0, 4.0, 7.0])
    graph = compile_graph(spec_of(nodes, XY, outputs, edges), models)
    assert graph.model_ids == ("a", "b") or graph.model_ids == ("b", "a")
    result = graph.run({"x": x, "y": y})
    assert result.rows.tolist() == [0, 2]
    np.testing.assert_allclose(result.columns["score"], [2.0, 6.0])
    assert result.errors[1].model_id in ("a", "b")


def test_string_input_with_null_is_rejected_on_invalid_reject() -> None:
    from graph_helpers import model_bytes
    from onnx import TensorProto, helper

    s_in = helper.make_tensor_value_info("S", TensorProto.STRING, [None, 1])
    out = helper.make_tensor_value_info("O", TensorProto.STRING, [None, 1])
    model = model_bytes([helper.make_node("Identity", ["S"], ["O"])], [s_in], [out])
    node = {"id": "m", "kind": "onnx", "model_id": "s", "features": ["s"], "outputs": {"O": "o"}}
    inputs = [{"name": "s", "dtype": "string", "nullable": True}]
    batch = {"s": np.array(["a", None, "c"], dtype=object)}
    result = run([node], inputs, [{"name": "o", "dtype": "string"}], batch, InMemoryModels({"s": model}))
    assert result.columns["o"].tolist() == ["a", "c"]
    assert list(result.errors) == [1]


def test_on_invalid_pass_hands_nan_to_the_model(models: InMemoryModels) -> None:
    x, y = np.array([1.0, np.nan]), np.array([1.0, 1.0])
    node = {
        "id": "m",
        "kind": "onnx",
        "model_id": "lin",
        "features": ["x", "y"],
        "outputs": {"Y": "s"},
        "on_invalid": "pass",
    }
    result = run([node], XY, [{"name": "s", "dtype": "float64"}], {"x": x, "y": y}, models)
    assert result.rows.tolist() == [0, 1] and not result.errors
    assert result.columns["s"][0] == 3.0 and np.isnan(result.columns["s"][1])


def test_feature_matrix_casts_every_column_and_names_the_first_bad_feature() -> None:
    models = InMemoryModels({"lin3": linear([1.0, 10.0, 100.0])})
    node = {"id": "m", "kind": "onnx", "model_id": "lin3", "features": ["i", "b", "f"], "outputs": {"Y": "s"}}
    inputs = [
        {"name": "f", "dtype": "float64", "nullable": True},
        {"name": "b", "dtype": "bool"},
        {"name": "i", "dtype": "int64", "nullable": True},
    ]
    batch = {
        "i": np.array([1.0, 2.0, np.nan, 4.0, 5.0]),
        "b": np.array([True, False, True, False, True]),
        "f": np.array([0.5, np.nan, np.nan, -np.inf, 0.25]),
    }
    result = run([node], inputs, [{"name": "s", "dtype": "float64"}], batch, models)
    assert result.rows.tolist() == [0, 4]
    np.testing.assert_allclose(result.columns["s"], [1 + 10 + 50, 5 + 10 + 25])
    assert sorted(result.errors) == [1, 2, 3]
    assert "'f'" in result.errors[1].reason and "'f'" in result.errors[3].reason
    assert "'i'" in result.errors[2].reason  # both i and f are null: the first feature's reason wins


def test_rank_one_model_input_gets_one_column() -> None:
    from graph_helpers import model_bytes
    from onnx import TensorProto, helper

    x_in = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None])
    y_out = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None])
    two = helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])
    model = model_bytes([helper.make_node("Mul", ["X", "two"], ["Y"])], [x_in], [y_out], [two])
    node = {"id": "m", "kind": "onnx", "model_id": "r1", "features": ["x"], "outputs": {"Y": "s"}}
    x = np.array([1.5, np.nan, 3.0])
    result = run(
        [node], XY, [{"name": "s", "dtype": "float64"}], {"x": x, "y": x}, InMemoryModels({"r1": model})
    )
    assert result.rows.tolist() == [0, 2] and list(result.errors) == [1]
    np.testing.assert_array_equal(result.columns["s"], [3.0, 6.0])
