"""Run every benchmark suite and write ``bench/results/latest.json``: one flat object of named figures.

Each suite is a module in ``bench/`` with ``run() -> dict[str, float]``. Suites measure side by side in one
process and report medians of repeats, because this machine's two shared cores are noisy.
Usage: ``python -m bench.run [SUITE ...]`` (default: all). The file is written after each suite: ``bound``
reads the capacity the ``e2e`` suite measured.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

SUITES: tuple[str, ...] = ("bench.graph", "bench.avro", "bench.e2e", "bench.bound")
RESULTS = Path(__file__).parent / "results" / "latest.json"


def main(argv: list[str]) -> int:
    chosen = argv or [s.rsplit(".", 1)[-1] for s in SUITES]
    figures: dict[str, float] = {}
    if RESULTS.exists() and argv:
        figures.update(json.loads(RESULTS.read_text()))  # a partial run keeps the other suites' figures
    for suite in SUITES:
        if suite.rsplit(".", 1)[-1] not in chosen:
            continue
        started = time.perf_counter()
        got = importlib.import_module(suite).run()
        print(f"{suite}: {len(got)} figures in {time.perf_counter() - started:.0f}s", file=sys.stderr)
        figures.update(got)
        write(figures)  # after each suite: a later one may read an earlier one's figures (bound reads e2e's)
    write(figures)
    print(json.dumps(dict(sorted(figures.items())), indent=2))
    return 0


def write(figures: dict[str, float]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(dict(sorted(figures.items())), indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
