"""One batch of consumed messages through decode -> graph -> encode, with every row accounted for.

The loop calls ``Pipeline.process`` once per micro-batch; it is CPU-bound and blocks only when the decoder
fetches an unseen writer schema from the registry (``RegistryUnavailable`` then propagates: the batch must be
retried, never dead-lettered). Each input row comes out either as an encoded score or as a ``RecordError``
carrying its topic, partition, offset, key and value bytes, ready for the dead-letter topic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt
from confluent_kafka import Message

from worker.avro.decoder import BatchDecoder
from worker.avro.encoder import ScoreEncoder
from worker.errors import RecordError
from worker.graph import CompiledGraph
from worker.runtime.contract import check_inputs, check_outputs

Rows = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Meta:
    """What the loop and the stages need of one batch's messages, read from them once (per batch)."""

    topics: list[str]
    partitions: Rows
    offsets: Rows
    keys: list[bytes | None]
    values: list[bytes | None]
    timestamps_ms: npt.NDArray[np.float64]  # NaN where the message has none
    groups: list[tuple[str, Rows]]  # row indices per topic, in consume order

    @classmethod
    def of(cls, messages: Sequence[Message]) -> Meta:
        n = len(messages)
        # One pass for the numbers, built into an array in C: cheaper than three generator passes.
        numbers = np.array([(m.partition(), m.offset(), m.timestamp()[1]) for m in messages], dtype=np.int64)
        numbers = numbers.reshape(n, 3)
        stamps = numbers[:, 2].astype(np.float64)
        stamps[stamps <= 0] = np.nan  # -1: the message has no timestamp
        topics: list[str] = [m.topic() for m in messages]  # type: ignore[misc]  # consumed: never None
        return cls(
            topics=topics,
            partitions=numbers[:, 0].copy(),
            offsets=numbers[:, 1].copy(),
            keys=[m.key() for m in messages],
            values=[m.value() for m in messages],
            timestamps_ms=stamps,
            groups=by_topic(topics),
        )

    @cached_property
    def commit_points(self) -> dict[tuple[str, int], int]:
        """Per partition, the offset after the batch's last message of it: the batch's commit point.

        Computed once per batch (the sink and the commit tracker both need it), by one sort per topic.
        """
        return {tp: last + 1 for tp, (_, last) in self._spans.items()}

    @cached_property
    def first_offsets(self) -> dict[tuple[str, int], int]:
        """Per partition, the batch's first offset of it: where consuming starts again if it is rewound."""
        return {tp: first for tp, (first, _) in self._spans.items()}

    @cached_property
    def _spans(self) -> dict[tuple[str, int], tuple[int, int]]:
        """Per partition, the first and last offset of the batch, by one sort per topic."""
        spans: dict[tuple[str, int], tuple[int, int]] = {}
        for topic, at in self.groups:
            parts, offs = self.partitions[at], self.offsets[at]
            order = np.lexsort((offs, parts))  # by partition, then offset
            parts, offs = parts[order], offs[order]
            edge = parts[1:] != parts[:-1]
            first, last = np.insert(edge, 0, True), np.append(edge, True)
            ends = zip(parts[last].tolist(), offs[first].tolist(), offs[last].tolist(), strict=True)
            spans.update(((topic, p), (lo, hi)) for p, lo, hi in ends)
        return spans


@dataclass(frozen=True)
class Processed:
    """The outcome of one batch: ``score_values[k]`` is the score of message ``score_rows[k]``."""

    score_rows: Rows  # in consume order within each input topic (so within each partition)
    score_values: list[bytes]
    errors: dict[int, RecordError]


class Pipeline:
    """The stages for one graph. Immutable once built: the loop swaps whole pipelines at batch boundaries."""

    def __init__(
        self,
        decoder: BatchDecoder,
        graph: CompiledGraph,
        encoder: ScoreEncoder,
        deployment: str | None = None,
    ) -> None:
        check_inputs(decoder.leaves, graph.inputs)
        check_outputs(encoder.schema, graph.outputs)
        self.decoder = decoder
        self.framed = decoder.framing == "confluent"
        self.graph = graph
        self.encoder = encoder
        self.deployment = deployment  # "<name>@<version>" when the graph is a deployment's version

    def process(self, meta: Meta, on_node: Callable[[str, float], None] | None = None) -> Processed:
        """Score one batch (no message carries an error); never raises for a bad row."""
        rows: list[Rows] = []
        scores: list[bytes] = []
        errors: dict[int, RecordError] = {}
        for topic, at in meta.groups:
            values = meta.values if len(at) == len(meta.values) else [meta.values[i] for i in at.tolist()]
            got = self._process_topic(topic, values, meta.partitions[at], meta.offsets[at], on_node)
            rows.append(at[got.score_rows])
            scores.extend(got.score_values)
            errors.update((int(at[i]), e) for i, e in got.errors.items())
        for i, error in errors.items():  # provenance for the dead-letter envelope; bad rows are few
            error.topic, error.partition, error.offset = (
                meta.topics[i],
                int(meta.partitions[i]),
                int(meta.offsets[i]),
            )
            error.key, error.value = meta.keys[i], meta.values[i]
            if error.schema_id is None and self.framed:  # a graph or encode error: the writer id is known
                error.schema_id = _schema_id(meta.values[i])
        score_rows = rows[0] if len(rows) == 1 else np.concatenate(rows) if rows else np.empty(0, np.int64)
        return Processed(score_rows, scores, errors)

    def _process_topic(
        self,
        topic: str,
        values: list[bytes | None],
        partitions: Rows,
        offsets: Rows,
        on_node: Callable[[str, float], None] | None,
    ) -> Processed:
        decoded = self.decoder.decode(
            values, topic=topic, partitions=partitions.tolist(), offsets=offsets.tolist()
        )
        scored = self.graph.run(decoded.columns, on_node=on_node)
        errors: dict[int, RecordError] = dict(decoded.errors)
        errors.update((int(decoded.rows[i]), e) for i, e in scored.errors.items())
        encoded = self.encoder.encode(scored.columns)
        errors.update((int(decoded.rows[scored.rows[i]]), e) for i, e in encoded.errors.items())
        return Processed(decoded.rows[scored.rows[encoded.rows]], encoded.values, errors)


def _schema_id(value: bytes | None) -> int | None:
    """The writer schema id of a Confluent-framed value, when it has the framing."""
    if value is None or len(value) < 5 or value[0] != 0:
        return None
    return int.from_bytes(value[1:5], "big")


def by_topic(topics: list[str]) -> list[tuple[str, Rows]]:
    """Row indices per topic, in consume order; one group (no copy work) in the common one-topic case."""
    first = topics[0] if topics else ""
    if topics.count(first) == len(topics):
        return [(first, np.arange(len(topics), dtype=np.int64))] if topics else []
    names = np.array(topics, dtype=object)
    return [(t, np.flatnonzero(names == t).astype(np.int64)) for t in dict.fromkeys(topics)]
