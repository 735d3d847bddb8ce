"""The Kafka contract suite's fixture: every test runs against the in-memory broker and the real one.

Every test in this folder takes the ``kafka`` fixture and runs twice: once against
``worker.runtime.inmemory`` and once against the real broker of ``make services`` (marked integration; it
fails, never skips, when the broker is missing). What holds for both is what the loop's unit tests may rely
on when they use the in-memory broker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient
from kafka_backends import Backend, MemoryBackend, RealBackend

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.integration)])
def kafka(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        yield MemoryBackend()
        return
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP)
    try:
        AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000}).list_topics(timeout=10)
    except Exception as exc:
        pytest.fail(f"Kafka broker not reachable at {bootstrap} ({exc}): start it with `make services`")
    backend = RealBackend(bootstrap)
    yield backend
    backend.close()
