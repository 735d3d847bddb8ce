"""Graph benchmark: per-event cost of the car-insurance graphs by stage, at batch sizes 1 to 10,000.

Trains the two car-insurance models on generated events (a few seconds), builds the input columns once, then
times ``CompiledGraph.run`` per batch size, side by side in one process. Per node the runner's ``on_node``
hook gives seconds; the ONNX node is the ``onnx`` stage, every other node ``preprocess``. The whole-graph
figure is timed without the hook. Each figure is the median of ``REPEATS`` repeats, in microseconds per event.

Figures: ``graph_{lr,gbt}_{preprocess,onnx,total}_us_per_event_b{1,100,1000,10000}`` and
``graph_batch_speedup``: whole LR graph per-event cost at batch 1 / at batch 1000.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from examples.car_insurance.generate import generate
from examples.car_insurance.train import train
from worker.columns import Batch, take
from worker.graph import CompiledGraph, compile_graph, load_graph
from worker.models import ModelStore
from worker.scoring.records import records_to_batch

BATCH_SIZES = (1, 100, 1000, 10_000)
EVENTS_PER_REPEAT = {1: 300, 100: 3_000, 1000: 10_000, 10_000: 20_000}
REPEATS = 5


def run() -> dict[str, float]:
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = ModelStore(root / "store")
        trained = train(pd.DataFrame(generate(5_000, seed=1)), root / "out", store, seed=1)
        for short in ("lr", "gbt"):
            graph = compile_graph(load_graph(trained.graphs[short]), store)
            columns = records_to_batch(generate(10_000, seed=2), graph.inputs).columns
            for size in BATCH_SIZES:
                stages = _measure(graph, columns, size)
                for stage, value in stages.items():
                    figures[f"graph_{short}_{stage}_us_per_event_b{size}"] = round(value, 3)
    figures["graph_batch_speedup"] = round(
        figures["graph_lr_total_us_per_event_b1"] / figures["graph_lr_total_us_per_event_b1000"], 2
    )
    return figures


def _measure(graph: CompiledGraph, columns: Batch, size: int) -> dict[str, float]:
    """Median per-event microseconds of the preprocess nodes, the ONNX node, and the whole run."""
    onnx_nodes = {info.node_id for info in graph.explain() if info.kind == "onnx"}
    batches = _batches(columns, size, EVENTS_PER_REPEAT[size])
    events = sum(len(next(iter(b.values()))) for b in batches)
    graph.run(batches[0])  # warm-up: first-call allocations in ONNX Runtime
    totals, pre, onnx = [], [], []
    for _ in range(REPEATS):
        spent = {"preprocess": 0.0, "onnx": 0.0}

        def observe(node_id: str, seconds: float, spent: dict[str, float] = spent) -> None:
            spent["onnx" if node_id in onnx_nodes else "preprocess"] += seconds

        for batch in batches:
            graph.run(batch, on_node=observe)
        pre.append(spent["preprocess"] / events * 1e6)
        onnx.append(spent["onnx"] / events * 1e6)
        started = time.perf_counter()
        for batch in batches:
            graph.run(batch)
        totals.append((time.perf_counter() - started) / events * 1e6)
    return {
        "preprocess": statistics.median(pre),
        "onnx": statistics.median(onnx),
        "total": statistics.median(totals),
    }


def _batches(columns: Batch, size: int, events: int) -> list[Batch]:
    n = len(next(iter(columns.values())))
    starts = [(i * size) % max(n - size + 1, 1) for i in range(max(events // size, 1))]
    return [take(columns, np.arange(start, start + size, dtype=np.int64)) for start in starts]


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
