"""One streaming worker as a real process for the end-to-end benchmark: ``python -m worker run``.

``worker_config`` writes the TOML settings. ``WorkerProcess`` is the shipped ``worker.testing.WorkerProcess``
(start with the output in a log file, the metrics port from the "http server listening" log line, SIGTERM
then SIGKILL when the ``with`` block ends, so no worker outlives the benchmark, also when it fails) plus what
the benchmark reads: ``scrape`` parses ``/metrics``, ``wait_for`` polls one metric. Blocking calls;
``WorkerDied`` (with the log's tail) when the process exits while the benchmark still waits on it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench.e2e_kafka import EVENT_SCHEMA, SCORE_SCHEMA
from worker import testing
from worker.testing import START_TIMEOUT_S, WorkerProcessError

ROOT = Path(__file__).resolve().parents[1]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class WorkerDied(WorkerProcessError):
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


class WorkerProcess(testing.WorkerProcess):
    """A running ``rtml-worker run`` (``WorkerProcess.start(config, log, cwd=ROOT)``) the benchmark reads."""

    def check_alive(self) -> None:
        if not self.alive:
            raise WorkerDied(f"worker exited with {self.returncode}\n{self.tail()}")

    def scrape(self) -> Samples:
        """Every sample of ``/metrics``, keyed by (name, sorted labels)."""
        try:
            status, body = self.get("/metrics")
        except WorkerProcessError as exc:  # it exited before logging its port, or never logged it
            raise WorkerDied(str(exc)) from None
        if status != 200:
            raise WorkerDied(f"/metrics answered {status}\n{self.tail()}")
        text = body.decode()
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
