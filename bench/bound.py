"""How low the in-worker latency at half capacity could go if decoding or scoring cost nothing.

The same paced half-capacity run as bench/e2e.py (same rate: half of ``e2e_worker_events_per_s`` from this
``make bench``, so run after the e2e suite; same niced producer, same worker settings), once per set of
stages replaced by stand-ins that replay their first real output (bench/stand_ins.py): none, the graph, the
decoder, both. The scores of the stand-in runs are wrong; the rest of the worker's work is real. The figures
bound what a faster decoder or graph could give on this machine: ``p99_in_worker_ms_at_bound_<stages>``,
with the batching and loop figures of each run (see bench/e2e.py).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from bench.e2e import DEFAULT_MAX_WAIT_MS, Bench
from bench.e2e_kafka import Scratch
from bench.run import RESULTS

EVENTS = 20_000  # the values the paced producer cycles through; nothing is pre-filled
STAND_INS: tuple[tuple[str, str], ...] = (
    ("none", ""),
    ("graph", "graph"),
    ("decode", "decode"),
    ("decode_graph", "decode,graph"),
)


def run() -> dict[str, float]:
    measured = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if "e2e_worker_events_per_s" not in measured:
        raise RuntimeError(f"no e2e_worker_events_per_s in {RESULTS}: run the e2e suite first")
    rate = measured["e2e_worker_events_per_s"] * 0.5
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    registry_url = os.environ.get("SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081/apis/ccompat/v7")
    figures: dict[str, float] = {"bound_events_per_s_asked": round(rate)}
    with tempfile.TemporaryDirectory() as tmp, Scratch(bootstrap, registry_url) as scratch:
        bench = Bench(scratch, Path(tmp), events=EVENTS, fill=False)
        for name, stages in STAND_INS:
            figures.update(bench.paced(f"bound_{name}", rate, DEFAULT_MAX_WAIT_MS, None, False, stages))
    return figures


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
