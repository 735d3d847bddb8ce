"""The contract suites' fixtures: each test runs against the fake or local part and against the real one.

The Kafka suite's tests take the ``kafka`` fixture and run twice: once against
``worker.runtime.inmemory`` and once against the real broker of ``make services`` (marked integration; it
fails, never skips, when the broker is missing). What holds for both is what the loop's unit tests may rely
on when they use the in-memory broker.

``store_location`` does the same for the model store's backends: a local folder, and a fresh prefix of the
real S3Proxy that ``make services`` starts (integration; fails without it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture(params=["folder", pytest.param("s3", marks=pytest.mark.integration)])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A model-store location of each kind: a local folder, and a prefix of the real S3Proxy."""
    if request.param == "folder":
        return str(tmp_path / "store")
    return str(request.getfixturevalue("s3_location"))
