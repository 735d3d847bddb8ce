"""The benchmark's stand-ins replay a stage's first real output, cycled to each later batch's size."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bench.stand_ins import _replay, _replaying, main
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


def test_a_stand_in_runs_the_real_stage_until_a_clean_output_then_replays_it() -> None:
    calls: list[int] = []
    outputs = [
        StageResult({"x": np.array([9.0])}, np.zeros(0, dtype=np.int64), {0: "bad"}),  # not clean: not kept
        StageResult({"x": np.array([1.0, 2.0])}, np.array([0, 1], dtype=np.int64), {}),
    ]

    def real(_self: Any, data: list[int], **_kw: Any) -> StageResult[Any]:
        calls.append(len(data))
        return outputs[len(calls) - 1]

    stage = _replaying(real, len)
    assert stage(None, [0]).errors == {0: "bad"}
    assert stage(None, [0, 0]).columns["x"].tolist() == [1.0, 2.0]
    assert stage(None, [0, 0, 0], topic="t").columns["x"].tolist() == [1.0, 2.0, 1.0]
    assert calls == [1, 2]  # the third batch never reached the real stage
