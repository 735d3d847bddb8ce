"""The benchmark's stand-ins replay a stage's first real output, cycled to each later batch's size."""

from __future__ import annotations

import numpy as np
import pytest

from bench.stand_ins import _replay, main
from worker.columns import StageResult


def test_replay_cycles_the_first_output_over_the_new_batch() -> None:
    first = StageResult({"x": np.array([1.0, 2.0, 3.0]), "s": np.array(["a", "b", "c"], dtype=object)},
                        np.array([0, 2, 5], dtype=np.int64), {})  # fmt: skip
    got = _replay(first, 7)
    assert got.rows.tolist() == list(range(7)) and got.errors == {}
    assert got.columns["x"].tolist() == [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0]
    assert got.columns["s"].tolist() == ["a", "b", "c", "a", "b", "c", "a"]


def test_an_unknown_stage_is_refused_by_name() -> None:
    with pytest.raises(SystemExit, match="unknown stages \\['encode'\\]"):
        main(["encode", "run", "--config", "x.toml"])
