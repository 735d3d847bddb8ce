"""Run the worker with some stages replaced by stand-ins that cost next to nothing: a bound, not a mode.

``python -m bench.stand_ins decode,graph run --config FILE`` starts ``rtml-worker run`` in which each named
stage replays its first real output: the first batch is decoded (or scored) for real, and every later batch
of n rows gets rows ``0..n-1`` of that output, cycled, by one gather per column. The scores are wrong; the
work around them (consume, batching, encode, produce, commits, metrics) is the real one. ``bench/bound.py``
uses it to measure how low the worker's latency could go if those stages cost nothing.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from worker.avro.decoder import BatchDecoder
from worker.columns import Batch, StageResult
from worker.graph.runner import CompiledGraph

STAGES = ("decode", "graph")


def _replay(first: StageResult[Any], n: int) -> StageResult[Any]:
    rows = np.arange(n, dtype=np.int64)
    at = rows % len(first.rows)
    return StageResult({name: column[at] for name, column in first.columns.items()}, rows, {})


def _stand_in_decode() -> None:
    real = BatchDecoder.decode
    seen: list[StageResult[Any]] = []

    def decode(self: BatchDecoder, values: Any, **where: Any) -> StageResult[Any]:
        if not seen:
            got = real(self, values, **where)
            if got.errors or not len(got.rows):
                return got
            seen.append(got)
            return got
        return _replay(seen[0], len(values))

    BatchDecoder.decode = decode  # type: ignore[method-assign]


def _stand_in_graph() -> None:
    real = CompiledGraph.run
    seen: list[StageResult[Any]] = []

    def run(self: CompiledGraph, batch: Batch, **kw: Any) -> StageResult[Any]:
        if not seen:
            got = real(self, batch, **kw)
            if got.errors or not len(got.rows):
                return got
            seen.append(got)
            return got
        return _replay(seen[0], len(next(iter(batch.values()))))

    CompiledGraph.run = run  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    stages = [s for s in argv[0].split(",") if s]
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise SystemExit(f"unknown stages {sorted(unknown)}; known: {', '.join(STAGES)}")
    if "decode" in stages:
        _stand_in_decode()
    if "graph" in stages:
        _stand_in_graph()
    from worker.cli import main as worker_main

    return worker_main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
