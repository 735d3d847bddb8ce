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

While the load runs, the paced producer (bench/e2e_paced.py) and the score reader (bench/e2e_reader.py),
each a process of its own, do as little as they can (no per-message callbacks, no decoding), so as not to
take CPU from the worker on a small machine; ``Delays.collect`` joins everything afterwards, reading the
input topic back for the append times. Blocking; ``RuntimeError`` when a send failed or scores are missing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from bench.e2e_paced import PacedProducer
from bench.e2e_reader import ScoreReader, reader_consumer

READ_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Delays:
    """Per-event delays in milliseconds of the events sent after the warm-up."""

    produce_to_append_ms: npt.NDArray[np.float64]  # the load generator and the broker's append
    append_to_score_ms: npt.NDArray[np.float64]  # the worker, from the fetch hop to produce()
    score_to_read_ms: npt.NDArray[np.float64]  # the worker's producer, the broker and the reader
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
        scores = reader.scores
        send = scores[:, 0].astype(np.int64)
        kept = sent_at[send] >= after
        send, scores = send[kept], scores[kept]
        source_ms = np.array([appended[int(p)][int(o)] for p, o in scores[:, 1:3].tolist()], dtype=np.float64)
        scored_ms, arrived_ms = scores[:, 3], scores[:, 4] * 1000
        wanted = int(np.count_nonzero(sent_at >= after))
        if len(send) != wanted:
            raise RuntimeError(f"{len(send)} scores for {wanted} events sent after the warm-up")
        return cls(source_ms - sent_at[send] * 1000, scored_ms - source_ms, arrived_ms - scored_ms,
                   arrived_ms - sent_at[send] * 1000, wanted)  # fmt: skip


def _append_times(bootstrap: str, topic: str) -> list[npt.NDArray[np.int64]]:
    """Per partition, the append time (ms) of each offset, read back from the topic."""
    consumer = reader_consumer(bootstrap)
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
