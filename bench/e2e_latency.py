"""Latency at a fixed input rate: a paced producer and a score reader around one running worker.

The input topic stamps records with the broker's append time (``message.timestamp.type=LogAppendTime``); the
worker's producer stamps each score with its own create time, the moment the loop hands the score to
librdkafka (``produce()``); broker, worker and benchmark share this machine's clock. Per event, from the
producer's delivery report (partition, offset, append time), the score's lineage headers (source partition and
offset) and the score's arrival at the reader:

- in worker: score create time - input append time. From the moment the event is readable on the broker to
  the moment its score is handed to the producer: the fetch hop to the worker, the micro-batch wait, decode,
  graph, encode. Excludes the paced producer, its linger and the broker's append, and the worker's own
  producer linger and acknowledgement. Both stamps are whole milliseconds (about +-1 ms).
- end to end: score arrival at the reader (``time.time()`` when ``consume`` returned) - the paced producer's
  ``produce()`` call. Includes everything above plus the producer's linger (``LINGER_MS``), both broker
  appends, the worker's producer linger (5 ms) and the reader's fetch.

``PacedProducer`` and ``ScoreReader`` are threads of the benchmark process; ``Delays`` joins what they saw.
Blocking; ``RuntimeError`` when scores are missing at the end.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition

LINGER_MS = 1
TICK_S = 0.0005


class PacedProducer(threading.Thread):
    """Produces ``values`` round robin at ``rate`` events per second for ``seconds``; records every send."""

    def __init__(
        self, bootstrap: str, topic: str, values: Sequence[bytes], keys: Sequence[bytes], rate: float,
        seconds: float,
    ) -> None:  # fmt: skip
        super().__init__(name="paced-producer", daemon=True)
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                                  "linger.ms": LINGER_MS, "compression.type": "lz4"})  # fmt: skip
        self.topic, self.values, self.keys = topic, values, keys
        self.rate, self.seconds = rate, seconds
        self.sent_at: list[float] = []  # wall clock of each produce() call, by send number
        self.delivered: list[tuple[int, int, int, int]] = []  # (send number, partition, offset, append ms)
        self.failed: list[str] = []
        self.started_at = 0.0

    def run(self) -> None:
        n = len(self.values)
        sent = 0
        self.started_at = time.time()
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < self.seconds:
            for i in range(sent, int(elapsed * self.rate)):
                self.sent_at.append(time.time())
                self.producer.produce(self.topic, self.values[i % n], self.keys[i % n],
                                      on_delivery=functools.partial(self._on_delivery, i))  # fmt: skip
                sent = i + 1
            self.producer.poll(0)
            time.sleep(TICK_S)
        self.producer.flush(30)

    def _on_delivery(self, send: int, error: Any, message: Message) -> None:
        if error is not None:
            self.failed.append(str(error))
        else:
            partition, offset = message.partition(), message.offset()
            self.delivered.append((send, partition, offset, message.timestamp()[1]))  # type: ignore[arg-type]


class ScoreReader(threading.Thread):
    """Reads every score of ``topic`` from the beginning (assigned, no group join) until stopped."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        super().__init__(name="score-reader", daemon=True)
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "e2e-reader",
                                  "enable.auto.commit": False, "fetch.wait.max.ms": 10})  # fmt: skip
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self.scores: list[tuple[int, int, int, float]] = []  # (source partition, offset, create ms, arrival)
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                messages = self.consumer.consume(1000, 0.05)
                arrived = time.time()
                for message in messages:
                    if message.error() is None:
                        lineage: dict[str, Any] = dict(message.headers() or ())
                        self.scores.append((int(lineage["rtml.source.partition"]),
                                            int(lineage["rtml.source.offset"]),
                                            message.timestamp()[1], arrived))  # fmt: skip
        finally:
            self.consumer.close()


@dataclass(frozen=True)
class Delays:
    """Per-event delays in milliseconds of the events sent after the warm-up."""

    in_worker_ms: npt.NDArray[np.float64]
    end_to_end_ms: npt.NDArray[np.float64]
    sent: int

    @classmethod
    def join(cls, producer: PacedProducer, reader: ScoreReader, after: float) -> Delays:
        """Match each score to its event by (partition, offset); only events sent at or after ``after``."""
        if producer.failed:
            raise RuntimeError(f"paced producer: {len(producer.failed)} failed, e.g. {producer.failed[0]}")
        sent_at = np.asarray(producer.sent_at)
        events = {(p, o): (send, append_ms) for send, p, o, append_ms in producer.delivered}
        in_worker, end_to_end = [], []
        for partition, offset, created_ms, arrived in reader.scores:
            send, append_ms = events.pop((partition, offset), (-1, 0))
            if send >= 0 and sent_at[send] >= after:
                in_worker.append(created_ms - append_ms)
                end_to_end.append((arrived - sent_at[send]) * 1000)
        wanted = int(np.count_nonzero(sent_at >= after))
        if len(in_worker) < wanted:
            raise RuntimeError(f"only {len(in_worker)} of {wanted} events sent after warm-up got a score")
        return cls(np.asarray(in_worker, np.float64), np.asarray(end_to_end, np.float64), wanted)


def quantile_from_buckets(bounds: Sequence[float], cumulative: Sequence[float], q: float) -> float:
    """Prometheus ``histogram_quantile``: linear interpolation inside the bucket holding the q-th value."""
    total = cumulative[-1]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, cumulative, strict=True):
        if count >= rank and count > below:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower
