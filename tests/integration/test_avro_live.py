"""Avro against the real Schema Registry and Kafka: confluent-kafka's serializers facing ours."""

from __future__ import annotations

import io
import json
import struct
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient as ConfluentRegistry
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from worker.avro.convert import columns_from_records
from worker.avro.decoder import BatchDecoder
from worker.avro.encoder import ScoreEncoder
from worker.avro.registry import RegistryConfig, SchemaRegistryClient
from worker.avro.schema import AvroSchema, layout
from worker.errors import RegistryUnavailable

pytestmark = pytest.mark.integration
SCHEMAS = Path(__file__).parents[2] / "schemas"
V1 = {
    "type": "record",
    "name": "Ev",
    "namespace": "test.avro",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "n", "type": "int"},
        {"name": "score", "type": ["null", "double"], "default": None},
    ],
}
V2 = {  # BACKWARD compatible with V1: n promoted to long, a field added with a default
    **V1,
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "n", "type": "long"},
        {"name": "score", "type": ["null", "double"], "default": None},
        {"name": "tier", "type": "string", "default": "basic"},
    ],
}
V3 = {**V1, "fields": [{"name": "id", "type": "string"}, {"name": "n", "type": "string"}]}  # incompatible


def events(n: int) -> list[dict[str, Any]]:
    return [
        {
            "ecid": f"visitor-{i}",
            "km": None if i % 4 == 0 else 1000 * i,
            "cartype": ["SUV", "Sedan", "Van"][i % 3],
            "age": None if i % 5 == 0 else 20 + i,
            "gender": [None, "female", "male"][i % 3],
            "carbrand": " bmw",
            "leasing": i % 2 == 0,
            "city": "Zürich",
            "country": "CH",
            "nationality": "DE",
            "primaryuser": "yes",
            "pricequote": 100.5 + i,
            "timestamp": 1_700_000_000_000 + i,
        }
        for i in range(n)
    ]


def roundtrip(bootstrap_servers: str, topic: str, values: list[bytes]) -> list[bytes]:
    producer = Producer({"bootstrap.servers": bootstrap_servers})
    for v in values:
        producer.produce(topic, v)
    assert producer.flush(30) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    got: list[bytes] = []
    try:
        while len(got) < len(values):
            batch = consumer.consume(len(values), timeout=10)
            assert batch, "no message within 10 s"
            for msg in batch:
                assert msg.error() is None
                got.append(msg.value())
    finally:
        consumer.close()
    return got


@pytest.fixture
def confluent_registry(schema_registry_url: str) -> Iterator[ConfluentRegistry]:
    client = ConfluentRegistry({"url": schema_registry_url})
    yield client
    client.close()


def serializer(client: ConfluentRegistry, schema: dict[str, Any]) -> AvroSerializer:
    return AvroSerializer(client, json.dumps(schema), conf={"auto.register.schemas": True})


def test_events_from_confluents_serializer_decode_to_the_same_values(
    bootstrap_servers: str,
    schema_registry_url: str,
    new_topic: Callable[..., str],
    confluent_registry: ConfluentRegistry,
) -> None:
    topic = new_topic()
    event = AvroSchema.load(SCHEMAS / "car_insurance_event.avsc")
    serialize = serializer(confluent_registry, json.loads(event.text))
    records = events(50)
    ctx = SerializationContext(topic, MessageField.VALUE)
    consumed = roundtrip(bootstrap_servers, topic, [serialize(r, ctx) for r in records])

    decoder = BatchDecoder(event, registry=SchemaRegistryClient(RegistryConfig(url=schema_registry_url)))
    result = decoder.decode(consumed, topic=topic, partitions=[0] * 50, offsets=list(range(50)))

    assert result.errors == {}
    expected = columns_from_records(layout(event), records)
    for name, column in expected.items():
        np.testing.assert_array_equal(result.columns[name], column, err_msg=name)


def test_v1_and_v2_interleaved_then_incompatible_v3_refused_per_record(
    schema_registry_url: str, confluent_registry: ConfluentRegistry
) -> None:
    topic = f"avro-evolution-{uuid.uuid4().hex[:8]}"
    ctx = SerializationContext(topic, MessageField.VALUE)
    ser1, ser2 = serializer(confluent_registry, V1), serializer(confluent_registry, V2)
    ours = SchemaRegistryClient(RegistryConfig(url=schema_registry_url))
    v3 = AvroSchema.parse(V3)
    v3_id = ours.register(
        f"{topic}-other-value", v3
    )  # another subject: the registry may enforce compatibility
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, v3.parsed, {"id": "bad", "n": "seven"})
    values = []
    for i in range(10):
        if i == 5:
            values.append(b"\x00" + struct.pack(">I", v3_id) + buf.getvalue())
        elif i % 2:
            values.append(ser1({"id": f"e{i}", "n": i, "score": None if i % 3 == 0 else i / 2}, ctx))
        else:
            values.append(
                ser2({"id": f"e{i}", "n": i, "score": None if i % 3 == 0 else i / 2, "tier": "basic"}, ctx)
            )

    for fast in (True, False):
        decoder = BatchDecoder(AvroSchema.parse(V2), registry=ours, fast_path=fast)
        result = decoder.decode(values, topic=topic, partitions=[0] * 10, offsets=list(range(10)))

        kept = [i for i in range(10) if i != 5]
        assert result.rows.tolist() == kept
        assert result.columns["id"].tolist() == [f"e{i}" for i in kept]
        assert result.columns["n"].tolist() == kept
        np.testing.assert_array_equal(
            result.columns["score"], [np.nan if i % 3 == 0 else i / 2 for i in kept]
        )
        assert result.columns["tier"].tolist() == ["basic"] * 9
        assert result.errors[5].schema_id == v3_id and "cannot be read" in result.errors[5].reason


def test_scores_encoded_by_us_decode_with_confluents_deserializer(
    schema_registry_url: str, confluent_registry: ConfluentRegistry
) -> None:
    topic = f"avro-scores-{uuid.uuid4().hex[:8]}"
    score = AvroSchema.load(SCHEMAS / "car_insurance_score.avsc")
    client = SchemaRegistryClient(RegistryConfig(url=schema_registry_url))
    records = [
        {"ecid": f"v{i}", "score": i / 10, "label": i % 2, "timestamp": 1_700_000_000_000 + i}
        for i in range(5)
    ]

    encoded = ScoreEncoder.for_topic(score, topic, client).encode(
        columns_from_records(layout(score), records)
    )

    deserialize = AvroDeserializer(confluent_registry)
    ctx = SerializationContext(topic, MessageField.VALUE)
    decoded = [deserialize(v, ctx) for v in encoded.values]
    assert [(d["ecid"], d["score"], d["label"]) for d in decoded] == [
        (r["ecid"], r["score"], r["label"]) for r in records
    ]


def test_unreachable_registry_is_registry_unavailable_after_bounded_retries() -> None:
    sleeps: list[float] = []
    config = RegistryConfig(url="http://127.0.0.1:9", timeout_s=1, max_retries=3, backoff_initial_s=0.01)
    client = SchemaRegistryClient(config, sleep=sleeps.append)
    decoder = BatchDecoder(AvroSchema.parse(V1), registry=client)

    with pytest.raises(RegistryUnavailable):
        decoder.decode([b"\x00\x00\x00\x00\x07\x02a\x02\x00"], topic="t", partitions=[0], offsets=[0])

    assert sleeps == [0.01, 0.02, 0.04]
