"""The iris tutorial graph: fillna + ONNX logistic regression, scored by the CLI, against pandas + sklearn."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from examples.iris.train import MEASUREMENTS, SPECIES, events, train
from worker.cli import main
from worker.models import ModelStore


def test_iris_scores_match_sklearn_with_training_means_filled_in(tmp_path: Path) -> None:
    trained = train(tmp_path / "out", ModelStore(tmp_path / "store"))
    rows = events(2_000, seed=3)
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(["score", str(trained.graph), "--input", str(path), "--models", str(tmp_path / "store")])
    lines = [json.loads(line) for line in out.getvalue().splitlines()]

    frame = pd.DataFrame(rows)
    assert frame[list(MEASUREMENTS)].isna().any(axis=1).sum() > 50  # the fillna path is exercised
    features = frame[list(MEASUREMENTS)].astype(np.float64).fillna(trained.means).to_numpy()
    reference = trained.model.predict_proba(features)
    got = np.array([[line[f"p_{name}"] for name in SPECIES] for line in lines])
    assert code == 0 and len(lines) == len(rows)
    assert [line["id"] for line in lines] == frame["id"].tolist()
    assert np.max(np.abs(got - reference)) <= 1e-5
    assert [line["class_index"] for line in lines] == trained.model.predict(features).tolist()
