"""Latency at a fixed input rate: a paced producer and a score reader around one running worker.

The input topic stamps records with the broker's append time (``message.timestamp.type=LogAppendTime``); the
worker's producer stamps each score with its own create time, the moment the loop hands the score to
librdkafka (``produce()``); broker, worker and benchmark share this machine's clock. Per event:

- in worker: score create time - input append time, matched by the score's lineage headers (source
  partition and offset). From the moment the event is readable on the broker to the moment its score is
  handed to the worker's producer: the fetch hop to the worker, the micro-batch wait, decode, graph, encode.
  Excludes the paced producer, its linger and the broker's append, and the worker's own producer linger and
  acknowledgement. Both stamps are whole milliseconds (about +-1 ms).
- end to end: score arrival at the reader (``time.time()`` when ``poll`` returned it) - the paced producer's
  ``produce()`` call, matched by the key (the send number, carried over by the worker). Includes everything
  above plus the producer's linger (``bench.e2e_paced.LINGER_MS``), both broker appends, the worker's
  producer linger (5 ms) and the reader's fetch.

While the load runs, the paced producer (a process of its own, bench/e2e_paced.py) and the reader thread do
as little as they can (no per-message callbacks, no decoding), so as not to take CPU from the worker on a
small machine; ``Delays.collect`` joins everything afterwards, reading the input topic back for the append
times. Blocking; ``RuntimeError`` when a send failed or scores are missing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from bench.e2e_paced import PacedProducer

READ_TIMEOUT_S = 30.0


def _consumer(bootstrap: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": "e2e-reader", "enable.auto.commit": False,
                     "fetch.wait.max.ms": 10})  # fmt: skip


class ScoreReader(threading.Thread):
    """Keeps every score of ``topic`` from the beginning (assigned, no group join) with its arrival time."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        super().__init__(name="score-reader", daemon=True)
        self.consumer = _consumer(bootstrap)
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self.batches: list[tuple[float, list[Message]]] = []
        self.count = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                # poll returns on the first message; a blocking consume(n, t) would hold it back up to t.
                first = self.consumer.poll(0.05)
                if first is None:
                    continue
                messages = [first, *self.consumer.consume(999, 0)]
                self.batches.append((time.time(), messages))
                self.count += len(messages)
        finally:
            self.consumer.close()


@dataclass(frozen=True)
class Delays:
    """Per-event delays in milliseconds of the events sent after the warm-up."""

    append_to_score_ms: npt.NDArray[np.float64]
    end_to_end_ms: npt.NDArray[np.float64]
    events: int

    @classmethod
    def collect(
        cls, producer: PacedProducer, reader: ScoreReader, bootstrap: str, source: str, after: float
    ) -> Delays:
        """Join the scores to their events; only events sent at or after ``after`` (wall clock) count."""
        if producer.failed:
            raise RuntimeError(f"paced producer: {len(producer.failed)} failed, e.g. {producer.failed[0]}")
        appended = _append_times(bootstrap, source)
        sent_at = np.asarray(producer.sent_at)
        append_to_score, end_to_end = [], []
        for arrived, messages in reader.batches:
            for message in messages:
                send = int(message.key())  # type: ignore[arg-type]
                if sent_at[send] < after:
                    continue
                lineage: dict[str, Any] = dict(message.headers() or ())
                source_ms = appended[int(lineage["rtml.source.partition"])][
                    int(lineage["rtml.source.offset"])
                ]
                append_to_score.append(message.timestamp()[1] - source_ms)
                end_to_end.append((arrived - sent_at[send]) * 1000)
        wanted = int(np.count_nonzero(sent_at >= after))
        if len(append_to_score) != wanted:
            raise RuntimeError(f"{len(append_to_score)} scores for {wanted} events sent after the warm-up")
        return cls(np.asarray(append_to_score, np.float64), np.asarray(end_to_end, np.float64), wanted)


def _append_times(bootstrap: str, topic: str) -> list[npt.NDArray[np.int64]]:
    """Per partition, the append time (ms) of each offset, read back from the topic."""
    consumer = _consumer(bootstrap)
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=READ_TIMEOUT_S).topics[topic].partitions)
        ends = [
            consumer.get_watermark_offsets(TopicPartition(topic, p), READ_TIMEOUT_S)[1] for p in partitions
        ]
        times = [np.zeros(end, np.int64) for end in ends]
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        left, deadline = sum(ends), time.monotonic() + READ_TIMEOUT_S
        while left > 0 and time.monotonic() < deadline:
            for message in consumer.consume(10_000, 0.5):
                if message.error() is None:
                    times[message.partition()][message.offset()] = message.timestamp()[1]  # type: ignore[index]
                    left -= 1
        if left:
            raise RuntimeError(f"{topic}: {left} events not read back within {READ_TIMEOUT_S} s")
        return times
    finally:
        consumer.close()


def quantile_from_buckets(bounds: Sequence[float], cumulative: Sequence[float], q: float) -> float:
    """Prometheus ``histogram_quantile``: linear interpolation inside the bucket holding the q-th value."""
    rank = q * cumulative[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, cumulative, strict=True):
        if count >= rank and count > below:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower
