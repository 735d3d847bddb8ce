"""The paced load of the latency runs: a producer in a process of its own, at low CPU priority.

On this benchmark's 2-core machine the load generator shares the cores with the broker and the worker it
measures; in production producers run elsewhere. So it runs as a separate process (its Python never holds
the benchmark's GIL), niced by default (``NICE``: the worker's threads win a contended core; not when each
event is timed from its ``produce()`` call, which a starved producer would delay), with librdkafka's
default ``linger.ms`` of 5: the broker's CPU here goes with the number of produce requests far more than
with the number of events (about a third of a core at 200 requests/s, whatever their size), and a 1 ms
linger made it five times as many.

``PacedProducer`` is the handle the benchmark holds (``start``, ``join``, ``sent_at``, ``started_at``,
``failed``); ``python -m bench.e2e_paced ARGS`` is the process: it loads the event values from a file, says
``ready``, waits for ``go`` on stdin, produces ``values[i % n]`` keyed by ``i`` at the rate for the duration,
flushes, and writes the wall clock of every ``produce()`` call (by send number) to an ``.npy`` file (unless
``record_times`` is off: a long soak would hold tens of millions) and a JSON summary line to stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from confluent_kafka import KafkaError, Message, Producer

NICE = 10
LINGER_MS = 5  # librdkafka's default
TICK_S = 0.0005
FLUSH_TIMEOUT_S = 30.0
START_TIMEOUT_S = 60.0


class PacedProducer:
    """Produces ``values`` round robin at ``rate`` events per second for ``seconds`` from a child process."""

    def __init__(
        self, bootstrap: str, topic: str, values: Sequence[bytes], rate: float, seconds: float,
        *, nice: int = NICE, record_times: bool = True,
    ) -> None:  # fmt: skip
        self._dir = tempfile.TemporaryDirectory(prefix="rtml-paced-")
        root = Path(self._dir.name)
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        (root / "values.bin").write_bytes(b"".join(values))
        np.save(root / "lengths.npy", lengths)
        self._args = [bootstrap, topic, str(root), repr(float(rate)), repr(float(seconds)), str(nice),
                      "1" if record_times else "0"]  # fmt: skip
        self._process: subprocess.Popen[str] | None = None
        self.sent_at: list[float] = []  # wall clock of each produce() call, by send number
        self.sent = 0  # how many were sent
        self.started_at = 0.0
        self.failed: list[str] = []

    def start(self) -> None:
        """Start the process, wait until it is connected and has its values, then let it go."""
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.e2e_paced", *self._args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=Path(__file__).resolve().parents[1],
        )  # fmt: skip
        assert self._process.stdin is not None and self._process.stdout is not None
        line = self._process.stdout.readline().strip()
        if line != "ready":
            self._process.kill()
            raise RuntimeError(f"paced producer did not start: {line!r}")
        self._process.stdin.write("go\n")
        self._process.stdin.flush()

    def join(self) -> None:
        """Wait for the run to end; then ``sent_at``, ``started_at`` and ``failed`` hold its outcome."""
        if self._process is None:
            raise RuntimeError("not started")
        out, _ = self._process.communicate(timeout=float(self._args[4]) + FLUSH_TIMEOUT_S + START_TIMEOUT_S)
        try:
            summary = json.loads(out.strip().splitlines()[-1])
        except (IndexError, ValueError) as exc:
            raise RuntimeError(f"paced producer exited with {self._process.returncode}: {out!r}") from exc
        self.started_at, self.failed, self.sent = summary["started_at"], summary["failed"], summary["sent"]
        times = Path(self._dir.name) / "sent_at.npy"
        self.sent_at = np.load(times).tolist() if times.exists() else []
        self._dir.cleanup()


def main(bootstrap: str, topic: str, root: str, rate: float, seconds: float, nice: int, record: bool) -> None:
    os.nice(nice)
    lengths = np.load(Path(root) / "lengths.npy")
    data = (Path(root) / "values.bin").read_bytes()
    ends = np.cumsum(lengths).tolist()
    values = [data[end - n : end] for end, n in zip(ends, lengths.tolist(), strict=True)]
    failed: list[str] = []

    def on_error(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failed.append(str(error))

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                         "linger.ms": LINGER_MS, "delivery.report.only.error": True,
                         "on_delivery": on_error})  # fmt: skip
    producer.list_topics(topic, timeout=START_TIMEOUT_S)  # connected before the clock starts
    print("ready", flush=True)
    sys.stdin.readline()
    n, sent_at, produce, sent = len(values), [], producer.produce, 0
    started_at = time.time()
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for i in range(sent, int(elapsed * rate)):
            if record:
                sent_at.append(time.time())
            produce(topic, values[i % n], b"%d" % i)
            sent += 1
        producer.poll(0)
        time.sleep(TICK_S)
    if producer.flush(FLUSH_TIMEOUT_S):
        failed.append("flush timed out")
    if record:
        np.save(Path(root) / "sent_at.npy", np.asarray(sent_at, dtype=np.float64))
    print(json.dumps({"started_at": started_at, "failed": failed, "sent": sent}), flush=True)


if __name__ == "__main__":
    argv = sys.argv
    main(argv[1], argv[2], argv[3], float(argv[4]), float(argv[5]), int(argv[6]), argv[7] == "1")
