"""The producing end of the loop: scores to the output topic, rejected records to the dead-letter topic.

The loop calls ``Sink.send`` once per processed batch, inside a transaction in exactly-once mode. It blocks
only while librdkafka's local queue is full (serving delivery reports until there is room). Scores carry the
lineage headers (``worker.runtime.headers``) and go to the input's partition number (mod the output's count)
by default, which keeps each input partition's order; every rejected record goes to the dead-letter topic with
its original key, value and headers plus the reason.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

from confluent_kafka import Message

from worker.errors import FatalError, RecordError, Stage
from worker.graph import CompiledGraph
from worker.runtime import headers
from worker.runtime.clients import ProducerClient
from worker.runtime.config import Settings
from worker.runtime.metrics import Metrics
from worker.runtime.pipeline import Meta, Processed
from worker.runtime.tracker import InFlight

OnDelivery = Callable[..., None]


class Sink:
    """Produces a batch's outputs with the loop's producer; owns the lineage headers of the graph in use."""

    def __init__(
        self, settings: Settings, producer: ProducerClient, metrics: Metrics, graph: CompiledGraph
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.metrics = metrics
        self._out_partitions: int | None = None
        self.use_graph(graph)

    def use_graph(self, graph: CompiledGraph) -> None:
        """Lineage headers of the graph now in use (a new deployment swaps it at a batch boundary)."""
        self._lineage = headers.lineage_constants(graph.digest, graph.model_ids)
        self._tails: dict[bytes, tuple[headers.Header, ...]] = {}

    def send(self, batch: list[Message], meta: Meta, result: Processed, in_flight: InFlight | None) -> None:
        """One produce call per output: the only per-event Python left, kept to list lookups.

        Delivery reports: one per output partition of the batch, on its last score. The idempotent
        producer delivers a partition's messages in order and, with the gapless guarantee, turns any
        failure into a fatal error, so that report stands for every score before it. Scores partitioned by
        key (partition unknown here) and dead-letter records get one report each.
        """
        # Exactly-once: commit_transaction reports any failed output; unsafe mode: nothing waits for them.
        on_delivery = in_flight.on_delivery if in_flight is not None else None
        topic = self.settings.output.topic
        by_source = self.settings.output.partitioning == "source"
        source_parts = meta.partitions[result.score_rows]
        out_parts = (source_parts % self.output_partitions()).tolist()
        reports = self._report_on(out_parts, on_delivery, by_source)
        if in_flight is not None:
            in_flight.outstanding += sum(r is not None for r in reports) + len(result.errors)
        rows = result.score_rows.tolist()
        parts = source_parts.tolist()
        offsets = meta.offsets[result.score_rows].tolist()
        keys, values, topics = meta.keys, meta.values, meta.topics
        source = {(t, p): headers.source(t, p) for t, p in meta.commit_points}
        tails = self._tails_of([values[r] for r in rows])
        # Every score's headers in one comprehension: the per-event Python here is most of the sink's cost.
        all_headers = [
            [*source[(topics[r], p)], (headers.OFFSET, b"%d" % o), *tail]
            for r, p, o, tail in zip(rows, parts, offsets, tails, strict=True)
        ]
        produce = self.producer.produce
        targets = out_parts if by_source else [-1] * len(rows)
        for value, r, hdrs, partition, report in zip(
            result.score_values, rows, all_headers, targets, reports, strict=True
        ):
            try:
                produce(topic, value, keys[r], partition=partition, headers=hdrs, on_delivery=report)
            except BufferError:  # the local queue is full: serve deliveries, then try again
                self._send(topic, value, keys[r], partition, hdrs, report)
        self._dead_letter(result.errors, batch, on_delivery)

    @staticmethod
    def _report_on(
        out_parts: list[int], on_delivery: OnDelivery | None, by_source: bool
    ) -> list[OnDelivery | None]:
        """The delivery callback of each score: on the last one per output partition, or on all."""
        if on_delivery is None or not by_source:
            return [on_delivery] * len(out_parts)
        reports: list[OnDelivery | None] = [None] * len(out_parts)
        last = {part: k for k, part in enumerate(out_parts)}  # per partition, its last index wins
        for k in last.values():
            reports[k] = on_delivery
        return reports

    def _tails_of(self, raws: list[bytes | None]) -> Iterable[tuple[headers.Header, ...]]:
        """Per score, the constant headers after the offset: graph, models and the writer schema id.

        One writer schema per batch is the common case: its tail is looked up once, not once per event.
        """
        if self.settings.input.framing != "confluent":
            return itertools.repeat(self._schema_tail(b""), len(raws))
        ids = [raw[1:5] if raw else b"" for raw in raws]
        if ids and ids.count(ids[0]) == len(ids):
            return itertools.repeat(self._schema_tail(ids[0]), len(ids))
        return [self._schema_tail(i) for i in ids]

    def _schema_tail(self, schema_id: bytes) -> tuple[headers.Header, ...]:
        """The tail for one writer schema id (the 4 framing bytes; empty without framing), cached."""
        tail = self._tails.get(schema_id)
        if tail is None:
            tail = self._tails[schema_id] = (*self._lineage, *headers.schema_id(schema_id))
        return tail

    def _dead_letter(
        self, errors: dict[int, RecordError], batch: list[Message], on_delivery: OnDelivery | None
    ) -> None:
        by_stage: dict[Stage, int] = {}
        for row, error in errors.items():
            hdrs = headers.dead_letter(error, batch[row].headers())  # type: ignore[arg-type]
            self._send(self.settings.dead_letter.topic, error.value, error.key, -1, hdrs, on_delivery)
            by_stage[error.stage] = by_stage.get(error.stage, 0) + 1
        for stage, n in by_stage.items():
            self.metrics.dead_lettered(stage, n)

    def _send(  # noqa: PLR0917 - the hot path: one call per output, no kwargs packing
        self, topic: str, value: bytes | None, key: bytes | None, partition: int,
        hdrs: list[tuple[str, bytes]], on_delivery: OnDelivery | None,
    ) -> None:  # fmt: skip
        while True:
            try:
                self.producer.produce(
                    topic,
                    value,
                    key,
                    partition=partition,
                    headers=hdrs,
                    on_delivery=on_delivery,
                )
                return
            except BufferError:  # the local queue is full: serve deliveries, then try again
                self.producer.poll(0.05)

    def output_partitions(self) -> int:
        """The output topic's partition count, read once (a missing topic stops the worker)."""
        cached = self._out_partitions
        if cached is None:
            metadata = self.producer.list_topics(self.settings.output.topic, timeout=10)
            topic = metadata.topics.get(self.settings.output.topic)
            if topic is None or topic.error is not None or not topic.partitions:
                raise FatalError(f"output topic {self.settings.output.topic!r} is not available")
            cached = self._out_partitions = len(topic.partitions)
        return cached
