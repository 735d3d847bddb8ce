"""End-to-end benchmark through the real local broker: the streaming worker against a per-message loop.

Workload: car-insurance events (``examples.car_insurance.generate``), the template graph with logistic
regression (``examples.car_insurance.train``), Confluent framing with the schema registered in the registry.
Needs ``KAFKA_BOOTSTRAP_SERVERS`` and ``SCHEMA_REGISTRY_URL`` (``make bench`` sets them); every topic, group
and subject it creates is deleted at the end, every worker process it starts is stopped, also on failure.

1. Pre-fill a 12-partition topic with ``EVENTS`` distinct events (fastavro ``schemaless_writer``).
2. ``REPEATS`` times, side by side:
   - one worker process (``python -m worker run``, fresh group, default batching) reads the topic from the
     start. The clock starts when its ``/metrics`` first shows consumed events (polled every 5 ms; the
     events counted then are left out) and stops when the group's committed offsets reach the end offsets
     (polled every 20 ms; the worker commits every 100 ms, and only what its producer acknowledged), so it
     covers consume, decode, score, encode, produce, acknowledgement and commit;
   - the per-message baseline (bench/e2e_baseline.py) scores the next ``BASELINE_EVENTS`` of the same topic
     in the benchmark process.
3. For each of ``PACED_LOADS``, a fresh worker scores a fresh topic fed at a fraction of the median worker
   rate for ``PACED_S`` seconds (the first ``WARM_UP_S`` not counted): half capacity with the default
   batching (natural batching: ``batch.max_wait_ms = 0``), and half capacity with librdkafka's
   ``fetch.wait.max.ms = 5``. The paced producer is a process of its own (bench/e2e_paced.py; niced
   unless the scores are read back), the score reader another (bench/e2e_reader.py), on the same cores as
   the broker and the worker: the delays are defined in bench/e2e_latency.py.

Figures:
- ``e2e_worker_events_per_s``, ``e2e_per_message_events_per_s`` (medians), ``e2e_speedup_vs_per_message``;
- per paced load ``L``: ``L_events_per_s`` (the rate achieved by the paced producer over the measured window,
  at most the rate asked) and ``L_events`` (events measured);
  ``p99_in_worker_ms_at_L``: the worker's own ``rtml_in_worker_seconds`` over the window: ``consume()``
  returning the event -> its score handed to the producer (decode, graph, encode, and the wait for the
  batch), interpolated inside fine buckets; the worker's share of the latency;
  ``p50_/p99_append_to_score_ms_at_L``: broker append of the event -> its score handed to the worker's
  producer (adds the fetch hop and librdkafka's queue to the above; whole milliseconds);
  ``p50_/p99_end_to_end_ms_at_L``: the paced producer's ``produce()`` -> the score read back, in three
  parts: ``produce_to_append`` (the load generator's linger and the broker's append of the event),
  ``append_to_score`` (above) and ``score_to_read`` (the worker's producer linger, the broker's append of
  the score, the reader's fetch; whole milliseconds on the score side);
  ``p99_worker_histogram_ms_at_L``: the worker's ``rtml_end_to_end_seconds`` (broker append -> produce,
  coarse buckets), a cross-check of the append-to-score figure;
  ``L_batches_per_s``, ``L_mean_batch_size``, ``L_mean_batch_ms`` (from the worker's batch histograms) and
  ``L_worker_loop_busy`` (CPU seconds of the worker's main thread, the consumer loop, per second of the
  window: 1.0 is a whole core): where the in-worker latency comes from.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.e2e_baseline import PerMessageScorer
from bench.e2e_kafka import GroupProgress, Scratch, encode_events, end_offsets, prefill
from bench.e2e_latency import Delays, PacedProducer, quantile_from_buckets
from bench.e2e_paced import NICE
from bench.e2e_reader import ScoreReader
from bench.e2e_worker import ROOT, Samples, WorkerDied, WorkerProcess, total, worker_config
from examples.car_insurance.generate import generate
from examples.car_insurance.train import train
from worker.graph import compile_graph, load_graph
from worker.models import ModelStore

EVENTS = 200_000
PARTITIONS = 12
REPEATS = 3
BASELINE_EVENTS = 1_500
DEFAULT_MAX_WAIT_MS = 0  # the worker's default batch.max_wait_ms: natural batching
# Paced runs: (name, fraction of the measured worker rate, batch.max_wait_ms, librdkafka fetch.wait.max.ms,
# whether the scores are read back for the end-to-end figures).
# "fetch5": a short broker-side fetch wait (librdkafka's 500 ms default put the fetch hop's p99 near
# 10 ms here).
# At half capacity nothing reads the scores back: a reader would take the CPU the worker needs on two
# cores, so those figures come from the worker's own histograms.
PACED_LOADS: tuple[tuple[str, float, int, int | None, bool], ...] = (
    ("half_capacity", 0.5, DEFAULT_MAX_WAIT_MS, None, False),
    ("half_capacity_fetch5", 0.5, DEFAULT_MAX_WAIT_MS, 5, False),
    ("tenth_capacity", 0.1, DEFAULT_MAX_WAIT_MS, None, True),
)
PACED_S = 18.0
WARM_UP_S = 3.0
DRAIN_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 120.0
# The worker's own histograms read over the paced window -> the figure's name.
HISTOGRAMS = {
    "rtml_end_to_end_seconds": "worker_histogram",  # event timestamp (here: broker append) -> batch produced
    "rtml_in_worker_seconds": "in_worker",  # consume() returned -> score handed to the producer
}


class Bench:
    """What the steps share: scratch names, the trained graph, the pre-filled topic and its end offsets."""

    def __init__(self, scratch: Scratch, root: Path, *, events: int = EVENTS, fill: bool = True) -> None:
        """Train, create the topics, encode ``events`` events; ``fill``: pre-fill the input topic."""
        self.scratch, self.root = scratch, root
        self.store = root / "store"
        self.graph = train(pd.DataFrame(generate(5_000, seed=1)), root / "out", ModelStore(self.store),
                           seed=1).graphs["lr"]  # fmt: skip
        self.topics = (scratch.topic("events", PARTITIONS), scratch.topic("scores", PARTITIONS),
                       scratch.topic("dead-letter", 3))  # fmt: skip
        self.schema_id = scratch.register(self.topics[0])
        generated = generate(events, seed=11)
        self.values = encode_events(generated, self.schema_id)
        self.keys = [event["ecid"].encode() for event in generated]
        self.ends: dict[int, int] = {}
        if fill:
            prefill(scratch.bootstrap, self.topics[0], self.values, self.keys)
            self.ends = end_offsets(scratch.bootstrap, self.topics[0])
            if sum(self.ends.values()) != events:
                raise RuntimeError(f"pre-filled topic holds {sum(self.ends.values())} events, not {events}")

    def worker(
        self, what: str, topics: tuple[str, str, str], group: str, max_wait_ms: int,
        fetch_wait_ms: int | None, stand_ins: str = "",
    ) -> WorkerProcess:  # fmt: skip
        s = self.scratch
        config = worker_config(self.root / f"{what}.toml", bootstrap=s.bootstrap, registry_url=s.registry_url,
                               group=group, topics=topics, graph=self.graph, store=self.store,
                               max_wait_ms=max_wait_ms, fetch_wait_max_ms=fetch_wait_ms)  # fmt: skip
        if stand_ins:  # some stages replaced by near-free stand-ins (bench/stand_ins.py): a bound, not a mode
            args = [sys.executable, "-m", "bench.stand_ins", stand_ins, "run", "--config", str(config)]
            return WorkerProcess(args, self.root / f"{what}.log", cwd=ROOT)
        return WorkerProcess.start(config, self.root / f"{what}.log", cwd=ROOT)

    def worker_rate(self, repeat: int) -> float:
        """Events per second of one worker over the pre-filled topic (see the module docstring)."""
        group = self.scratch.group(f"worker-{repeat}")
        progress = GroupProgress(self.scratch.bootstrap, group, self.topics[0], self.ends)
        try:
            with self.worker(f"worker-{repeat}", self.topics, group, DEFAULT_MAX_WAIT_MS, None) as worker:
                first = worker.wait_for("rtml_events_in_total", 1, every_s=0.005)
                started = time.monotonic()
                while any(progress.committed().get(p, -1) < end for p, end in self.ends.items()):
                    worker.check_alive()
                    if time.monotonic() - started > RUN_TIMEOUT_S:
                        raise WorkerDied(f"not all committed after {RUN_TIMEOUT_S} s\n{worker.tail()}")
                    time.sleep(0.02)
                elapsed = time.monotonic() - started
                _check_scored(worker.scrape(), EVENTS, worker)
        finally:
            progress.close()
        return (EVENTS - first) / elapsed

    def paced(
        self, load: str, rate: float, max_wait_ms: int, fetch_wait_ms: int | None, read: bool,
        stand_ins: str = "",
    ) -> dict[str, float]:  # fmt: skip
        """Latency figures of one worker fed at ``rate`` events per second (see bench/e2e_latency.py)."""
        s = self.scratch
        source = s.topic(f"{load}-events", PARTITIONS, log_append_time=True)
        topics = (source, s.topic(f"{load}-scores", PARTITIONS), self.topics[2])
        group = s.group(load)
        with self.worker(load, topics, group, max_wait_ms, fetch_wait_ms, stand_ins) as worker:
            worker.wait_for("rtml_assigned_partitions", PARTITIONS)
            reader = ScoreReader(s.bootstrap, topics[1], PARTITIONS) if read else None
            # Not niced when each event's delay is timed from its produce() call: starved, it would skew it.
            producer = PacedProducer(
                s.bootstrap, source, self.values, rate, PACED_S, nice=0 if read else NICE
            )
            try:
                if reader is not None:
                    reader.start()
                producer.start()
                time.sleep(WARM_UP_S)
                before, cpu_before, wall_before = (
                    worker.scrape(),
                    _main_thread_cpu_s(worker.pid),
                    time.monotonic(),
                )
                producer.join()
                if reader is not None:
                    reader.finish(len(producer.sent_at), DRAIN_TIMEOUT_S)  # every score read, or the deadline
                    worker.check_alive()
                else:
                    worker.wait_for("rtml_events_out_total", len(producer.sent_at), timeout_s=DRAIN_TIMEOUT_S)
                after, cpu_after, wall_after = (
                    worker.scrape(),
                    _main_thread_cpu_s(worker.pid),
                    time.monotonic(),
                )
            except BaseException:
                if reader is not None:
                    reader.stop()
                raise
        sent = int(np.count_nonzero(np.asarray(producer.sent_at) >= producer.started_at + WARM_UP_S))
        figures: dict[str, float] = {
            f"{load}_events_per_s": round(sent / (PACED_S - WARM_UP_S)),  # achieved, not asked
            f"{load}_events": sent,
        }
        if reader is not None:
            delays = Delays.collect(
                producer, reader, s.bootstrap, source, after=producer.started_at + WARM_UP_S
            )
            parts = {
                "produce_to_append": delays.produce_to_append_ms,
                "append_to_score": delays.append_to_score_ms,
                "score_to_read": delays.score_to_read_ms,
                "end_to_end": delays.end_to_end_ms,
            }
            for part, ms in parts.items():
                p50, p99 = np.percentile(ms, [50, 99])
                figures[f"p50_{part}_ms_at_{load}"] = round(float(p50), 2)
                figures[f"p99_{part}_ms_at_{load}"] = round(float(p99), 2)
        figures |= _batching(before, after, load, wall_after - wall_before)
        if cpu_before is not None and cpu_after is not None:
            busy = (cpu_after - cpu_before) / (wall_after - wall_before)
            figures[f"{load}_worker_loop_busy"] = round(busy, 2)
        for metric, figure in HISTOGRAMS.items():
            p99 = _histogram_p99(before, after, metric)
            if p99 is not None:  # a series the worker may not export (yet)
                figures[f"p99_{figure}_ms_at_{load}"] = round(p99 * 1000, 2)
        s.drop(topics[:2])  # the next run starts on a broker without these partitions
        return figures


def run() -> dict[str, float]:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    registry_url = os.environ.get("SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081/apis/ccompat/v7")
    with tempfile.TemporaryDirectory() as tmp, Scratch(bootstrap, registry_url) as scratch:
        bench = Bench(scratch, Path(tmp))
        baseline_scores = scratch.topic("per-message-scores", PARTITIONS)
        baseline = PerMessageScorer(scratch, compile_graph(load_graph(bench.graph), ModelStore(bench.store)),
                                    (bench.topics[0], baseline_scores, bench.topics[2]),
                                    scratch.group("per-message"))  # fmt: skip
        try:
            baseline.warm_up()
            worker_rates, baseline_rates = [], []
            for repeat in range(REPEATS):
                worker_rates.append(bench.worker_rate(repeat))
                baseline_rates.append(baseline.timed(BASELINE_EVENTS))
        finally:
            baseline.close()
        scratch.drop([*bench.topics[:2], baseline_scores])  # the paced runs still use the dead-letter topic
        worker_rate = statistics.median(worker_rates)
        per_message = statistics.median(baseline_rates)
        figures: dict[str, float] = {
            "e2e_worker_events_per_s": round(worker_rate),
            "e2e_per_message_events_per_s": round(per_message),
            "e2e_speedup_vs_per_message": round(worker_rate / per_message, 1),
        }
        for load, fraction, max_wait_ms, fetch_wait_ms, read in PACED_LOADS:
            figures.update(bench.paced(load, worker_rate * fraction, max_wait_ms, fetch_wait_ms, read))
    return figures


def _check_scored(samples: Samples, events: int, worker: WorkerProcess) -> None:
    """A run counts only if every event became a score (a worker that dead-letters everything is fast too)."""
    out, dead = total(samples, "rtml_events_out_total"), total(samples, "rtml_dead_lettered_total")
    if out < events or dead:
        raise WorkerDied(f"{out:.0f} scores and {dead:.0f} dead letters for {events} events\n{worker.tail()}")


def _batching(before: Samples, after: Samples, load: str, seconds: float) -> dict[str, float]:
    """Batches per second, mean events per batch and mean milliseconds per batch over the window."""

    def delta(name: str) -> float:
        return after.get((name, ()), 0.0) - before.get((name, ()), 0.0)

    batches = delta("rtml_batch_size_count")
    if not batches:
        return {}
    return {
        f"{load}_batches_per_s": round(batches / seconds),
        f"{load}_mean_batch_size": round(delta("rtml_batch_size_sum") / batches, 1),
        f"{load}_mean_batch_ms": round(delta("rtml_batch_seconds_sum") / batches * 1000, 2),
    }


def _main_thread_cpu_s(pid: int) -> float | None:
    """CPU seconds of the worker's consumer loop (the process's main thread); None where /proc is absent."""
    try:
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _histogram_p99(before: Samples, after: Samples, metric: str) -> float | None:
    """p99 of the histogram ``metric`` over the observations between two scrapes; None if not exported."""
    buckets = sorted(
        (float(dict(labels)["le"]), after[key] - before.get(key, 0.0))
        for key in after
        for name, labels in [key]
        if name == f"{metric}_bucket"
    )
    if not buckets or not buckets[-1][1]:
        return None
    return quantile_from_buckets([b for b, _ in buckets], [c for _, c in buckets], 0.99)


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
