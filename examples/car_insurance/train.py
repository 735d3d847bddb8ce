"""Train the car-insurance models, export them to ONNX, store them and write the scoring graphs.

Trains, on the features of examples/car_insurance/features.py, a GradientBoostingClassifier(n_estimators=80,
max_depth=5) as in the RTML template's config, and a LogisticRegression; exports both with skl2onnx (one float
input ``features`` of shape [N, n_features], ``zipmap`` off so probabilities are a plain tensor); uploads them
to a model store folder; and writes one graph per model (``graph_gbt.json``, ``graph_lr.json``), built with
``GraphBuilder``, that reproduces the pandas transformations node by node on live events.

Usage: ``python -m examples.car_insurance.train --out examples/car_insurance/out --models .models``
(``--events FILE`` trains on a generated file instead of ``--rows``/``--seed``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.base import ClassifierMixin
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from examples.car_insurance import features as fx
from examples.car_insurance.generate import generate
from worker.graph.builder import (
    Astype,
    Bucketize,
    DatetimeParts,
    Fillna,
    GraphBuilder,
    Log1p,
    Map,
    OneHotEncoder,
    ONNXNode,
    PickProba,
    Rename,
    Scale,
    Text,
    Threshold,
    TopK,
)
from worker.graph.dsl import Node
from worker.models import ModelStore

THRESHOLD = 0.5
INPUTS: tuple[dict[str, Any], ...] = (
    {"name": "ecid", "dtype": "string"},
    {"name": "km", "dtype": "int64", "nullable": True},
    {"name": "cartype", "dtype": "string"},
    {"name": "age", "dtype": "int64", "nullable": True},
    {"name": "gender", "dtype": "string", "nullable": True},
    {"name": "carbrand", "dtype": "string"},
    {"name": "leasing", "dtype": "bool"},
    {"name": "city", "dtype": "string"},
    {"name": "country", "dtype": "string"},
    {"name": "nationality", "dtype": "string"},
    {"name": "primaryuser", "dtype": "string"},
    {"name": "pricequote", "dtype": "float64"},
    {"name": "timestamp", "dtype": "datetime64[ms]"},
)
OUTPUTS: tuple[dict[str, Any], ...] = (
    {"name": "ecid", "dtype": "string"},
    {"name": "score", "dtype": "float64"},
    {"name": "label", "dtype": "int64"},
    {"name": "timestamp", "dtype": "datetime64[ms]"},
)


@dataclass
class Trained:
    """What ``train`` produced: the fitted estimators (by short name), their model ids and graph files."""

    frozen: fx.Frozen
    models: dict[str, ClassifierMixin]
    model_ids: dict[str, str] = field(default_factory=dict)
    graphs: dict[str, Path] = field(default_factory=dict)


def fit_models(x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, ClassifierMixin]:
    """The template's gradient boosting and a logistic regression, fitted on ``x`` (float64) and ``y``."""
    gbt = GradientBoostingClassifier(n_estimators=80, max_depth=5, random_state=seed)
    lr = LogisticRegression(max_iter=1000)
    return {"gbt": gbt.fit(x, y), "lr": lr.fit(x, y)}


def to_onnx_bytes(model: ClassifierMixin, n_features: int) -> bytes:
    """Export with one float32 input ``features`` [N, n_features]; outputs ``label`` and ``probabilities``."""
    onx = to_onnx(
        model,
        initial_types=[("features", FloatTensorType([None, n_features]))],
        options={"zipmap": False},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return bytes(onx.SerializeToString())


def graph_nodes(frozen: fx.Frozen, model_id: str) -> list[Node]:
    """The nodes that turn a raw event into ``frozen.feature_names``, score it and threshold the score."""
    nodes: list[Node] = [
        Text(id="brand_strip", columns=("carbrand",), op="strip"),
        Text(id="brand_lower", columns=("carbrand",), op="lower"),
        Map(id="brand_map", column="carbrand", mapping=fx.BRAND_MAP),
        Astype(id="counts_float", columns=("age", "km"), dtype="float64"),  # the medians may be x.5
        Fillna(id="age_fill", columns=("age",), value=frozen.age_median),
        Bucketize(
            id="age_bucket",
            column="age",
            edges=fx.AGE_EDGES,
            labels=fx.AGE_LABELS,
            closed="right",
            output="age_bucket",
        ),
        Fillna(id="km_fill", columns=("km",), value=frozen.km_median),
        Log1p(id="km_log", columns=("km",)),
        DatetimeParts(id="time_parts", column="timestamp", parts=("hour", "dayofweek"), prefix="ts"),
        Rename(id="time_names", mapping={"ts_hour": "hour", "ts_dayofweek": "dayofweek"}),
        Fillna(id="gender_fill", columns=("gender",), value="unknown"),
        TopK(id="city_top", column="city", keep=frozen.top_cities, other="Others"),
        Astype(id="leasing_float", columns=("leasing",), dtype="float64"),
    ]
    for name in fx.NUMERIC:
        mean, std = frozen.scale[name]
        nodes.append(Scale(id=f"scale_{name}", columns=(name,), mean=mean, std=std))
    for column in fx.CATEGORICAL:
        nodes.append(
            OneHotEncoder(id=f"onehot_{column}", column=column, categories=frozen.categories[column])
        )
    nodes += [
        ONNXNode(
            id="model", model_id=model_id, features=frozen.feature_names, outputs={"probabilities": "proba"}
        ),
        PickProba(id="pick_purchase", column="proba", index=1, output="score"),
        Threshold(id="decide", column="score", threshold=THRESHOLD, output="decision"),
        Astype(id="label_int", columns=("decision",), dtype="int64"),
        Rename(id="label_name", mapping={"decision": "label"}),
    ]
    return nodes


def graph_json(frozen: fx.Frozen, model_id: str, name: str) -> str:
    """The JSON DSL of the car-insurance graph for ``model_id``."""
    return GraphBuilder.generate_dsl(
        nodes=graph_nodes(frozen, model_id), name=name, inputs=list(INPUTS), outputs=list(OUTPUTS)
    )


def train(events: pd.DataFrame, out: Path, store: ModelStore, *, seed: int = 0) -> Trained:
    """Fit, export, upload and write the graphs into ``out``; return what was built."""
    out.mkdir(parents=True, exist_ok=True)
    frozen = fx.fit_frozen(events)
    x = fx.features(events, frozen).to_numpy(dtype=np.float64)
    trained = Trained(frozen, fit_models(x, events["purchase"].to_numpy(dtype=np.int64), seed))
    (out / "frozen.json").write_text(json.dumps(frozen.to_json(), indent=2) + "\n")
    for short, model in trained.models.items():
        path = out / f"car_insurance_{short}.onnx"
        path.write_bytes(to_onnx_bytes(model, x.shape[1]))
        model_id = store.upload(path).model_id
        graph = out / f"graph_{short}.json"
        graph.write_text(graph_json(frozen, model_id, f"car_insurance_{short}") + "\n")
        trained.model_ids[short], trained.graphs[short] = model_id, graph
    return trained


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the ONNX files and graphs")
    parser.add_argument("--models", required=True, help="model store to upload to: a folder or s3://...")
    parser.add_argument("--events", type=Path, help="train on this JSON Lines file (with 'purchase')")
    parser.add_argument("--rows", type=int, default=20_000, help="events to generate when --events is absent")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    events = (
        pd.read_json(args.events, lines=True) if args.events else pd.DataFrame(generate(args.rows, args.seed))
    )
    trained = train(events, args.out, ModelStore(args.models), seed=args.seed)
    for short, graph in trained.graphs.items():
        print(f"{short}: {trained.model_ids[short]}  {graph}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
