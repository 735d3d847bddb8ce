"""The per-message baseline: what a naive consumer built from the same libraries does, one event at a time.

For each message: consume one (``Consumer.poll``), decode one (fastavro ``schemaless_reader`` with the writer
schema fetched once per schema id from the registry), score one row (the same compiled graph, on a one-row
batch from ``worker.scoring.records_to_batch``), encode one (fastavro ``schemaless_writer``, Confluent
framing with the score schema's registered id), produce one (confluent-kafka, the worker's producer settings:
idempotent, acks=all, linger 5 ms, lz4) and serve delivery callbacks with ``poll(0)``. Every
``COMMIT_EVERY`` messages it flushes the producer and commits synchronously, so it keeps the worker's
at-least-once guarantee.

``PerMessageScorer.timed(n)`` times ``n`` events (a multiple of ``COMMIT_EVERY``, so the chunk holds its own
flushes and commits); called once per repeat, between the worker's runs, after an untimed ``warm_up``. Its
consumer prefetches at most ``PREFETCH_KB``, so that it does not load the broker while the worker is measured.
Blocking; raises ``KafkaException`` on a failed delivery or a stalled topic.
"""

from __future__ import annotations

import io
import struct
import time
from typing import Any

import fastavro
import numpy as np
from confluent_kafka import Consumer, KafkaException, Message, Producer

from bench.e2e_kafka import SCORE_SCHEMA, Scratch
from worker.columns import Batch
from worker.graph import CompiledGraph
from worker.scoring.records import records_to_batch

COMMIT_EVERY = 500
POLL_TIMEOUT_S = 10.0
PREFETCH_KB = 1024


class PerMessageScorer:
    """Consume -> decode -> score -> encode -> produce, one message per call of ``step``."""

    def __init__(
        self, scratch: Scratch, graph: CompiledGraph, topics: tuple[str, str, str], group: str
    ) -> None:
        source, self.output, self.dead_letter = topics
        self.scratch = scratch
        self.graph = graph
        bootstrap = scratch.bootstrap
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                                  "isolation.level": "read_committed",
                                  "queued.max.messages.kbytes": PREFETCH_KB})  # fmt: skip
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                                  "linger.ms": 5, "compression.type": "lz4"})  # fmt: skip
        self.consumer.subscribe([source])
        score_id = scratch.register(self.output, SCORE_SCHEMA)
        self.score_schema = scratch.writer_schema(score_id)
        self.score_header = b"\x00" + struct.pack(">I", score_id)
        self.writers: dict[int, Any] = {}
        self.failed: list[str] = []

    def close(self) -> None:
        self.consumer.close()
        self.producer.flush(30)

    def next_message(self) -> Message:
        message = self.consumer.poll(POLL_TIMEOUT_S)
        if message is None:
            raise KafkaException(f"no message within {POLL_TIMEOUT_S} s")
        if message.error() is not None:
            raise KafkaException(message.error())
        return message

    def step(self, message: Message) -> None:
        value: bytes = message.value()  # type: ignore[assignment]
        schema_id = int.from_bytes(value[1:5], "big")
        writer = self.writers.get(schema_id)
        if writer is None:
            writer = self.writers[schema_id] = self.scratch.writer_schema(schema_id)
        record: dict[str, Any] = fastavro.schemaless_reader(io.BytesIO(value[5:]), writer, None)  # type: ignore[assignment]
        batch = records_to_batch([record], self.graph.inputs)
        scored = self.graph.run(batch.columns) if not batch.errors else None
        if scored is None or scored.errors:
            self.producer.produce(self.dead_letter, value, message.key(), on_delivery=self._on_delivery)
        else:
            buffer = io.BytesIO()
            buffer.write(self.score_header)
            fastavro.schemaless_writer(buffer, self.score_schema, _row(scored.columns))
            self.producer.produce(
                self.output, buffer.getvalue(), message.key(), on_delivery=self._on_delivery
            )
        self.producer.poll(0)

    def commit(self) -> None:
        """Flush every output, then commit what was consumed (at-least-once)."""
        if self.producer.flush(30) or self.failed:
            raise KafkaException(f"per-message outputs not delivered: {self.failed[:3] or 'flush timed out'}")
        self.consumer.commit(asynchronous=False)

    def warm_up(self) -> None:
        """One untimed event: group join, writer schema fetch, first ONNX run."""
        self.step(self.next_message())
        self.commit()

    def timed(self, events: int) -> float:
        """Events per second over ``events`` messages, their flushes and commits included."""
        if events % COMMIT_EVERY:
            raise ValueError(f"events must be a multiple of {COMMIT_EVERY}")
        started = time.perf_counter()
        for done in range(1, events + 1):
            self.step(self.next_message())
            if done % COMMIT_EVERY == 0:
                self.commit()
        return events / (time.perf_counter() - started)

    def _on_delivery(self, error: Any, _message: Any) -> None:
        if error is not None:
            self.failed.append(str(error))


def _row(columns: Batch) -> dict[str, Any]:
    """Row 0 of a one-row batch as Python values fastavro takes (timestamps as epoch milliseconds)."""
    row: dict[str, Any] = {}
    for name, column in columns.items():
        if column.dtype.kind == "M":
            row[name] = int(column[:1].astype("datetime64[ms]").astype(np.int64)[0])
        else:
            row[name] = column[0].item() if isinstance(column[0], np.generic) else column[0]
    return row
