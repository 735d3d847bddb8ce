"""The one verifier of the streaming tests: was every input event answered exactly once, right, in order?

``verify(sources, scores, dead_letters, ...)`` is pure: it takes what was produced (per input partition, per
offset: the key, the value bytes, and the offline-expected score or ``None`` when the event must be
dead-lettered) and what the worker wrote (``Output`` records, in the order each output partition holds them),
and counts per input partition:

* lost: input offsets with neither a score nor a dead-letter record;
* duplicated: input offsets with more than one output (score or dead-letter);
* wrong: input offsets with an output that is not what the offline scorer gives for that event (a field off
  by more than the tolerance, a different key, a missing lineage header, a score for an event that must be
  dead-lettered or the reverse, a dead-letter record that does not carry the original bytes, unless it says
  it was truncated, with the original's length, and keeps its start);
* out of order: in each output partition, after keeping the first score of each source offset, the places
  where a source partition's offsets go down;
* misrouted: scores not in output partition ``source partition % output partitions``.

Outputs whose lineage names no produced record are counted as ``unknown``. ``read_outputs`` reads a topic
with a fresh ``read_committed`` consumer from the beginning to the high watermarks (blocking, with a timeout
that fails loudly); ``ScoreDecoder`` decodes Confluent-framed Avro scores with the writer schema from the
registry. Called by the runtime tests and the verifier's own tests; never used by the worker.
"""

from __future__ import annotations

import io
import json
import math
import struct
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import fastavro
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient

SCORE_HEADERS = (
    "rtml.source.topic",
    "rtml.source.partition",
    "rtml.source.offset",
    "rtml.graph.digest",
    "rtml.model.ids",
    "rtml.schema.id",
)
DEAD_LETTER_HEADERS = (
    "rtml.errors.topic",
    "rtml.errors.partition",
    "rtml.errors.offset",
    "rtml.errors.stage",
    "rtml.errors.exception.class.name",
    "rtml.errors.exception.message",
)
MAX_SAMPLES = 20

Kind = Literal["score", "dead_letter"]


@dataclass(frozen=True, slots=True)
class Source:
    """One produced input record; ``expected``: its offline score (Avro field values), None: dead-letter."""

    key: bytes | None
    value: bytes
    expected: Mapping[str, Any] | None
    poison: str | None = None


Sources = Mapping[int, Mapping[int, Source]]  # input partition -> offset -> what was produced there


@dataclass(frozen=True, slots=True)
class Output:
    """One record the worker wrote. ``fields`` is the decoded score (None for dead-letters or undecodable)."""

    kind: Kind
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Mapping[str, bytes]
    fields: Mapping[str, Any] | None = None

    def source(self) -> tuple[str, int, int] | None:
        """(topic, partition, offset) of the input record, from the lineage headers; None when unreadable."""
        prefix = "rtml.source." if self.kind == "score" else "rtml.errors."
        try:
            return (
                self.headers[prefix + "topic"].decode(),
                int(self.headers[prefix + "partition"]),
                int(self.headers[prefix + "offset"]),
            )
        except (KeyError, ValueError, UnicodeDecodeError):
            return None

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode(errors="replace")


@dataclass(frozen=True)
class PartitionFigures:
    """The counts of one input partition (``scored``/``dead_lettered`` count records, duplicates included)."""

    partition: int
    inputs: int = 0
    scored: int = 0
    dead_lettered: int = 0
    lost: int = 0
    duplicated: int = 0
    wrong: int = 0
    out_of_order: int = 0
    misrouted: int = 0


@dataclass(frozen=True)
class Report:
    """What ``verify`` found: per-partition figures, outputs naming no input, and the first problems."""

    partitions: tuple[PartitionFigures, ...]
    unknown: int = 0
    samples: tuple[str, ...] = ()

    def total(self, name: str) -> int:
        return sum(int(getattr(p, name)) for p in self.partitions)

    @property
    def lost(self) -> int:
        return self.total("lost")

    @property
    def duplicated(self) -> int:
        return self.total("duplicated")

    @property
    def wrong(self) -> int:
        return self.total("wrong")

    @property
    def out_of_order(self) -> int:
        return self.total("out_of_order")

    @property
    def misrouted(self) -> int:
        return self.total("misrouted")

    @property
    def clean(self) -> bool:
        """No loss, no duplicate, nothing wrong, misrouted, out of order or unknown."""
        counts = ("lost", "duplicated", "wrong", "out_of_order", "misrouted")
        return self.unknown == 0 and all(self.total(name) == 0 for name in counts)

    def render(self) -> str:
        """A table, one line per input partition and a total line, then the sample problems."""
        names = [f.name for f in fields(PartitionFigures)]
        rows = [[str(getattr(p, name)) for name in names] for p in self.partitions]
        rows.append(["total", *(str(self.total(name)) for name in names[1:])])
        widths = [max(len(name), *(len(row[i]) for row in rows)) for i, name in enumerate(names)]
        lines = ["  ".join(name.rjust(w) for name, w in zip(names, widths, strict=True))]
        lines += ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
        lines.append(f"unknown outputs: {self.unknown}")
        lines += [f"  {sample}" for sample in self.samples]
        return "\n".join(lines)


@dataclass
class _Tally:
    outputs: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    wrong: set[int] = field(default_factory=set)
    scored: int = 0
    dead_lettered: int = 0
    out_of_order: int = 0
    misrouted: int = 0


def verify(
    sources: Sources,
    scores: Iterable[Output],
    dead_letters: Iterable[Output],
    *,
    input_topic: str,
    score_partitions: int,
    tolerance: float = 1e-6,
    graph_digest: str | None = None,
) -> Report:
    """Count loss, duplicates, wrong outputs, reordering and misrouting (see the module docstring)."""
    tallies = {p: _Tally() for p in sources}
    samples: list[str] = []
    unknown = 0
    last: dict[tuple[int, int], int] = {}  # (output partition, source partition) -> last first-seen offset
    for out in [*scores, *dead_letters]:
        where = _locate(out, sources, input_topic)
        if where is None:
            unknown += 1
            _note(
                samples, f"{out.kind} at {out.partition}:{out.offset} names no produced input: {out.source()}"
            )
            continue
        partition, offset = where
        tally = tallies[partition]
        tally.outputs[offset] += 1
        first = tally.outputs[offset] == 1
        problem = _judge(out, sources[partition][offset], tolerance, graph_digest)
        if problem:
            tally.wrong.add(offset)
            _note(samples, f"wrong {out.kind} for {partition}:{offset}: {problem}")
        if out.kind == "dead_letter":
            tally.dead_lettered += 1
            continue
        tally.scored += 1
        if out.partition != partition % score_partitions:
            tally.misrouted += 1
            _note(samples, f"score for {partition}:{offset} in output partition {out.partition}")
        if first:
            previous = last.get((out.partition, partition), -1)
            if offset < previous:
                tally.out_of_order += 1
                _note(samples, f"score for {partition}:{offset} after {partition}:{previous}")
            last[(out.partition, partition)] = offset
    figures = tuple(_figures(p, sources[p], tallies[p], samples) for p in sorted(sources))
    return Report(figures, unknown, tuple(samples))


def _locate(out: Output, sources: Sources, input_topic: str) -> tuple[int, int] | None:
    source = out.source()
    if source is None or source[0] != input_topic:
        return None
    _, partition, offset = source
    if offset not in sources.get(partition, {}):
        return None
    return partition, offset


def _figures(
    partition: int, produced: Mapping[int, Source], tally: _Tally, samples: list[str]
) -> PartitionFigures:
    lost = [offset for offset in produced if offset not in tally.outputs]
    for offset in lost[:3]:
        _note(samples, f"lost {partition}:{offset}")
    duplicated = [offset for offset, count in tally.outputs.items() if count > 1]
    for offset in duplicated[:3]:
        _note(samples, f"{tally.outputs[offset]} outputs for {partition}:{offset}")
    return PartitionFigures(
        partition=partition,
        inputs=len(produced),
        scored=tally.scored,
        dead_lettered=tally.dead_lettered,
        lost=len(lost),
        duplicated=len(duplicated),
        wrong=len(tally.wrong),
        out_of_order=tally.out_of_order,
        misrouted=tally.misrouted,
    )


def _judge(out: Output, source: Source, tolerance: float, graph_digest: str | None) -> str | None:
    """Why ``out`` is not the right answer to ``source``, or None when it is."""
    if out.key != source.key:
        return f"key {out.key!r} instead of {source.key!r}"
    if out.kind == "dead_letter":
        if source.expected is not None:
            return f"dead-lettered a scorable event ({out.header('rtml.errors.exception.message')})"
        if out.value != source.value and not _truthfully_truncated(out, source):
            return "the dead-letter record does not carry the original value"
        missing = [name for name in DEAD_LETTER_HEADERS if name not in out.headers]
        return f"missing headers {missing}" if missing else None
    if source.expected is None:
        return f"scored an event that must be dead-lettered (poison {source.poison})"
    missing = [name for name in SCORE_HEADERS if name not in out.headers]
    if missing:
        return f"missing headers {missing}"
    if graph_digest is not None and out.header("rtml.graph.digest") != graph_digest:
        return f"graph digest {out.header('rtml.graph.digest')} instead of {graph_digest}"
    if out.fields is None:
        return "the score could not be decoded"
    return _compare(out.fields, source.expected, tolerance)


def _truthfully_truncated(out: Output, source: Source) -> bool:
    """A dead letter too large for its topic may keep only the start of the value, and must say so with the
    original's length (``rtml.errors.value.truncated``)."""
    length = out.header("rtml.errors.value.truncated")
    return (
        length is not None
        and length.isdigit()
        and int(length) == len(source.value)
        and source.value.startswith(out.value or b"")
    )


def _compare(got: Mapping[str, Any], expected: Mapping[str, Any], tolerance: float) -> str | None:
    for name, want in expected.items():
        have = got.get(name)
        if isinstance(want, float) and isinstance(have, float):
            if not (abs(have - want) <= tolerance or (math.isnan(have) and math.isnan(want))):
                return f"{name} = {have!r}, expected {want!r}"
        elif have != want:
            return f"{name} = {have!r}, expected {want!r}"
    return None


def _note(samples: list[str], text: str) -> None:
    if len(samples) < MAX_SAMPLES:
        samples.append(text)


class ScoreDecoder:
    """Decodes Confluent-framed Avro scores, fetching each writer schema once from the registry.

    Logical types are dropped from the writer schema, so timestamps come back as epoch numbers, the form the
    expected scores take. Returns None for a payload that is not framed or does not decode. Blocks on the
    registry for the first record of each schema id.
    """

    def __init__(self, registry_url: str) -> None:
        self._client = SchemaRegistryClient({"url": registry_url})
        self._schemas: dict[int, Any] = {}

    def __call__(self, value: bytes | None) -> dict[str, Any] | None:
        if value is None or len(value) <= 5 or value[0] != 0:
            return None
        schema_id = struct.unpack(">I", value[1:5])[0]
        if schema_id not in self._schemas:
            text = self._client.get_schema(schema_id).schema_str
            self._schemas[schema_id] = fastavro.parse_schema(_without_logical_types(json.loads(text)))
        try:
            record = fastavro.schemaless_reader(io.BytesIO(value[5:]), self._schemas[schema_id], None)
        except (ValueError, EOFError, IndexError):
            return None
        return record if isinstance(record, dict) else None

    def close(self) -> None:
        self._client.close()


def _without_logical_types(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_without_logical_types(item) for item in schema]
    return schema


def read_outputs(
    bootstrap_servers: str,
    topic: str,
    kind: Kind,
    *,
    decode: Callable[[bytes | None], Mapping[str, Any] | None] | None = None,
    timeout_s: float = 120.0,
) -> list[Output]:
    """Every committed record of ``topic`` up to its current high watermarks, in partition then offset order.

    Uses a fresh ``read_committed`` consumer (aborted transactions are never seen). The high watermarks are
    the log's ends, asked for with ``read_uncommitted``: a read_committed client is told the last stable
    offset instead, which a transaction still open (a killed replica's, until the coordinator times it out)
    holds back, and what was committed after it would go unread and count as lost. Raises ``TimeoutError``
    naming the partitions that did not reach their high watermark within ``timeout_s``.
    """
    config = {
        "bootstrap.servers": bootstrap_servers,
        "group.id": f"verifier-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
    }
    consumer = Consumer({**config, "isolation.level": "read_committed"})
    ends = Consumer({**config, "isolation.level": "read_uncommitted"})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=30).topics[topic].partitions)
        highs = {p: ends.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        records = _drain(consumer, topic, highs, kind, decode, time.monotonic() + timeout_s)
    finally:
        consumer.close()
        ends.close()
    records.sort(key=lambda out: (out.partition, out.offset))
    return records


def _drain(
    consumer: Consumer,
    topic: str,
    highs: Mapping[int, int],
    kind: Kind,
    decode: Callable[[bytes | None], Mapping[str, Any] | None] | None,
    deadline: float,
) -> list[Output]:
    records: list[Output] = []
    reached: dict[int, int] = {}  # partition -> the end offset the consumer last reported
    while any(reached.get(p, -1) < high for p, high in highs.items()):
        if time.monotonic() > deadline:
            behind = {p: (reached.get(p), high) for p, high in highs.items() if reached.get(p, -1) < high}
            raise TimeoutError(f"{topic}: partitions (reached end, high watermark) not read up: {behind}")
        for message in consumer.consume(10_000, timeout=1.0):
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(f"reading {topic}: {error}")
                reached[message.partition()] = max(reached.get(message.partition(), -1), message.offset())
                continue
            value = message.value()
            records.append(
                Output(
                    kind=kind,
                    partition=message.partition(),
                    offset=message.offset(),
                    key=message.key(),
                    value=value,
                    headers={k: v for k, v in message.headers() or () if v is not None},
                    fields=decode(value) if decode is not None else None,
                )
            )
            reached[message.partition()] = max(reached.get(message.partition(), -1), message.offset() + 1)
    return records


def collect_and_verify(
    bootstrap_servers: str,
    registry_url: str,
    sources: Sources,
    *,
    input_topic: str,
    score_topic: str,
    dead_letter_topic: str,
    score_partitions: int,
    graph_digest: str | None = None,
    timeout_s: float = 180.0,
) -> tuple[Report, list[Output], list[Output]]:
    """Read both output topics and verify them; returns the report and the records, for further checks."""
    decoder = ScoreDecoder(registry_url)
    try:
        scores = read_outputs(bootstrap_servers, score_topic, "score", decode=decoder, timeout_s=timeout_s)
    finally:
        decoder.close()
    dead = read_outputs(bootstrap_servers, dead_letter_topic, "dead_letter", timeout_s=timeout_s)
    report = verify(
        sources,
        scores,
        dead,
        input_topic=input_topic,
        score_partitions=score_partitions,
        graph_digest=graph_digest,
    )
    return report, scores, dead


def describe(sources: Sources, report: Report) -> str:
    """The report with the input totals, as printed in the test output."""
    produced = sum(len(offsets) for offsets in sources.values())
    poison = sum(1 for offsets in sources.values() for s in offsets.values() if s.poison)
    return f"verifier: {produced} inputs ({poison} poison)\n{report.render()}"


def sample_sources(sources: Sources, predicate: Callable[[Source], bool]) -> Sequence[tuple[int, int]]:
    """(partition, offset) of the produced records that satisfy ``predicate``, sorted."""
    return sorted((p, o) for p, offsets in sources.items() for o, s in offsets.items() if predicate(s))
