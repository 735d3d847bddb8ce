"""`make demo`: the journey of events through the local stack.

Today: create the demo topics, produce generated car-insurance events in the Confluent wire format (the schema
registered through the registry), and read them back. `make demo` wraps this in `scripts/services.py run`, so
the services are started and stopped around it unless they were already running.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from examples.car_insurance.generate import generate

# Topic name -> partitions; docker-compose.yml creates the same ones.
TOPICS = {"car-insurance-events": 12, "car-insurance-scores": 12, "car-insurance-dlq": 3}
EVENTS_TOPIC = "car-insurance-events"
SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


def ensure_topics(admin: AdminClient) -> None:
    existing = admin.list_topics(timeout=10).topics
    missing = [NewTopic(name, n, 1) for name, n in TOPICS.items() if name not in existing]
    for future in admin.create_topics(missing, operation_timeout=30).values() if missing else ():
        future.result(timeout=30)


def main() -> int:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    registry_url = os.environ.get("SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081/apis/ccompat/v7")
    ensure_topics(AdminClient({"bootstrap.servers": bootstrap}))
    schema = (SCHEMAS / "car_insurance_event.avsc").read_text()
    events = generate(20, seed=int(time.time()))
    with SchemaRegistryClient({"url": registry_url}) as registry:
        serialize = AvroSerializer(registry, schema, lambda e, _: e)
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
        for event in events:
            ctx = SerializationContext(EVENTS_TOPIC, MessageField.VALUE)
            producer.produce(EVENTS_TOPIC, key=event["ecid"].encode(), value=serialize(event, ctx))
        producer.flush(30)
        print(f"produced {len(events)} events to {EVENTS_TOPIC}")
        deserialize = AvroDeserializer(registry)
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"demo-{uuid.uuid4().hex[:8]}",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
        wanted = {e["ecid"] for e in events}
        consumer.subscribe([EVENTS_TOPIC])
        seen = 0
        try:
            deadline = time.monotonic() + 30
            while seen < len(wanted) and time.monotonic() < deadline:
                for msg in consumer.consume(100, timeout=0.5):
                    event = deserialize(msg.value(), SerializationContext(msg.topic(), MessageField.VALUE))
                    if event["ecid"] in wanted:
                        seen += 1
                        if seen <= 3:
                            print(json.dumps(event, default=str))
        finally:
            consumer.close()
    print(f"read back {seen} of {len(events)} events")
    return 0 if seen == len(events) else 1


if __name__ == "__main__":
    sys.exit(main())
