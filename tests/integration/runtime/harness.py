"""The event side of the streaming tests: car-insurance events planned, scored offline, and produced fast.

``plan_events`` generates ``n`` events, turns a ``poison_ratio`` of them into poison (a wrong magic byte, an
unknown schema id, a truncated body, a NaN feature), scores the decodable ones offline with the worker's own
offline scorer (``worker.scoring``) and returns one ``Planned`` record per event: key (the ecid), value
(Confluent framing: magic 0, the 4-byte schema id, the fastavro body) and the expected outcome, the score
fields as Avro stores them, or None when the event must be dead-lettered.

``produce`` sends planned records to a topic with an idempotent producer (so a retry never writes a record
twice) and returns, from the delivery reports, what sits at each partition and offset: the ``Sources`` the
verifier needs. ``BackgroundProducer`` does the same from a thread at a given rate, so that replicas can be
killed while events still arrive. Blocking; called by the runtime tests only.
"""

from __future__ import annotations

import io
import json
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from verifier import Source, Sources

from examples.car_insurance.generate import generate
from worker.graph import CompiledGraph
from worker.scoring.score import score_events

ROOT = Path(__file__).resolve().parents[3]
EVENT_SCHEMA = ROOT / "schemas" / "car_insurance_event.avsc"
SCORE_SCHEMA = ROOT / "schemas" / "car_insurance_score.avsc"
POISON_KINDS = ("bad_magic", "unknown_schema_id", "truncated", "nan_features")
UNKNOWN_SCHEMA_ID = 2_000_000_000  # far beyond any id the local registry hands out


@dataclass(frozen=True, slots=True)
class Planned:
    """One record to produce and what the worker must answer for it."""

    key: bytes
    value: bytes
    expected: Mapping[str, Any] | None
    poison: str | None = None
    partition: int | None = None  # None: the producer's partitioner on the key


def register_schema(registry_url: str, subject: str, path: Path = EVENT_SCHEMA) -> int:
    """Register the Avro schema at ``path`` under ``subject``; returns its id."""
    with SchemaRegistryClient({"url": registry_url}) as client:
        return int(client.register_schema(subject, Schema(path.read_text(), "AVRO")))


def plan_events(
    graph: CompiledGraph, n: int, *, seed: int, schema_id: int, poison_ratio: float = 0.0
) -> list[Planned]:
    """``n`` events (see the module docstring); poison kinds take turns over the poisoned events."""
    events = generate(n, seed)
    rng = np.random.default_rng(seed + 1)
    poisoned = sorted(rng.choice(n, size=round(n * poison_ratio), replace=False).tolist())
    kinds = {index: POISON_KINDS[i % len(POISON_KINDS)] for i, index in enumerate(poisoned)}
    for index, kind in kinds.items():
        if kind == "nan_features":
            events[index] = {**events[index], "pricequote": float("nan")}
    expected = expected_scores(graph, events)
    bodies = encode_bodies(events)
    header = b"\x00" + struct.pack(">I", schema_id)
    planned = []
    for index, (event, body, want) in enumerate(zip(events, bodies, expected, strict=True)):
        kind = kinds.get(index)
        value = poison_value(kind, header, body)
        decodable = kind in (None, "nan_features")  # the others never reach the graph
        planned.append(Planned(event["ecid"].encode(), value, want if decodable else None, kind))
    return planned


def poison_value(kind: str | None, header: bytes, body: bytes) -> bytes:
    """``header + body`` made into poison of ``kind`` (None, "nan_features": left as is)."""
    if kind == "bad_magic":
        return b"\x01" + header[1:] + body
    if kind == "unknown_schema_id":
        return b"\x00" + struct.pack(">I", UNKNOWN_SCHEMA_ID) + body
    if kind == "truncated":
        return header + body[: len(body) // 2]
    return header + body


def encode_bodies(events: Sequence[Mapping[str, Any]], path: Path = EVENT_SCHEMA) -> list[bytes]:
    """The Avro binary body of each event (no framing)."""
    schema = fastavro.parse_schema(json.loads(path.read_text()))
    out = []
    buffer = io.BytesIO()
    for event in events:
        buffer.seek(0)
        buffer.truncate()
        fastavro.schemaless_writer(buffer, schema, event)
        out.append(buffer.getvalue())
    return out


def expected_scores(graph: CompiledGraph, events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any] | None]:
    """The offline score of each event as the score's Avro fields hold it (timestamps in epoch ms), or None
    when the offline scorer rejects the event."""
    stamps = {f.name for f in graph.outputs if str(f.dtype).startswith("datetime64")}
    expected: list[dict[str, Any] | None] = []
    for result in score_events(graph, [dict(e) for e in events], batch_size=5000):
        if "error" in result:
            expected.append(None)
            continue
        for name in stamps:
            result[name] = int(np.datetime64(result[name].rstrip("Z"), "ms").astype(np.int64))
        expected.append(result)
    return expected


def produce(
    bootstrap_servers: str, topic: str, planned: Sequence[Planned], *, rate_per_s: float | None = None
) -> dict[int, dict[int, Source]]:
    """Produce ``planned`` in order (at about ``rate_per_s`` when given); where each record landed.

    Raises ``RuntimeError`` when a record is not delivered within a minute of the last send.
    """
    producer = Producer({
        "bootstrap.servers": bootstrap_servers,
        "enable.idempotence": True,
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        "message.max.bytes": 2_000_000,  # poison of about 1 MB, as a hostile producer would send
    })  # fmt: skip
    placed: dict[int, dict[int, Source]] = {}
    unplaced: dict[int, list[Planned]] = {}  # acknowledged without an offset
    failures: list[str] = []

    def delivered(error: KafkaError | None, message: Message, record: Planned) -> None:
        if error is not None:
            failures.append(str(error))
            return
        offset = message.offset()
        if offset is None:  # DUPLICATE_SEQUENCE_NUMBER on a retry: written before, offset not reported
            unplaced.setdefault(message.partition(), []).append(record)  # type: ignore[arg-type]
            return
        source = Source(record.key, record.value, record.expected, record.poison)
        placed.setdefault(message.partition(), {})[offset] = source

    chunk = 1000 if rate_per_s is None else max(1, min(1000, int(rate_per_s / 20)))  # ~20 sends a second
    started = time.monotonic()
    for first in range(0, len(planned), chunk):
        if rate_per_s is not None:
            time.sleep(max(0.0, started + first / rate_per_s - time.monotonic()))
        for record in planned[first : first + chunk]:
            producer.produce(
                topic,
                record.value,
                record.key,
                partition=-1 if record.partition is None else record.partition,
                on_delivery=lambda e, m, r=record: delivered(e, m, r),
            )
        producer.poll(0)
        if first == 0 and rate_per_s is not None:
            # The first send waits for the idempotent producer's id: keep the records queued meanwhile out
            # of the rate, or they would reach the broker as one burst.
            producer.flush(30)
            started = time.monotonic() - chunk / rate_per_s
    remaining = producer.flush(60)
    if remaining or failures:
        raise RuntimeError(f"{topic}: {remaining} records undelivered, failures: {failures[:3]}")
    for partition, records in unplaced.items():
        log = read_partition(bootstrap_servers, topic, partition)
        placed[partition] = {**placed.get(partition, {}), **locate(records, log, placed.get(partition, {}))}
    return placed


def locate(
    records: Sequence[Planned], log: Sequence[tuple[int, bytes | None, bytes]], placed: Mapping[int, Source]
) -> dict[int, Source]:
    """Where ``records``, acknowledged without an offset, landed: the offsets of ``log`` (offset, key,
    value) not ``placed`` yet holding the same key and value, the first in offset order for each record.
    librdkafka acknowledges a retried batch the broker reports as a duplicate (DUPLICATE_SEQUENCE_NUMBER:
    written before, its answer lost) as delivered, with no offset."""
    free: dict[tuple[bytes | None, bytes], list[int]] = {}
    for offset, key, value in sorted(log):
        if offset not in placed:
            free.setdefault((key, value), []).append(offset)
    found: dict[int, Source] = {}
    for record in records:
        offsets = free.get((record.key, record.value))
        if not offsets:
            raise RuntimeError(
                f"a record acknowledged without an offset is not in the log: key {record.key!r}"
            )
        found[offsets.pop(0)] = Source(record.key, record.value, record.expected, record.poison)
    return found


Record = tuple[int, bytes | None, bytes]  # (offset, key, value)
Log = Sequence[Record]  # one partition's records, in offset order


def read_partition(bootstrap_servers: str, topic: str, partition: int) -> list[Record]:
    """Every (offset, key, value) of one partition, up to its high watermark."""
    return read_partitions(bootstrap_servers, topic, [partition])[partition]


def read_partitions(
    bootstrap_servers: str, topic: str, partitions: Sequence[int], *, timeout_s: float = 120.0
) -> dict[int, list[Record]]:
    """Every (offset, key, value) of each of ``partitions``, up to the high watermarks, with one consumer."""
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": "harness-reader",
                         "enable.auto.commit": False})  # fmt: skip
    try:
        found: dict[int, list[Record]] = {p: [] for p in partitions}
        starts, highs = [], {}
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
            if high > low:
                starts.append(TopicPartition(topic, partition, low))
                highs[partition] = high
        consumer.assign(starts)
        deadline = time.monotonic() + timeout_s
        while highs:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{topic}: not read to the high watermarks {highs} within {timeout_s} s")
            for m in consumer.consume(1000, 0.5):
                partition = m.partition()
                if m.error() is None and partition in highs:
                    found[partition].append((m.offset(), m.key(), m.value()))  # type: ignore[arg-type]
                    if m.offset() >= highs[partition] - 1:  # type: ignore[operator]
                        del highs[partition]
        return found
    finally:
        consumer.close()


def reconcile(sources: Sources, logs: Mapping[int, Log]) -> tuple[dict[int, dict[int, Source]], int]:
    """The input log as the verifier's ground truth, and how many of its records are second copies.

    ``sources`` is what the delivery reports said; ``logs`` is what the partitions hold. A record at an
    offset no report named, with the key and value of a produced one, is a copy the producer wrote twice: an
    input like any other, which the worker must answer (during a leader bounce the 20-cycle chaos run saw
    two scores for such offsets and counted them as unknown). Raises ``RuntimeError`` when an acknowledged
    record is missing from its offset or differs there, or a record no producer sent is in the log.
    """
    truth: dict[int, dict[int, Source]] = {}
    copies = 0
    for partition in sorted(set(sources) | set(logs)):
        placed = sources.get(partition, {})
        by_content = {(source.key, source.value): source for source in placed.values()}
        held: dict[int, Source] = {}
        for offset, key, value in logs.get(partition, ()):
            source = placed.get(offset)
            if source is None:
                source = by_content.get((key, value))
                if source is None:
                    raise RuntimeError(f"[{partition}]@{offset}: a record no producer of the run sent")
                copies += 1
            elif (source.key, source.value) != (key, value):
                raise RuntimeError(f"[{partition}]@{offset}: holds another record than the one acknowledged")
            held[offset] = source
        missing = sorted(set(placed) - set(held))
        if missing:
            raise RuntimeError(f"[{partition}]: acknowledged records missing from the log at {missing[:5]}")
        truth[partition] = held
    return truth, copies


class BackgroundProducer:
    """``produce`` in a thread; ``result`` joins it and returns (or raises) what ``produce`` did."""

    def __init__(
        self, bootstrap_servers: str, topic: str, planned: Sequence[Planned], *, rate_per_s: float
    ) -> None:
        self._outcome: dict[int, dict[int, Source]] | BaseException | None = None
        self.planned_end = time.monotonic() + len(planned) / rate_per_s  # when the last send is due
        self._thread = threading.Thread(
            target=self._run, args=(bootstrap_servers, topic, planned, rate_per_s), daemon=True
        )
        self._thread.start()

    def _run(self, bootstrap_servers: str, topic: str, planned: Sequence[Planned], rate: float) -> None:
        try:
            self._outcome = produce(bootstrap_servers, topic, planned, rate_per_s=rate)
        except BaseException as exc:  # handed to the test thread by result()
            self._outcome = exc

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def result(self, timeout_s: float = 300.0) -> dict[int, dict[int, Source]]:
        """Joins the thread, waiting up to ``timeout_s`` past the planned end of the load (a scenario's faults
        may end long before it: 20 leader bounces took about 360 s of a 730 s load)."""
        self._thread.join(max(0.0, self.planned_end - time.monotonic()) + timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"the background producer did not finish {timeout_s} s past its planned end")
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        assert self._outcome is not None
        return self._outcome


def end_offsets(sources: Mapping[int, Mapping[int, Source]], partitions: int) -> dict[int, int]:
    """Per input partition, the offset after the last produced record: where the group must commit to."""
    return {p: max(sources[p]) + 1 if sources.get(p) else 0 for p in range(partitions)}
