"""Acceptance: `rtml-worker score` on the car-insurance graphs matches pandas + scikit-learn on the same rows.

Models are trained on one seed and scored on 10,000 events of another. The reference applies the training-time
pandas transformations (examples/car_insurance/features.py) and calls ``predict_proba`` of the fitted
estimators: none of the worker's node code is involved.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from examples.car_insurance import features as fx
from examples.car_insurance.generate import generate, write
from examples.car_insurance.train import THRESHOLD, Trained, train
from worker.cli import main
from worker.models import ModelStore

SCORED_ROWS = 10_000


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Trained, Path]:
    root = tmp_path_factory.mktemp("car_insurance")
    events = pd.DataFrame(generate(6_000, seed=1))
    return train(events, root / "out", ModelStore(root / "store"), seed=1), root


@pytest.fixture(scope="module")
def scored_events(trained: tuple[Trained, Path]) -> tuple[list[dict[str, Any]], Path]:
    events = generate(SCORED_ROWS, seed=2)
    path = trained[1] / "events.jsonl"
    write(events, path)
    return events, path


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(list(argv))
    return code, out.getvalue()


def score(graph: Path, events: Path, store: Path, *extra: str) -> list[dict[str, Any]]:
    code, out = run_cli("score", str(graph), "--input", str(events), "--models", str(store), *extra)
    assert code == 0
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize("model", ["gbt", "lr"])
def test_scores_match_pandas_and_sklearn(
    trained: tuple[Trained, Path], scored_events: tuple[list[dict[str, Any]], Path], model: str
) -> None:
    result, root = trained
    events, path = scored_events
    lines = score(result.graphs[model], path, root / "store")

    frame = pd.DataFrame(events)
    reference = result.models[model].predict_proba(fx.features(frame, result.frozen).to_numpy())[:, 1]

    assert len(lines) == SCORED_ROWS
    assert not [line for line in lines if "error" in line]
    assert [line["ecid"] for line in lines] == frame["ecid"].tolist()
    got = np.array([line["score"] for line in lines])
    assert np.max(np.abs(got - reference)) <= 1e-5
    clear = np.abs(reference - THRESHOLD) > 1e-5  # at the threshold itself float32 may tip either way
    labels = np.array([line["label"] for line in lines])
    np.testing.assert_array_equal(labels[clear], (reference[clear] >= THRESHOLD).astype(int))
    assert 0.05 < labels.mean() < 0.95  # the models learnt something, not a constant


def test_avro_input_gives_the_same_scores_as_json_lines(
    trained: tuple[Trained, Path], scored_events: tuple[list[dict[str, Any]], Path]
) -> None:
    result, root = trained
    events, path = scored_events
    avro = root / "events.avro"
    write(events[:2_000], avro)
    from_json = score(result.graphs["lr"], path, root / "store", "--batch-size", "333")[:2_000]
    assert score(result.graphs["lr"], avro, root / "store") == from_json


def test_batch_size_does_not_change_results(
    trained: tuple[Trained, Path], scored_events: tuple[list[dict[str, Any]], Path], tmp_path: Path
) -> None:
    result, root = trained
    events, _ = scored_events
    path = tmp_path / "few.jsonl"
    write(events[:50], path)
    one = score(result.graphs["gbt"], path, root / "store", "--batch-size", "1")
    assert one == score(result.graphs["gbt"], path, root / "store", "--batch-size", "1000")


def test_bad_events_get_an_error_line_at_their_position(
    trained: tuple[Trained, Path], tmp_path: Path
) -> None:
    result, root = trained
    good = generate(3, seed=5)
    lines = [
        json.dumps(good[0]),
        "{broken",
        json.dumps({**good[1], "pricequote": "cheap"}),
        json.dumps(good[2]),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = score(result.graphs["lr"], path, root / "store")
    assert [line.get("ecid") for line in out] == [good[0]["ecid"], None, None, good[2]["ecid"]]
    assert out[1]["error"]["stage"] == "decode" and out[1]["error"]["offset"] == 1
    assert out[2]["error"]["stage"] == "validate" and "pricequote" in out[2]["error"]["reason"]


def test_dirty_brands_are_cleaned_like_training(trained: tuple[Trained, Path], tmp_path: Path) -> None:
    result, root = trained
    base = generate(1, seed=9)[0]
    variants = [{**base, "carbrand": brand} for brand in (" BMW ", "bmw", "BMW")]
    variants += [{**base, "carbrand": brand} for brand in ("vw", "VW", "Volkswagen")]
    path = tmp_path / "brands.jsonl"
    write(variants, path)
    scores = [line["score"] for line in score(result.graphs["lr"], path, root / "store")]
    assert scores[0] == scores[1] == scores[2] and scores[3] == scores[4] == scores[5]
    assert scores[0] != scores[3]
