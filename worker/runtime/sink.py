"""The producing end of the loop: scores to the output topic, rejected records to the dead-letter topic.

The loop calls ``Sink.send`` once per processed batch (inside a transaction in exactly-once mode). It never
blocks: when librdkafka's local queue is full, ``send`` returns a ``Backlog`` of what is left, and the loop,
which keeps turning (polling, beating, partitions paused), hands it back to ``resume`` until it is gone.

Every output carries the batch's delivery callback (``InFlight.on_delivery``), so every output's fate counts.
Scores carry the lineage headers (``worker.runtime.headers``) and go to the input's partition number (mod the
output's count) by default, which keeps each input partition's order; every rejected record goes to the
dead-letter topic with its original key, value and headers plus the reason.

An output ``produce`` refuses at once as too large (``message.max.bytes``) is a record fault, handled here:
a score becomes a dead letter (stage ``produce``) and a dead letter too large is truncated (header
``rtml.errors.value.truncated`` = the original length; topic, partition and offset still name the original).
Any other refusal is recorded as a failure of the batch (the loop rewinds) and ends the send.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Message

from worker.errors import FatalError, RecordError, Stage
from worker.graph import CompiledGraph
from worker.runtime import headers
from worker.runtime.clients import ProducerClient
from worker.runtime.config import Settings
from worker.runtime.metrics import Metrics
from worker.runtime.pipeline import Meta, Processed
from worker.runtime.tracker import Failure, InFlight

ENVELOPE_MARGIN = 512  # bytes left for the record's framing when a dead letter is cut to fit


@dataclass
class Outputs:
    """One batch's outputs in produce order (scores, then dead letters), as parallel lists.

    ``rows[i]`` is the row of ``batch`` output ``i`` answers; ``dead[i]`` its RecordError when it is a dead
    letter.
    """

    batch: list[Message]
    topics: list[str]
    values: list[bytes | None]
    keys: list[bytes | None]
    partitions: list[int]
    headers: list[list[tuple[str, bytes]]]
    rows: list[int]
    dead: list[RecordError | None]

    def __len__(self) -> int:
        return len(self.topics)

    def find(self, failure: Failure, exclude: set[int]) -> int | None:
        """The output a delivery report's failure is about (same topic, key and value), not in ``exclude``:
        reports come in produce order per partition, so equal outputs are matched in order."""
        wanted = (failure.topic, failure.key, failure.value)
        for i in range(len(self.topics)):
            if i not in exclude and (self.topics[i], self.keys[i], self.values[i]) == wanted:
                return i
        return None


@dataclass
class Backlog:
    """What ``send`` could not hand to librdkafka yet: outputs ``next`` and on."""

    outputs: Outputs
    next: int
    in_flight: InFlight | None


class Sink:
    """Produces a batch's outputs with the loop's producer; owns the lineage headers of the graph in use."""

    def __init__(
        self,
        settings: Settings,
        producer: ProducerClient,
        metrics: Metrics,
        graph: CompiledGraph,
        deployment: str | None = None,
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.metrics = metrics
        self.max_bytes = int(settings.producer_config().get("message.max.bytes", 1_000_000))
        self._out_partitions: int | None = None
        self.use_graph(graph, deployment)

    def use_graph(self, graph: CompiledGraph, deployment: str | None = None) -> None:
        """Lineage headers of the graph now in use (a new deployment swaps it at a batch boundary)."""
        self._lineage = headers.lineage_constants(graph.digest, graph.model_ids, deployment)
        self._tails: dict[bytes, tuple[headers.Header, ...]] = {}

    def send(
        self, batch: list[Message], meta: Meta, result: Processed, in_flight: InFlight | None
    ) -> Backlog | None:
        """Produce every output of the batch; what is left when the local queue is full (else None)."""
        return self.resume(Backlog(self.outputs(batch, meta, result), 0, in_flight))

    def outputs(self, batch: list[Message], meta: Meta, result: Processed) -> Outputs:
        """The batch's outputs: built per batch, the per-event Python kept to list comprehensions."""
        by_source = self.settings.output.partitioning == "source"
        source_parts = meta.partitions[result.score_rows]
        out_parts = (source_parts % self.output_partitions()).tolist() if by_source else None
        rows = result.score_rows.tolist()
        offsets = meta.offsets[result.score_rows].tolist()
        keys, topics = meta.keys, meta.topics
        source = {(t, p): headers.source(t, p) for t, p in meta.commit_points}
        tails = self._tails_of([meta.values[r] for r in rows])
        # Every score's headers in one comprehension: the per-event Python here is most of the sink's cost.
        score_headers = [
            [*source[(topics[r], p)], (headers.OFFSET, b"%d" % o), *tail]
            for r, p, o, tail in zip(rows, source_parts.tolist(), offsets, tails, strict=True)
        ]
        n, dead_rows = len(rows), list(result.errors)
        outputs = Outputs(
            batch=batch,
            topics=[self.settings.output.topic] * n,
            values=list(result.score_values),
            keys=[keys[r] for r in rows],
            partitions=out_parts if out_parts is not None else [-1] * n,
            headers=score_headers,
            rows=rows,
            dead=[None] * n,
        )
        for row in dead_rows:
            error = result.errors[row]
            outputs.topics.append(self.settings.dead_letter.topic)
            outputs.values.append(error.value)
            outputs.keys.append(error.key)
            outputs.partitions.append(-1)
            outputs.headers.append(headers.dead_letter(error, batch[row].headers()))  # type: ignore[arg-type]
            outputs.rows.append(row)
            outputs.dead.append(error)
        return outputs

    def resume(self, backlog: Backlog) -> Backlog | None:
        """Hand outputs ``backlog.next`` and on to librdkafka; the rest when its queue is full, else None."""
        out, in_flight = backlog.outputs, backlog.in_flight
        report = in_flight.on_delivery if in_flight is not None else None
        produce = self.producer.produce
        i, n = backlog.next, len(out)
        try:
            while i < n:
                try:
                    for i in range(i, n):  # noqa: B020 - the index of a refused output is needed below
                        produce(out.topics[i], out.values[i], out.keys[i], partition=out.partitions[i],
                                headers=out.headers[i], on_delivery=report)  # fmt: skip
                    i = n
                except KafkaException as exc:  # output i was not queued: replace it and try it again
                    if not self._replace_refused(out, i, exc.args[0], in_flight):
                        n = i  # recorded as the batch's failure: nothing after it goes, the loop rewinds
        except BufferError:
            return Backlog(out, i, in_flight)
        finally:
            if in_flight is not None:
                in_flight.outstanding += i - backlog.next
            self._count(out, backlog.next, i)
        return None

    def _replace_refused(self, out: Outputs, i: int, error: KafkaError, in_flight: InFlight | None) -> bool:
        """``produce`` refused output ``i``: True when it was replaced by what may go instead (too large: a
        score by its dead letter, a dead letter by its truncated envelope), else the refusal is recorded."""
        if error.fatal():
            raise FatalError(f"producer: {error}")
        if error.code() == KafkaError.MSG_SIZE_TOO_LARGE and not truncated(out, i):
            size = len(out.values[i] or b"")
            reason = f"the producer refused it as too large ({size} bytes): {error.str()}"
            if out.dead[i] is None:
                self.dead_letter_of(out, i, f"score: {reason}")
            else:
                self.truncate(out, i)
            return True
        if in_flight is None:
            raise KafkaException(error)  # exactly-once: the transaction aborts
        in_flight.refused(Failure(error, out.topics[i], out.keys[i], out.values[i]))
        return False

    def truncate(self, out: Outputs, i: int, *, limit: int | None = None) -> None:
        """Cut dead letter ``i``'s value to fit ``limit`` bytes (default: the producer's
        ``message.max.bytes``), with a header giving the original length; topic, partition and offset still
        name the original."""
        error = out.dead[i]
        value = (error.value if error is not None else out.values[i]) or b""
        overhead = len(out.keys[i] or b"") + sum(len(k) + len(v) for k, v in out.headers[i]) + ENVELOPE_MARGIN
        keep = max(0, (self.max_bytes if limit is None else limit) - overhead)
        out.values[i] = value[:keep]
        out.headers[i] = [*out.headers[i], (headers.TRUNCATED, b"%d" % len(value))]

    def dead_letter_of(self, out: Outputs, i: int, reason: str) -> None:
        """Turn score ``i`` into its input's dead letter (stage ``produce``), in place."""
        message = out.batch[out.rows[i]]
        error = RecordError(reason, stage="produce", topic=message.topic(), partition=message.partition(),
                            offset=message.offset(), key=message.key(), value=message.value())  # fmt: skip
        out.topics[i] = self.settings.dead_letter.topic
        out.values[i], out.keys[i], out.partitions[i] = error.value, error.key, -1
        out.headers[i] = headers.dead_letter(error, message.headers())  # type: ignore[arg-type]
        out.dead[i] = error

    def _count(self, out: Outputs, start: int, end: int) -> None:
        by_stage: dict[Stage, int] = {}
        for error in itertools.islice(out.dead, start, end):
            if error is not None:
                by_stage[error.stage] = by_stage.get(error.stage, 0) + 1
        for stage, n in by_stage.items():
            self.metrics.dead_lettered(stage, n)

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

    def forget_output_partitions(self) -> None:
        """Read the output topic's partition count again at the next batch (it may have been re-created)."""
        self._out_partitions = None


def truncated(out: Outputs, i: int) -> bool:
    return any(name == headers.TRUNCATED for name, _ in out.headers[i])
