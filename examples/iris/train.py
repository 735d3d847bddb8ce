"""RTML's scoring tutorial on iris: fill missing measurements, then a logistic regression in ONNX.

Trains a LogisticRegression on ``sklearn.datasets.load_iris`` (bundled with scikit-learn, no download),
exports it with one float input ``features`` [N, 4], uploads it to a model store folder, and writes
``graph_iris.json``: fillna of each measurement with its training mean, the ONNX node fed by the four
measurement columns, and the class probabilities split into one column per species.

``events(rows, seed)`` makes scoring events from the data set with a little noise and ~5% null measurements.
Usage: ``python -m examples.iris.train --out examples/iris/out --models .models``
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from worker.graph.builder import Fillna, GraphBuilder, ONNXNode, Rename
from worker.graph.dsl import Node
from worker.models import ModelStore

MEASUREMENTS = ("sepal_length", "sepal_width", "petal_length", "petal_width")
SPECIES = ("setosa", "versicolor", "virginica")


@dataclass(frozen=True)
class Trained:
    model: LogisticRegression
    means: dict[str, float]
    model_id: str
    graph: Path


def events(rows: int, seed: int) -> list[dict[str, Any]]:
    """``rows`` events drawn from the data set, with noise and ~5% nulls per measurement."""
    rng = np.random.default_rng(seed)
    data = load_iris().data
    picked = data[rng.integers(0, len(data), rows)] + rng.normal(0, 0.1, (rows, 4))
    out = []
    for i, row in enumerate(np.round(picked, 2).tolist()):
        nulls = rng.random(4) < 0.05
        values = {
            name: None if null else value for name, value, null in zip(MEASUREMENTS, row, nulls, strict=True)
        }
        out.append({"id": f"flower-{seed}-{i}", **values})
    return out


def graph_nodes(means: dict[str, float], model_id: str) -> list[Node]:
    nodes: list[Node] = [
        Fillna(id=f"fill_{name}", columns=(name,), value=means[name]) for name in MEASUREMENTS
    ]
    nodes.append(
        ONNXNode(
            id="model",
            model_id=model_id,
            features=MEASUREMENTS,
            outputs={"label": "class_index", "probabilities": "p"},
            split=True,
        )
    )
    nodes.append(
        Rename(id="species_names", mapping={f"p_{i}": f"p_{name}" for i, name in enumerate(SPECIES)})
    )
    return nodes


def train(out: Path, store: ModelStore) -> Trained:
    """Fit, export, upload, and write ``graph_iris.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    iris = load_iris()
    model = LogisticRegression(max_iter=1000).fit(iris.data, iris.target)
    means = {name: float(v) for name, v in zip(MEASUREMENTS, iris.data.mean(axis=0), strict=True)}
    onx = to_onnx(
        model,
        initial_types=[("features", FloatTensorType([None, 4]))],
        options={"zipmap": False},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    path = out / "iris_lr.onnx"
    path.write_bytes(onx.SerializeToString())
    model_id = store.upload(path).model_id
    graph = out / "graph_iris.json"
    dsl = GraphBuilder.generate_dsl(
        nodes=graph_nodes(means, model_id),
        name="iris",
        inputs=[{"name": "id", "dtype": "string"}]
        + [{"name": name, "dtype": "float64", "nullable": True} for name in MEASUREMENTS],
        outputs=[{"name": "id", "dtype": "string"}, {"name": "class_index", "dtype": "int64"}]
        + [{"name": f"p_{name}", "dtype": "float64"} for name in SPECIES],
    )
    graph.write_text(dsl + "\n")
    return Trained(model, means, model_id, graph)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", required=True, help="model store to upload to: a folder or s3://...")
    args = parser.parse_args(argv)
    trained = train(args.out, ModelStore(args.models))
    print(f"iris: {trained.model_id}  {trained.graph}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
