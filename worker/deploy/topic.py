"""The deployment topic on the broker: made when absent, read to its end like a table, written durably.

One partition (a total order of every deployment's records), ``cleanup.policy=compact`` (the latest record
per key is kept for good), replication factor min(3, brokers) and ``min.insync.replicas`` min(2, RF), so a
publish acknowledged by ``acks=all`` survives the loss of a broker where the cluster has three. A topic of
another shape is refused at start, naming the setting, rather than used: with two partitions the order of
a version and its pointer would be lost; without compaction, retention would delete deployments.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType  # type: ignore[attr-defined]

from worker.deploy.records import ActiveRecord, Table, VersionRecord, encode
from worker.errors import ConfigError

FIELD = "deployments.topic"
DEFAULT_TOPIC = "_rtml_deployments"
_TIMEOUT_S = 15.0


def ensure_topic(
    config: Mapping[str, Any], topic: str, timeout_s: float = _TIMEOUT_S, *, field: str = FIELD
) -> None:
    """Create ``topic`` with the shape above when absent; ``ConfigError`` when it exists in another."""
    admin = AdminClient(dict(config))
    metadata = admin.list_topics(timeout=timeout_s)
    if topic not in metadata.topics or metadata.topics[topic].error is not None:
        replicas = min(3, len(metadata.brokers))
        settings = {"cleanup.policy": "compact", "min.insync.replicas": str(min(2, replicas))}
        future = admin.create_topics([NewTopic(topic, 1, replicas, config=settings)])[topic]
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # another publisher made it first
                raise ConfigError(f"cannot create {topic}: {exc.args[0].str()}", field=field) from exc
        return
    partitions = len(metadata.topics[topic].partitions)
    resource = ConfigResource(ResourceType.TOPIC, topic)
    described = admin.describe_configs([resource])[resource].result(timeout=timeout_s)
    policy = described["cleanup.policy"].value
    if partitions != 1 or "compact" not in policy or "delete" in policy:
        raise ConfigError(
            f"{topic} has {partitions} partitions and cleanup.policy={policy}; a deployment topic needs 1 "
            "partition and cleanup.policy=compact (name another topic, or let it be created)",
            field=field,
        )


def read_table(config: Mapping[str, Any], topic: str, timeout_s: float = _TIMEOUT_S) -> tuple[Table, int]:
    """The topic read from its start to its end now: the table, and the offset to follow from (an absent
    topic is an empty table)."""
    table = Table()
    return table, read_log(config, topic, table.apply, timeout_s)


def read_log(
    config: Mapping[str, Any],
    topic: str,
    take: Callable[[bytes | None, bytes | None, int], object],
    timeout_s: float = _TIMEOUT_S,
    *,
    field: str = FIELD,
) -> int:
    """Hand every record of partition 0, from its start to its end now, to ``take(key, value, offset)``;
    returns the offset after the last (0 for an absent topic). ``ConfigError`` names the topic's setting."""
    consumer = Consumer({**config, "group.id": "rtml-deployments-reader", "enable.auto.commit": False,
                         "enable.partition.eof": False, "isolation.level": "read_committed"})  # fmt: skip
    try:
        known = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if known is None or known.error is not None:
            return 0  # nothing written yet: the first write makes the topic
        end = _end_offset(consumer, topic, timeout_s)
        if end == 0:
            return 0
        consumer.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + timeout_s
        position = 0
        while position < end:
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"{topic}: read {position} of {end} records in {timeout_s:.0f} s", field=field
                )
            for message in consumer.consume(500, timeout=0.5):
                if (error := message.error()) is not None:
                    raise ConfigError(f"{topic}: {error.str()}", field=field)
                position = (message.offset() or 0) + 1  # a fetched record always has its offset
                take(message.key(), message.value(), position - 1)
        return end
    finally:
        consumer.close()


def _end_offset(consumer: Consumer, topic: str, timeout_s: float) -> int:
    """The high watermark of partition 0, retried while a topic just created is not yet known."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return int(consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=timeout_s)[1])
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART or time.monotonic() > deadline:
                raise ConfigError(f"{topic}: {exc.args[0].str()}", field=FIELD) from exc
            time.sleep(0.2)


def write(
    config: Mapping[str, Any],
    topic: str,
    records: Iterable[VersionRecord | ActiveRecord | tuple[str, None]],
    timeout_s: float = _TIMEOUT_S,
    *,
    field: str = FIELD,
) -> list[int]:
    """Produce ``records`` in order (a ``(key, None)`` pair is a tombstone), idempotent with ``acks=all``;
    returns their offsets, or raises ``ConfigError`` naming the first that was not written."""
    producer = Producer({**config, "enable.idempotence": True, "acks": "all",
                         "message.timeout.ms": int(timeout_s * 1000)})  # fmt: skip
    reports: list[tuple[KafkaError | None, int]] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        offset = msg.offset()
        reports.append((err, -1 if offset is None else offset))

    sent = 0
    for record in records:
        key, value = (record[0].encode(), None) if isinstance(record, tuple) else encode(record)
        producer.produce(topic, value=value, key=key, partition=0, on_delivery=on_delivery)
        sent += 1
    producer.flush(timeout_s + 5)
    failed = next((err.str() for err, _ in reports if err is not None), None)
    if failed is None and any(offset < 0 for _, offset in reports):
        # librdkafka's implicit ack reports a record delivered, with no offset, that may not be written
        failed = "delivered without an offset (not known to be written)"
    if failed is not None or len(reports) != sent:
        raise ConfigError(f"cannot write to {topic}: {failed or 'no delivery report'}", field=field)
    return [offset for _, offset in reports]
