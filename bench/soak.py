"""Soak: one worker for ``SOAK_MINUTES`` (default 30) at half its measured capacity, checked for loss, leaks.

``make soak`` runs ``python -m bench.soak [MINUTES]`` against the local stack (``scripts/services.py run``).

1. Measure the worker's capacity once over a pre-filled topic (``bench.e2e.Bench.worker_rate``).
2. Feed a fresh 12-partition topic at half of it from the paced producer (its own process, niced) for the
   duration, with one worker (at-least-once, default settings) scoring it.
3. Every minute read the worker's resident set size (``/proc/<pid>/status`` VmRSS); every ``WINDOW_MIN``
   minutes read its ``rtml_in_worker_seconds`` histogram (``consume()`` returning an event to its score
   handed to the producer) and keep that window's p50 and p99.
4. When the producer is done, wait for the group's commits to reach the end offsets, stop the worker with
   SIGTERM, and read back both output topics (the input topic keeps 10 minutes: its end offsets are all
   the check needs): per input partition and offset, count the outputs (scores
   and dead letters, by their lineage headers) in numpy arrays, not per-event objects: lost = offsets with
   none, duplicated = offsets with more than one.

Figures go to ``bench/results/soak.json``; the run fails (exit 1) when anything was lost or the RSS grew by
5 % or more from the end of the first ``WINDOW_MIN`` minutes to the end.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, KafkaError, TopicPartition

from bench.e2e import PARTITIONS, Bench
from bench.e2e_kafka import GroupProgress, Scratch, end_offsets
from bench.e2e_latency import quantile_from_buckets
from bench.e2e_paced import PacedProducer
from bench.e2e_worker import Samples, WorkerDied, WorkerProcess

SOAK_MINUTES = 30.0
WINDOW_MIN = 5
LOAD = 0.5
RESULTS = Path(__file__).parent / "results" / "soak.json"
RSS_GROWTH_LIMIT_PCT = 5.0
DRAIN_TIMEOUT_S = 300.0
INPUT_RETENTION_MS = 10 * 60 * 1000  # 30 minutes of events at half capacity would fill the disk
READ_TIMEOUT_S = 1200.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def window_quantiles(before: Samples, after: Samples) -> tuple[float, float] | None:
    """p50 and p99 (ms) of rtml_in_worker_seconds over the observations between two scrapes."""
    buckets = sorted(
        (float(dict(labels)["le"]), after[key] - before.get(key, 0.0))
        for key in after
        for name, labels in [key]
        if name == "rtml_in_worker_seconds_bucket"
    )
    if not buckets or not buckets[-1][1]:
        return None
    bounds, counts = [b for b, _ in buckets], [c for _, c in buckets]
    return tuple(quantile_from_buckets(bounds, counts, q) * 1000 for q in (0.5, 0.99))  # type: ignore[return-value]


def count_outputs(bootstrap: str, topic: str, counts: dict[int, np.ndarray], prefix: str) -> int:
    """Add one per output of ``topic`` to ``counts[source partition][source offset]``; how many were read."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"soak-reader-{os.getpid()}-{topic}",
        "enable.auto.commit": False, "enable.partition.eof": True, "isolation.level": "read_committed",
        # librdkafka's 1 MB per partition and fetch kept this reader waiting on the broker most of the time.
        "max.partition.fetch.bytes": 8 << 20, "fetch.max.bytes": 64 << 20,
    })  # fmt: skip
    partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    ended: set[int] = set()
    read = 0
    part_key, offset_key = f"{prefix}.partition", f"{prefix}.offset"
    deadline = time.monotonic() + READ_TIMEOUT_S
    while len(ended) < len(partitions):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{topic}: not read to the end within {READ_TIMEOUT_S} s")
        parts, offsets = [], []
        for message in consumer.consume(20_000, 1.0):
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(f"reading {topic}: {error}")
                ended.add(message.partition())  # type: ignore[arg-type]
                continue
            headers = message.headers() or []
            if (
                headers[1][0] != part_key or headers[2][0] != offset_key
            ):  # a dead letter: original headers first
                found = dict(headers)
                headers = [("", b""), (part_key, found[part_key]), (offset_key, found[offset_key])]
            parts.append(int(headers[1][1]))
            offsets.append(int(headers[2][1]))
        read += len(parts)
        if parts:
            p, o = np.asarray(parts), np.asarray(offsets)
            for partition in np.unique(p).tolist():
                np.add.at(counts[partition], o[p == partition], 1)
    consumer.close()
    return read


def soak(minutes: float) -> dict[str, float]:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    registry_url = os.environ.get("SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081/apis/ccompat/v7")
    with tempfile.TemporaryDirectory() as tmp, Scratch(bootstrap, registry_url) as scratch:
        bench = Bench(scratch, Path(tmp))
        capacity = bench.worker_rate(0)
        scratch.drop(bench.topics[:2])
        rate = capacity * LOAD
        # The events are needed only until scored: the check reads their end offsets and the scores' lineage.
        topics = (scratch.topic("soak-events", PARTITIONS, retention_ms=INPUT_RETENTION_MS),
                  scratch.topic("soak-scores", PARTITIONS), bench.topics[2])  # fmt: skip
        group = scratch.group("soak")
        figures: dict[str, float] = {"soak_minutes": minutes, "soak_capacity_events_per_s": round(capacity),
                                     "soak_rate_events_per_s": round(rate)}  # fmt: skip
        with bench.worker("soak", topics, group, 0, None) as worker:
            worker.wait_for("rtml_assigned_partitions", PARTITIONS)
            producer = PacedProducer(
                bootstrap, topics[0], bench.values, rate, minutes * 60, record_times=False
            )
            producer.start()
            figures |= watch(worker, minutes)
            producer.join()
            if producer.failed:
                raise RuntimeError(f"the paced producer failed: {producer.failed[:3]}")
            figures["soak_events"] = producer.sent
            drain(bootstrap, group, topics[0], worker)
        figures |= verify(bootstrap, topics)
    return figures


def watch(worker: WorkerProcess, minutes: float) -> dict[str, float]:
    """RSS every minute and latency quantiles every window, until ``minutes`` have passed."""
    figures: dict[str, float] = {}
    started = time.monotonic()
    window_start = worker.scrape()
    rss: list[float] = []
    for minute in range(1, int(minutes) + 1):
        time.sleep(max(0.0, started + minute * 60 - time.monotonic()))
        worker.check_alive()
        rss.append(rss_mb(worker.pid))
        figures[f"soak_rss_mb_min{minute:02d}"] = round(rss[-1], 1)
        if minute % WINDOW_MIN == 0:
            now = worker.scrape()
            quantiles = window_quantiles(window_start, now)
            if quantiles is not None:
                k = minute // WINDOW_MIN
                figures[f"soak_p50_in_worker_ms_window{k}"] = round(quantiles[0], 2)
                figures[f"soak_p99_in_worker_ms_window{k}"] = round(quantiles[1], 2)
            window_start = now
    if len(rss) > WINDOW_MIN:
        figures["soak_rss_growth_after_5min_pct"] = round((rss[-1] / rss[WINDOW_MIN - 1] - 1) * 100, 2)
    return figures


def drain(bootstrap: str, group: str, topic: str, worker: WorkerProcess) -> None:
    ends = end_offsets(bootstrap, topic)
    progress = GroupProgress(bootstrap, group, topic, ends)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    try:
        while any(progress.committed().get(p, -1) < end for p, end in ends.items()):
            worker.check_alive()
            if time.monotonic() > deadline:
                raise WorkerDied(f"not all committed {DRAIN_TIMEOUT_S} s after the load\n{worker.tail()}")
            time.sleep(1.0)
    finally:
        progress.close()


def verify(bootstrap: str, topics: tuple[str, str, str]) -> dict[str, float]:
    ends = end_offsets(bootstrap, topics[0])
    counts = {p: np.zeros(end, dtype=np.uint16) for p, end in ends.items()}
    scores = count_outputs(bootstrap, topics[1], counts, "rtml.source")
    dead = count_outputs(bootstrap, topics[2], counts, "rtml.errors")
    all_counts = np.concatenate(list(counts.values()))
    return {
        "soak_inputs": int(all_counts.size),
        "soak_scores": scores,
        "soak_dead_letters": dead,
        "soak_lost": int(np.count_nonzero(all_counts == 0)),
        "soak_duplicated": int(np.count_nonzero(all_counts > 1)),
    }


def main(argv: list[str]) -> int:
    minutes = float(argv[0]) if argv else SOAK_MINUTES
    figures = soak(minutes)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    growth = figures.get("soak_rss_growth_after_5min_pct", 0.0)
    problems = []
    if figures["soak_lost"]:
        problems.append(f"{figures['soak_lost']} events lost")
    if figures["soak_inputs"] != figures.get("soak_events"):
        problems.append(f"{figures['soak_inputs']} inputs in the topic, {figures.get('soak_events')} sent")
    if growth >= RSS_GROWTH_LIMIT_PCT:
        problems.append(f"RSS grew {growth} % after the first {WINDOW_MIN} minutes")
    for problem in problems:
        print(f"soak failed: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
