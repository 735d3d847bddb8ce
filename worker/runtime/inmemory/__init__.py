"""An in-memory Kafka for the loop's unit tests: one broker object, consumers and producers made from it.

    broker = InMemoryBroker()
    broker.create_topic("events", partitions=4)
    clients = broker.clients()            # a KafkaClients, as Worker(..., clients=clients) takes it
    broker.fail_deliveries("scores", KafkaError(KafkaError._MSG_TIMED_OUT))   # faults tests control

It implements the calls of ``worker.runtime.clients``' protocols with librdkafka's semantics where the loop's
ordering depends on them; ``tests/contract`` runs one suite against it and against the real broker so that it
cannot drift. Never use it to claim exactly-once: its transactions are a model, not Kafka's.
"""

from worker.runtime.inmemory.broker import InMemoryBroker
from worker.runtime.inmemory.clients import InMemoryClients
from worker.runtime.inmemory.consumer import InMemoryConsumer
from worker.runtime.inmemory.producer import InMemoryProducer

__all__ = ["InMemoryBroker", "InMemoryClients", "InMemoryConsumer", "InMemoryProducer"]
