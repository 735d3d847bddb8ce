"""The score reader of the latency runs, in a process of its own: arrival times not skewed by the benchmark.

As a thread of the benchmark process it shared a GIL with the benchmark's own work (parsing a ``/metrics``
scrape takes tens of milliseconds), so scores that arrived meanwhile were stamped late: that alone put the
p99 of the score-to-read delay near 300 ms at a tenth of capacity, against about 25 ms measured from a
separate process.

``ScoreReader`` is the handle (``start``, ``finish``, then ``scores``); ``python -m bench.e2e_reader ARGS``
is the process: it reads every partition of the topic from the beginning (assigned, no group), stamps each
``poll`` result with ``time.time()``, says ``ready`` once assigned, and when told on stdin how many scores
to expect, stops at that count (or at the deadline) and writes one row per score to an ``.npy`` file:
send number (the key), source partition and offset (lineage headers), score timestamp (ms), arrival (s).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

START_TIMEOUT_S = 60.0


class ScoreReader:
    """Reads every score of ``topic`` from a child process; ``scores`` holds them once ``finish`` returns."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="rtml-reader-")
        self._args = [bootstrap, topic, str(partitions), self._dir.name]
        self._process: subprocess.Popen[str] | None = None
        # One row per score: send number, source partition, source offset, score timestamp (ms), arrival (s).
        self.scores: npt.NDArray[np.float64] = np.zeros((0, 5))

    def start(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.e2e_reader", *self._args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
        )  # fmt: skip
        assert self._process.stdout is not None
        line = self._process.stdout.readline().strip()
        if line != "ready":
            self._process.kill()
            raise RuntimeError(f"score reader did not start: {line!r}")

    def finish(self, expected: int, timeout_s: float) -> None:
        """Tell the reader how many scores to wait for (at most ``timeout_s``), then load what it read."""
        if self._process is None:
            raise RuntimeError("not started")
        out, _ = self._process.communicate(f"{expected} {timeout_s}\n", timeout=timeout_s + START_TIMEOUT_S)
        if self._process.returncode != 0:
            raise RuntimeError(f"score reader exited with {self._process.returncode}: {out!r}")
        self.scores = np.load(Path(self._dir.name) / "scores.npy")
        self._dir.cleanup()

    def stop(self) -> None:
        """On failure: end the child without waiting for its scores."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._dir.cleanup()


def reader_consumer(bootstrap: str) -> Consumer:
    """A consumer that reads topics back (assigned, never committing) with a short broker-side fetch wait."""
    return Consumer({"bootstrap.servers": bootstrap, "group.id": "e2e-reader", "enable.auto.commit": False,
                     "fetch.wait.max.ms": 10})  # fmt: skip


def main(bootstrap: str, topic: str, partitions: int, root: str) -> None:
    consumer = reader_consumer(bootstrap)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    told: list[str] = []
    listener = threading.Thread(target=lambda: told.append(sys.stdin.readline()), daemon=True)
    listener.start()
    print("ready", flush=True)
    rows: list[tuple[int, int, int, int, float]] = []
    deadline = float("inf")
    expected = -1
    while len(rows) != expected and time.monotonic() < deadline:
        if told and expected < 0:
            count, timeout_s = told[0].split()
            expected, deadline = int(count), time.monotonic() + float(timeout_s)
        # poll returns on the first message; a blocking consume(n, t) would hold it back up to t.
        first = consumer.poll(0.05)
        if first is None:
            continue
        messages = [first, *consumer.consume(999, 0)]
        arrived = time.time()
        for m in messages:
            if m.error() is None:
                lineage = dict(m.headers() or ())
                rows.append((int(m.key()), int(lineage["rtml.source.partition"]),  # type: ignore[arg-type]
                             int(lineage["rtml.source.offset"]), m.timestamp()[1], arrived))  # fmt: skip
    consumer.close()
    np.save(Path(root) / "scores.npy", np.asarray(rows, dtype=np.float64).reshape(-1, 5))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
