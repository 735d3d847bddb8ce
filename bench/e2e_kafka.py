"""Broker and registry plumbing of the end-to-end benchmark: scratch topics, schemas, fast pre-fill, offsets.

``Scratch`` is a context manager that owns everything the benchmark creates on the local stack: uuid-named
topics, consumer groups and registry subjects; on exit it deletes them all, also after a failure. ``prefill``
produces pre-encoded Confluent-framed values as fast as librdkafka takes them. ``committed`` and
``end_offsets`` read a group's progress. Every call here blocks on the broker or the registry; errors are the
client libraries' own (``KafkaException``, ``SchemaRegistryError``): a benchmark has no one to recover for.
"""

from __future__ import annotations

import io
import json
import struct
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import fastavro
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
EVENT_SCHEMA = SCHEMAS / "car_insurance_event.avsc"
SCORE_SCHEMA = SCHEMAS / "car_insurance_score.avsc"
TIMEOUT_S = 30.0


class Scratch:
    """Topics, groups and subjects of one run, all named ``e2e-<run id>-...``, removed on exit."""

    def __init__(self, bootstrap: str, registry_url: str) -> None:
        self.bootstrap = bootstrap
        self.registry_url = registry_url
        self.run_id = uuid.uuid4().hex[:8]
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.registry = SchemaRegistryClient({"url": registry_url})
        self.topics: list[str] = []
        self.groups: list[str] = []

    def __enter__(self) -> Scratch:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def name(self, what: str) -> str:
        return f"e2e-{self.run_id}-{what}"

    def topic(
        self, what: str, partitions: int, *, log_append_time: bool = False, retention_ms: int | None = None
    ) -> str:
        """Create a topic; ``log_append_time`` stamps records with the broker's append time."""
        name = self.name(what)
        config = {"message.timestamp.type": "LogAppendTime"} if log_append_time else {}
        if retention_ms is not None:
            config["retention.ms"] = str(retention_ms)
        futures = self.admin.create_topics([NewTopic(name, partitions, 1, config=config)])
        futures[name].result(TIMEOUT_S)
        self.topics.append(name)  # only once created: a name that already existed is not ours to delete
        return name

    def drop(self, topics: Iterable[str]) -> None:
        """Delete some of this run's topics now, so later measurements run on a broker without them."""
        gone = [t for t in topics if t in self.topics]
        for future in self.admin.delete_topics(gone, operation_timeout=TIMEOUT_S).values() if gone else ():
            _quietly(future.result, TIMEOUT_S)
        self.topics = [t for t in self.topics if t not in gone]

    def group(self, what: str) -> str:
        name = self.name(what)
        self.groups.append(name)
        return name

    def register(self, topic: str, path: Path = EVENT_SCHEMA) -> int:
        """Register the schema at ``path`` under ``<topic>-value``; its id."""
        return int(self.registry.register_schema(f"{topic}-value", Schema(path.read_text(), "AVRO")))

    def writer_schema(self, schema_id: int) -> Any:
        """The schema registered as ``schema_id``, fetched once from the registry and parsed by fastavro."""
        return fastavro.parse_schema(json.loads(str(self.registry.get_schema(schema_id).schema_str)))

    def close(self) -> None:
        """Delete groups, topics and their subjects; best effort, so one failure does not leak the rest."""
        if self.groups:
            for future in self.admin.delete_consumer_groups(self.groups).values():
                _quietly(future.result, TIMEOUT_S)
        if self.topics:
            for future in self.admin.delete_topics(self.topics, operation_timeout=TIMEOUT_S).values():
                _quietly(future.result, TIMEOUT_S)
        for subject in _quietly(self.registry.get_subjects) or ():
            if subject.startswith(self.name("")):
                _quietly(self.registry.delete_subject, subject)
                _quietly(self.registry.delete_subject, subject, permanent=True)
        self.groups, self.topics = [], []


def encode_events(events: Iterable[dict[str, Any]], schema_id: int, path: Path = EVENT_SCHEMA) -> list[bytes]:
    """Confluent-framed Avro bodies (magic 0, 4-byte schema id, fastavro ``schemaless_writer``)."""
    schema = fastavro.parse_schema(json.loads(path.read_text()))
    header = b"\x00" + struct.pack(">I", schema_id)
    buffer = io.BytesIO()
    values = []
    for event in events:
        buffer.seek(0)
        buffer.truncate()
        buffer.write(header)
        fastavro.schemaless_writer(buffer, schema, event)
        values.append(buffer.getvalue())
    return values


def prefill(bootstrap: str, topic: str, values: Sequence[bytes], keys: Sequence[bytes]) -> None:
    """Produce ``values`` (keyed, so the default partitioner spreads them) and wait for every ack."""
    failed: list[str] = []

    def on_delivery(error: Any, _message: Any) -> None:
        if error is not None:
            failed.append(str(error))

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20,
                         "batch.size": 512 * 1024, "compression.type": "lz4",
                         "queue.buffering.max.messages": 1_000_000})  # fmt: skip
    for key, value in zip(keys, values, strict=True):
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(TIMEOUT_S * 4) or failed:
        raise KafkaException(f"pre-fill of {topic} failed: {failed[:3] or 'flush timed out'}")


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The high watermark of every partition of ``topic``."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "e2e-watermarks"})
    try:
        partitions = consumer.list_topics(topic, timeout=TIMEOUT_S).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), TIMEOUT_S)[1] for p in partitions}
    finally:
        consumer.close()


class GroupProgress:
    """Reads one group's committed offsets (a consumer that never subscribes, so never joins the group)."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: Iterable[int]) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                                   "enable.auto.commit": False})  # fmt: skip
        self._partitions = [TopicPartition(topic, p) for p in partitions]

    def committed(self) -> dict[int, int]:
        got = self._consumer.committed(self._partitions, timeout=TIMEOUT_S)
        return {tp.partition: tp.offset for tp in got}

    def close(self) -> None:
        self._consumer.close()


def _quietly(call: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except Exception:  # cleanup: keep deleting the rest
        return None
