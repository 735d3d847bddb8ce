"""``InMemoryClients``: the ``KafkaClients`` factory over one ``InMemoryBroker``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.runtime.inmemory.broker import InMemoryBroker
from worker.runtime.inmemory.consumer import InMemoryConsumer
from worker.runtime.inmemory.producer import InMemoryProducer


class InMemoryClients:
    """Consumers and producers of ``broker``; the last ones made are kept for tests to reach."""

    def __init__(self, broker: InMemoryBroker) -> None:
        self.broker = broker
        self.consumers: list[InMemoryConsumer] = []
        self.producers: list[InMemoryProducer] = []

    def consumer(self, config: Mapping[str, Any]) -> InMemoryConsumer:
        self.consumers.append(InMemoryConsumer(self.broker, config))
        return self.consumers[-1]

    def producer(self, config: Mapping[str, Any]) -> InMemoryProducer:
        self.producers.append(InMemoryProducer(self.broker, config))
        return self.producers[-1]
