"""Running a graph: row isolation (rejections and bisection), the builder round trip, digest, explain, CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from graph_helpers import run, spec_of

from worker.columns import Batch
from worker.errors import GraphError
from worker.graph import GraphBuilder, InMemoryModels, compile_graph, load_graph
from worker.graph.builder import Astype, Expr, Fillna, Map, ONNXNode, Threshold
from worker.graph.plan import Applied


def test_a_node_raising_on_the_batch_is_bisected_to_the_bad_rows() -> None:
    spec = spec_of(
        [{"id": "boom", "kind": "log1p", "columns": ["x"]}],
        [{"name": "x", "dtype": "float64"}],
        [{"name": "x", "dtype": "float64", "nullable": True}],
    )
    graph = compile_graph(spec, InMemoryModels())
    calls: list[int] = []

    def fragile(batch: Batch) -> Applied:  # fails the whole call when any row is negative
        calls.append(len(batch["x"]))
        if (batch["x"] < 0).any():
            raise ValueError("negative input")
        return Applied({"x": np.log1p(batch["x"])})

    graph = replace(graph, steps=(replace(graph.steps[0], kernel=fragile),))
    x = np.array([1.0, 2.0, -1.0, 3.0, 4.0, -5.0, 6.0])
    result = graph.run({"x": x})
    assert result.rows.tolist() == [0, 1, 3, 4, 6]
    np.testing.assert_allclose(result.columns["x"], np.log1p(x[[0, 1, 3, 4, 6]]))
    assert sorted(result.errors) == [2, 5]
    assert all(e.node_id == "boom" and "negative input" in e.reason for e in result.errors.values())
    assert calls[0] == 7 and len(calls) < 2 * 7


def test_bad_rows_from_several_nodes_leave_the_run_and_good_rows_are_scored(models: InMemoryModels) -> None:
    nodes = [
        {"id": "parse", "kind": "astype", "columns": ["km"], "dtype": "float64"},
        {"id": "ratio", "kind": "expr", "expr": "km / 1000", "output": "k"},
        {"id": "m", "kind": "onnx", "model_id": "lin", "features": ["k", "age"], "outputs": {"Y": "score"}},
    ]
    inputs = [{"name": "km", "dtype": "string"}, {"name": "age", "dtype": "float64", "nullable": True}]
    batch = {
        "km": np.array(["1000", "oops", "3000", "4000"], dtype=object),
        "age": np.array([1.0, 2.0, np.nan, 4.0]),
    }
    result = run(nodes, inputs, [{"name": "score", "dtype": "float64"}], batch, models)
    assert result.rows.tolist() == [0, 3]
    np.testing.assert_allclose(result.columns["score"], [1 + 2 * 1.0, 4 + 2 * 4.0])
    assert result.errors[1].node_id == "parse" and "cannot become float64" in result.errors[1].reason
    assert result.errors[2].node_id == "m"
    assert set(result.rows.tolist()) | set(result.errors) == set(range(4))


def test_empty_batch_and_all_rows_rejected(models: InMemoryModels) -> None:
    node = {"id": "m", "kind": "onnx", "model_id": "lin", "features": ["x", "x"], "outputs": {"Y": "s"}}
    inputs = [{"name": "x", "dtype": "float64", "nullable": True}]
    empty = run(
        [node], inputs, [{"name": "s", "dtype": "float64"}], {"x": np.array([], dtype=np.float64)}, models
    )
    assert empty.columns["s"].shape == (0,) and empty.rows.size == 0
    bad = run([node], inputs, [{"name": "s", "dtype": "float64"}], {"x": np.array([np.nan, np.nan])}, models)
    assert bad.columns["s"].shape == (0,) and sorted(bad.errors) == [0, 1]


def test_batch_that_does_not_match_the_inputs_is_a_wiring_error() -> None:
    graph = compile_graph(
        spec_of([], [{"name": "x", "dtype": "float64"}], [{"name": "x", "dtype": "float64"}]),
        InMemoryModels(),
    )
    with pytest.raises(GraphError, match="no column 'x'"):
        graph.run({})
    with pytest.raises(GraphError, match="has dtype object"):
        graph.run({"x": np.array(["a"], dtype=object)})


def test_nullable_int_input_accepts_a_batch_without_nulls() -> None:
    inputs = [{"name": "n", "dtype": "int64", "nullable": True}]
    result = run([], inputs, [{"name": "n", "dtype": "int64", "nullable": True}], {"n": np.array([1, 2])})
    assert result.columns["n"].dtype == np.float64


def test_builder_generates_dsl_that_loads_back_with_the_same_digest(models: InMemoryModels) -> None:
    nodes = [
        Fillna(columns=("km",), value=0.0),
        Astype(id="age_f", columns=("age",), dtype="float64"),
        Map(column="make", mapping={"vw": "volkswagen"}),
        Expr(expr="km / (age + 1)", output="ratio"),
        ONNXNode(model_id="lin", features=("km", "ratio"), outputs={"Y": "score"}),
        Threshold(column="score", threshold=10.0, output="decision", above="buy", below="skip"),
    ]
    inputs = [
        {"name": "km", "dtype": "float64", "nullable": True},
        {"name": "age", "dtype": "int64"},
        {"name": "make", "dtype": "string", "nullable": True},
    ]
    outputs = [
        {"name": "decision", "dtype": "string", "nullable": True},
        {"name": "brand", "dtype": "string", "nullable": True, "from": "make"},
    ]
    dsl = GraphBuilder.generate_dsl(nodes, name="cars", inputs=inputs, outputs=outputs)
    raw = json.loads(dsl)
    assert [n["id"] for n in raw["nodes"]] == [
        "fillna_0",
        "age_f",
        "map_2",
        "expr_3",
        "onnx_4",
        "threshold_5",
    ]
    assert raw["outputs"][1]["from"] == "make"
    spec = load_graph(dsl)
    again = load_graph(
        GraphBuilder.generate_dsl(list(spec.nodes), name="cars", inputs=inputs, outputs=outputs)
    )
    graph = compile_graph(spec, models)
    assert graph.digest == compile_graph(again, models).digest
    assert len(graph.digest) == 64
    batch = {
        "km": np.array([1.0, np.nan]),
        "age": np.array([0, 1]),
        "make": np.array(["vw", None], dtype=object),
    }
    result = graph.run(batch)
    assert result.columns["decision"].tolist() == ["skip", "skip"]
    assert result.columns["brand"].tolist() == ["volkswagen", None]
    info = {i.node_id: i for i in graph.explain()}
    assert str(info["fillna_0"].outputs["km"]) == "float64"
    assert str(info["fillna_0"].inputs["km"]) == "float64?"
    assert list(info) == ["fillna_0", "age_f", "map_2", "expr_3", "onnx_4", "threshold_5"]


def test_on_node_receives_every_node_and_time(models: InMemoryModels) -> None:
    nodes = [
        {"id": "a", "kind": "log1p", "columns": ["x"]},
        {"id": "b", "kind": "clip", "columns": ["x"], "lower": 0},
    ]
    spec = spec_of(
        nodes, [{"name": "x", "dtype": "float64"}], [{"name": "x", "dtype": "float64", "nullable": True}]
    )
    seen: list[tuple[str, float]] = []
    compile_graph(spec, models).run({"x": np.array([1.0, 2.0])}, on_node=lambda n, s: seen.append((n, s)))
    assert [n for n, _ in seen] == ["a", "b"] and all(s >= 0 for _, s in seen)


def test_cli_prints_schema_and_nodes(capsys: pytest.CaptureFixture[str]) -> None:
    from worker.cli import main

    assert main(["dsl-schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "onnx" in json.dumps(schema["$defs"]["ONNXNode"])
    assert main(["nodes", "--json"]) == 0
    catalog = json.loads(capsys.readouterr().out)
    onnx = next(entry for entry in catalog if entry["kind"] == "onnx")
    assert onnx["params"]["on_invalid"]["default"] == "reject"
    assert onnx["params"]["model_id"]["required"] is True


def test_read_only_input_columns_are_never_written() -> None:
    x = np.array([1.0, 2.0])
    x.setflags(write=False)
    nodes = [{"id": "f", "kind": "fillna", "columns": ["x"], "value": 0.0}]
    inputs = [{"name": "x", "dtype": "float64", "nullable": True}]
    result = run(nodes, inputs, [{"name": "x", "dtype": "float64"}], {"x": x})
    assert result.columns["x"].tolist() == [1.0, 2.0]
