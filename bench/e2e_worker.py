"""One streaming worker as a real process for the end-to-end benchmark: ``python -m worker run``.

``WorkerProcess`` writes the TOML settings, starts the process in its own session with its output in a log
file, finds the metrics port it bound (``metrics_port = 0``) from its "http server listening" log line, and
scrapes ``/metrics``. Used as a context manager: on exit the process gets SIGTERM (drain and commit), then
SIGKILL after ``STOP_BUDGET_S``, so no worker outlives the benchmark, also when it fails. Blocking calls;
``WorkerDied`` (with the log's tail) when the process exits while the benchmark still waits on it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO

from prometheus_client.parser import text_string_to_metric_families

from bench.e2e_kafka import EVENT_SCHEMA, SCORE_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
STOP_BUDGET_S = 15.0
START_TIMEOUT_S = 60.0
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class WorkerDied(RuntimeError):
    """The worker process exited while the benchmark was waiting on it."""


def worker_config(
    path: Path, *, bootstrap: str, registry_url: str, group: str, topics: tuple[str, str, str],
    graph: Path, store: Path, max_wait_ms: int, fetch_wait_max_ms: int | None = None,
) -> Path:  # fmt: skip
    """Write the TOML settings of one worker; ``topics`` is (input, output, dead letter).

    ``fetch_wait_max_ms`` goes to librdkafka through ``kafka.extra`` (None: librdkafka's 500 ms default).
    """
    source, output, dead = topics
    lines = [
        f"group_id = {json.dumps(group)}",
        f"graph = {json.dumps(str(graph))}",
        f"model_store = {json.dumps(str(store))}",
        'metrics_host = "127.0.0.1"',
        "metrics_port = 0",
        "commit_interval_ms = 100",  # the throughput run ends when the commits reach the end offsets
        "[kafka]",
        f"bootstrap_servers = {json.dumps(bootstrap)}",
        *(
            [f'extra = {{"fetch.wait.max.ms" = "{fetch_wait_max_ms}"}}']
            if fetch_wait_max_ms is not None
            else []
        ),
        "[schema_registry]",
        f"url = {json.dumps(registry_url)}",
        "[input]",
        f"topics = [{json.dumps(source)}]",
        f"reader_schema = {json.dumps(str(EVENT_SCHEMA))}",
        "[output]",
        f"topic = {json.dumps(output)}",
        f"schema = {json.dumps(str(SCORE_SCHEMA))}",
        "[dead_letter]",
        f"topic = {json.dumps(dead)}",
        "[batch]",
        f"max_wait_ms = {max_wait_ms}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


class WorkerProcess:
    """A running ``rtml-worker run``; stopped (SIGTERM, then SIGKILL) when the ``with`` block ends."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--config", str(config)],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._port: int | None = None

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_BUDGET_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_BUDGET_S)
        self._log.close()

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise WorkerDied(f"worker exited with {self.process.returncode}\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    @property
    def port(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while self._port is None:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if '"http server listening"' in line:
                    self._port = int(json.loads(line)["port"])
            self.check_alive()
            if time.monotonic() > deadline:
                raise WorkerDied(f"no metrics port after {START_TIMEOUT_S} s\n{self.tail()}")
            time.sleep(0.05)
        return self._port

    def scrape(self) -> Samples:
        """Every sample of ``/metrics``, keyed by (name, sorted labels)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
            text = response.read().decode()
        samples: Samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
        return samples

    def wait_for(
        self, name: str, at_least: float, timeout_s: float = START_TIMEOUT_S, every_s: float = 0.01
    ) -> float:
        """Poll ``/metrics`` until ``name``, summed over its labels, reaches ``at_least``; its value then."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive()
            value = total(self.scrape(), name)
            if value >= at_least:
                return value
            if time.monotonic() > deadline:
                raise WorkerDied(f"{name} stayed at {value} < {at_least} for {timeout_s} s\n{self.tail()}")
            time.sleep(every_s)


def total(samples: Samples, name: str) -> float:
    """The sum of ``name`` over all its label sets."""
    return sum(v for (n, _), v in samples.items() if n == name)
