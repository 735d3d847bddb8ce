"""``rtml-worker score | validate | explain`` on a tiny graph around a hand-built ONNX model (y = x + w)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from worker.cli import main
from worker.models import ModelStore, model_id_of
from worker.models.testing import add_model


def write_graph(tmp_path: Path, model_id: str, **overrides: Any) -> Path:
    graph = {
        "name": "adder",
        "inputs": [
            {"name": "id", "dtype": "string"},
            {"name": "a", "dtype": "float64", "nullable": True},
            {"name": "b", "dtype": "float64"},
        ],
        "nodes": [
            {
                "id": "model",
                "kind": "onnx",
                "model_id": model_id,
                "features": ["a", "b"],
                "split": True,
                "outputs": {"y": "y"},
            },
        ],
        "outputs": [
            {"name": "id", "dtype": "string"},
            {"name": "y_0", "dtype": "float64"},
            {"name": "y_1", "dtype": "float64"},
        ],
        **overrides,
    }
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(graph))
    return path


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, str]:
    info = ModelStore(tmp_path / "store").put(add_model(), name="adder")
    return tmp_path / "store", info.model_id


def test_score_prints_one_line_per_event_in_order(
    tmp_path: Path, store: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, model_id = store
    events = tmp_path / "events.jsonl"
    events.write_text(
        "\n".join(
            [
                json.dumps({"id": "e0", "a": 1.0, "b": 2.0}),
                json.dumps({"id": "e1", "a": None, "b": 2.0}),  # null feature: the ONNX node rejects it
                "not json",
                json.dumps({"id": "e3", "a": 0.5, "b": "x"}),  # does not fit float64
                json.dumps({"id": "e4", "a": -1.5, "b": 0}),
            ]
        )
        + "\n"
    )
    graph = write_graph(tmp_path, model_id)
    code = main(["score", str(graph), "--input", str(events), "--models", str(folder), "--batch-size", "2"])
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 0
    assert lines[0] == {"id": "e0", "y_0": 2.5, "y_1": 0.0}
    assert lines[4] == {"id": "e4", "y_0": 0.0, "y_1": -2.0}
    assert lines[1]["error"]["stage"] == "graph" and lines[1]["error"]["node_id"] == "model"
    assert lines[1]["error"]["model_id"] == model_id and lines[1]["error"]["offset"] == 1
    assert lines[2]["error"]["stage"] == "decode"
    assert lines[3]["error"]["stage"] == "validate" and "'b'" in lines[3]["error"]["reason"]
    assert "5 events, 2 scored, 3 rejected" in captured.err


def test_validate_says_ok(
    tmp_path: Path, store: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, model_id = store
    assert main(["validate", str(write_graph(tmp_path, model_id)), "--models", str(folder)]) == 0
    assert capsys.readouterr().out.strip() == "ok"


def test_validate_names_a_missing_model(
    tmp_path: Path, store: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = store
    graph = write_graph(tmp_path, model_id_of(b"not uploaded"))
    assert main(["validate", str(graph), "--models", str(folder)]) == 2
    assert "is not in the model store" in capsys.readouterr().err


def test_validate_names_the_bad_node(
    tmp_path: Path, store: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, model_id = store
    nodes = [
        {"id": "model", "kind": "onnx", "model_id": model_id, "features": ["a", "missing"], "split": True}
    ]
    graph = write_graph(tmp_path, model_id, nodes=nodes)
    assert main(["validate", str(graph), "--models", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "node 'model'" in err and "missing" in err


def test_validate_refuses_a_tampered_model(
    tmp_path: Path, store: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, model_id = store
    path = folder / f"{model_id.removeprefix('sha256:')}.onnx"
    path.write_bytes(path.read_bytes() + b"\x00")
    assert main(["validate", str(write_graph(tmp_path, model_id)), "--models", str(folder)]) == 2
    assert "does not match its hash" in capsys.readouterr().err


def test_explain_lists_each_node_with_typed_columns(
    tmp_path: Path, store: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, model_id = store
    graph = write_graph(tmp_path, model_id)
    assert main(["explain", str(graph), "--models", str(folder)]) == 0
    text = capsys.readouterr().out
    assert "1. model (onnx)" in text
    assert "in:  a float64?, b float64" in text
    assert "out: y_0 float64, y_1 float64" in text

    assert main(["explain", str(graph), "--models", str(folder), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["model_ids"] == [model_id]
    (node,) = described["nodes"]
    assert (node["id"], node["inputs"], node["outputs"]) == (
        "model",
        {"a": "float64?", "b": "float64"},
        {"y_0": "float64", "y_1": "float64"},
    )


def test_a_missing_input_file_is_exit_2(
    tmp_path: Path, store: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, model_id = store
    graph = write_graph(tmp_path, model_id)
    assert main(["score", str(graph), "--input", str(tmp_path / "none.jsonl"), "--models", str(folder)]) == 2
    assert "--input" in capsys.readouterr().err
