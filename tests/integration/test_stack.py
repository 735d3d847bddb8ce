"""The local stack is real: a KRaft broker that stores and serves records, and a Confluent-API registry."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

SCHEMA = {
    "type": "record",
    "name": "Probe",
    "namespace": "io.rtml.test",
    "fields": [{"name": "id", "type": "string"}, {"name": "n", "type": "long"}],
}


def test_broker_is_kraft_and_lists_the_new_topic(admin: AdminClient, new_topic: Callable[..., str]) -> None:
    topic = new_topic(partitions=3)
    metadata = admin.list_topics(timeout=10)
    assert topic in metadata.topics
    assert len(metadata.topics[topic].partitions) == 3
    assert metadata.cluster_id  # KRaft clusters carry the id we formatted the storage with


def test_produce_and_consume_round_trip(bootstrap_servers: str, new_topic: Callable[..., str]) -> None:
    topic = new_topic(partitions=2)
    sent = {f"key-{i}".encode(): f"value-{i}".encode() for i in range(50)}
    producer = Producer({"bootstrap.servers": bootstrap_servers, "enable.idempotence": True})
    for key, value in sent.items():
        producer.produce(topic, value=value, key=key)
    assert producer.flush(30) == 0

    consumer = Consumer({
        "bootstrap.servers": bootstrap_servers,
        "group.id": f"g-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })  # fmt: skip
    consumer.subscribe([topic])
    received: dict[bytes, bytes] = {}
    try:
        for _ in range(60):
            for message in consumer.consume(100, timeout=0.5):
                assert message.error() is None, message.error()
                received[message.key()] = message.value()
            if len(received) == len(sent):
                break
    finally:
        consumer.close()
    assert received == sent


def test_registry_confluent_api_round_trip(schema_registry_url: str) -> None:
    subject = f"probe-{uuid.uuid4().hex[:12]}-value"
    with SchemaRegistryClient({"url": schema_registry_url}) as client:
        schema_id = client.register_schema(subject, Schema(json.dumps(SCHEMA), "AVRO"))
        fetched = client.get_schema(schema_id)
        latest = client.get_latest_version(subject)
        subjects = client.get_subjects()
    assert fetched.schema_type == "AVRO"
    assert json.loads(fetched.schema_str) == SCHEMA
    assert latest.schema_id == schema_id
    assert subject in subjects
