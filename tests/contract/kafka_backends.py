"""The Kafka contract suite's two backends: the in-memory broker and the real one, behind one interface."""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from worker.runtime.clients import ConfluentClients, KafkaClients
from worker.runtime.inmemory import InMemoryBroker


class Backend:
    """Topics, outside writes and reads, and client configs for one kind of broker."""

    name: str
    clients: KafkaClients

    def config(self, **extra: Any) -> dict[str, Any]:
        raise NotImplementedError

    def create_topic(self, partitions: int = 1, *, max_message_bytes: int | None = None) -> str:
        raise NotImplementedError

    def write(self, topic: str, partition: int, values: list[bytes]) -> None:
        raise NotImplementedError

    def read_committed(self, topic: str) -> list[tuple[int, int, bytes | None]]:
        """(partition, offset, value) of every record a read_committed reader sees, sorted."""
        raise NotImplementedError

    def group_offsets(self, group: str, topic: str, partitions: int) -> dict[int, int]:
        raise NotImplementedError

    def close(self) -> None:
        """Remove what the test created."""

    def settle(self) -> None:
        """Let asynchronous broker work (group joins, transaction markers) finish."""

    def time_out_transactions(self, timeout_s: float) -> None:
        """Let the coordinator abort every transaction open past its ``transaction.timeout.ms``."""
        raise NotImplementedError


class MemoryBackend(Backend):
    name = "memory"

    def __init__(self) -> None:
        self.broker = InMemoryBroker()
        self.clients = self.broker.clients()

    def config(self, **extra: Any) -> dict[str, Any]:
        return dict(extra)

    def create_topic(self, partitions: int = 1, *, max_message_bytes: int | None = None) -> str:
        name = f"c-{uuid.uuid4().hex[:10]}"
        if max_message_bytes is None:
            self.broker.create_topic(name, partitions)
        else:
            self.broker.create_topic(name, partitions, max_message_bytes=max_message_bytes)
        return name

    def write(self, topic: str, partition: int, values: list[bytes]) -> None:
        for value in values:
            self.broker.produce(topic, value, partition=partition)

    def read_committed(self, topic: str) -> list[tuple[int, int, bytes | None]]:
        return [(p, o, r.value) for p, o, r in self.broker.visible(topic)]

    def group_offsets(self, group: str, topic: str, partitions: int) -> dict[int, int]:
        return self.broker.committed(group, topic)

    def time_out_transactions(self, timeout_s: float) -> None:
        self.broker.time_out_transactions()


class RealBackend(Backend):
    name = "kafka"

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.clients = ConfluentClients()
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.topics: list[str] = []

    def config(self, **extra: Any) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, **extra}

    def create_topic(self, partitions: int = 1, *, max_message_bytes: int | None = None) -> str:
        name = f"c-{uuid.uuid4().hex[:10]}"
        config = {} if max_message_bytes is None else {"max.message.bytes": str(max_message_bytes)}
        self.admin.create_topics([NewTopic(name, partitions, 1, config=config)])[name].result(30)
        self.topics.append(name)
        return name

    def write(self, topic: str, partition: int, values: list[bytes]) -> None:
        producer = self.clients.producer(self.config())
        for value in values:
            producer.produce(topic, value, partition=partition)
        assert producer.flush(30) == 0

    def read_committed(self, topic: str) -> list[tuple[int, int, bytes | None]]:
        consumer = Consumer(self.config(**{
            "group.id": f"reader-{uuid.uuid4().hex}", "isolation.level": "read_committed",
            "enable.partition.eof": True, "auto.offset.reset": "earliest", "enable.auto.commit": False,
        }))  # fmt: skip
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        found, ended = [], set()
        deadline = time.monotonic() + 30
        while len(ended) < len(partitions) and time.monotonic() < deadline:
            for m in consumer.consume(1000, 0.5):
                error = m.error()
                if error is not None and error.code() == KafkaError._PARTITION_EOF:
                    ended.add(m.partition())
                elif error is None:
                    found.append((m.partition(), m.offset(), m.value()))
        consumer.close()
        assert len(ended) == len(partitions), "read_committed did not reach the end"
        return sorted(found)

    def group_offsets(self, group: str, topic: str, partitions: int) -> dict[int, int]:
        request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])
        answer = self.admin.list_consumer_group_offsets([request])[group].result(timeout=30)
        return {tp.partition: tp.offset for tp in answer.topic_partitions if tp.offset >= 0}

    def settle(self) -> None:
        time.sleep(0.5)

    def time_out_transactions(self, timeout_s: float) -> None:
        # The coordinator looks for timed-out transactions every
        # transaction.abort.timed.out.transaction.cleanup.interval.ms (10 s by default).
        time.sleep(timeout_s + 10.5)

    def close(self) -> None:
        if self.topics:
            for future in self.admin.delete_topics(self.topics, operation_timeout=30).values():
                future.result(30)
