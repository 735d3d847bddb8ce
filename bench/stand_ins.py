"""Run the worker with some stages replaced by stand-ins that cost next to nothing: a bound, not a mode.

``python -m bench.stand_ins decode,graph run --config FILE`` starts ``rtml-worker run`` in which each named
stage replays its first real output: the first batch is decoded (or scored) for real, and every later batch
of n rows gets rows ``0..n-1`` of that output, cycled, by one gather per column. The scores are wrong; the
work around them (consume, batching, encode, produce, commits, metrics) is the real one. ``bench/bound.py``
uses it to measure how low the worker's latency could go if those stages cost nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from worker.avro.decoder import BatchDecoder
from worker.columns import StageResult
from worker.graph.runner import CompiledGraph

STAGES = ("decode", "graph")
Stage = Callable[..., StageResult[Any]]


def _replay(first: StageResult[Any], n: int) -> StageResult[Any]:
    rows = np.arange(n, dtype=np.int64)
    at = rows % len(first.rows)
    return StageResult({name: column[at] for name, column in first.columns.items()}, rows, {})


def _replaying(real: Stage, rows_of: Callable[[Any], int]) -> Stage:
    """``real`` until it gives a clean, non-empty output; that output replayed from then on."""
    seen: list[StageResult[Any]] = []

    def stage(self: Any, data: Any, **kw: Any) -> StageResult[Any]:
        if seen:
            return _replay(seen[0], rows_of(data))
        got = real(self, data, **kw)
        if not got.errors and len(got.rows):
            seen.append(got)
        return got

    return stage


def main(argv: list[str]) -> int:
    stages = [s for s in argv[0].split(",") if s]
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise SystemExit(f"unknown stages {sorted(unknown)}; known: {', '.join(STAGES)}")
    if "decode" in stages:
        BatchDecoder.decode = _replaying(BatchDecoder.decode, len)  # type: ignore[method-assign]
    if "graph" in stages:
        CompiledGraph.run = _replaying(CompiledGraph.run, lambda batch: len(next(iter(batch.values()))))  # type: ignore[method-assign]
    from worker.cli import main as worker_main

    return worker_main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
