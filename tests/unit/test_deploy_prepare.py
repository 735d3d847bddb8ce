"""The deploy-time contract check: nothing is written unless the graph, its models and both schemas fit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from examples.iris.train import train as train_iris
from worker.deploy.publish import Prepared, check_sample, prepare
from worker.errors import ConfigError, ModelError
from worker.models import ModelStore, parse_model_id

ROOT = Path(__file__).resolve().parents[2]
READER = ROOT / "schemas" / "iris_event.avsc"
OUTPUT = ROOT / "schemas" / "iris_score.avsc"


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the iris graph, the store its model is in)."""
    root = tmp_path_factory.mktemp("iris")
    store = root / "store"
    return train_iris(root, ModelStore(store)).graph, store


def schema(path: Path) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(path.read_text())
    return raw


def test_a_fitting_version_is_prepared_with_its_models_and_digest(iris: tuple[Path, Path]) -> None:
    graph, store = iris
    prepared = prepare("iris", graph, READER, OUTPUT, ModelStore(store), message="first")
    record = prepared.record
    assert isinstance(prepared, Prepared) and record.deployment == "iris" and record.message == "first"
    assert record.graph == json.loads(graph.read_text())
    assert record.graph_digest == prepared.compiled.digest
    assert record.reader_schema == schema(READER) and record.output_schema == schema(OUTPUT)
    assert [m.model_id for m in record.models] == list(prepared.compiled.model_ids)
    assert all(m.size > 0 for m in record.models) and record.parent is None


def test_a_model_missing_from_the_store_is_refused(iris: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="is not in the model store"):
        prepare("iris", iris[0], READER, OUTPUT, ModelStore(tmp_path / "empty"))


def test_tampered_model_bytes_are_refused(iris: tuple[Path, Path], tmp_path: Path) -> None:
    graph, store = iris
    copy = tmp_path / "store"
    copy.mkdir()
    for path in store.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    for model in ModelStore(store).list_models():
        onnx_file = copy / f"{parse_model_id(model.model_id)}.onnx"
        onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    with pytest.raises(ModelError, match="does not match its hash"):
        prepare("iris", graph, READER, OUTPUT, ModelStore(copy))


def test_a_graph_input_the_reader_schema_lacks_names_the_input(iris: tuple[Path, Path]) -> None:
    reader = schema(READER)
    dropped = reader["fields"].pop(0)["name"]
    with pytest.raises(ConfigError, match=f"graph input '{dropped}' is not a field") as caught:
        prepare("iris", iris[0], reader, OUTPUT, ModelStore(iris[1]))
    assert caught.value.field == "input.reader_schema"


def test_a_graph_output_the_output_schema_lacks_or_types_otherwise_is_refused(
    iris: tuple[Path, Path],
) -> None:
    lacking = schema(OUTPUT)
    lacking["fields"].pop()
    retyped = schema(OUTPUT)
    retyped["fields"][-1]["type"] = "boolean"
    for output in (lacking, retyped):
        with pytest.raises(ConfigError) as caught:
            prepare("iris", iris[0], READER, output, ModelStore(iris[1]))
        assert caught.value.field == "output.schema"


def test_a_bad_deployment_name_or_graph_file_is_refused_by_field(
    iris: tuple[Path, Path], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="deployment name") as caught:
        prepare("Iris!", iris[0], READER, OUTPUT, ModelStore(iris[1]))
    assert caught.value.field == "deployment"
    (tmp_path / "g.json").write_text("[1]")
    with pytest.raises(ConfigError, match="not a JSON object") as caught:
        prepare("iris", tmp_path / "g.json", READER, OUTPUT, ModelStore(iris[1]))
    assert caught.value.field == "graph"


def test_a_sample_must_score_whole(iris: tuple[Path, Path], tmp_path: Path) -> None:
    prepared = prepare("iris", iris[0], READER, OUTPUT, ModelStore(iris[1]))
    good = {"id": "a", "sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    sample = tmp_path / "sample.jsonl"
    sample.write_text("\n".join(json.dumps({**good, "id": str(i)}) for i in range(3)) + "\n")
    assert check_sample(prepared, sample) == "3 sample events scored"
    sample.write_text(json.dumps(good) + "\n" + json.dumps({**good, "sepal_length": "five"}) + "\n")
    with pytest.raises(ConfigError, match=r"sample event 1 of .* was not scored") as caught:
        check_sample(prepared, sample)
    assert caught.value.field == "--sample"
    sample.write_text("")
    with pytest.raises(ConfigError, match="holds no event"):
        check_sample(prepared, sample)
