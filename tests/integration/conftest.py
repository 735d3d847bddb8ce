"""Fixtures for tests against the real Kafka broker and Schema Registry.

`make test` starts both (scripts/services.py) and exports KAFKA_BOOTSTRAP_SERVERS and SCHEMA_REGISTRY_URL.
When either is missing the tests that need it fail with a message naming it: they never skip, in CI or not.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_REGISTRY = "http://127.0.0.1:8081/apis/ccompat/v7"
HOW_TO_START = "start it with `make services` (or run `make test`, which starts and stops it)"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def bootstrap_servers() -> str:
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP)
    admin = AdminClient({"bootstrap.servers": servers, "socket.timeout.ms": 2000})
    try:
        admin.list_topics(timeout=10)
    except Exception as exc:
        pytest.fail(f"Kafka broker not reachable at {servers} ({exc}): {HOW_TO_START}", pytrace=False)
    return servers


@pytest.fixture(scope="session")
def schema_registry_url() -> str:
    url = os.environ.get("SCHEMA_REGISTRY_URL", DEFAULT_REGISTRY)
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=10) as resp:
            resp.read()
    except (urllib.error.URLError, OSError) as exc:
        pytest.fail(f"Schema Registry not reachable at {url} ({exc}): {HOW_TO_START}", pytrace=False)
    return url


@pytest.fixture(scope="session")
def admin(bootstrap_servers: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap_servers})


@pytest.fixture
def new_topic(admin: AdminClient) -> Iterator[Callable[..., str]]:
    """Creates uuid-named topics for one test and deletes them after it."""
    created: list[str] = []

    def create(partitions: int = 1, *, prefix: str = "test", config: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        futures = admin.create_topics(
            [NewTopic(name, partitions, 1, config=config or {})], operation_timeout=30
        )
        futures[name].result(timeout=30)
        created.append(name)
        return name

    yield create
    if created:
        for future in admin.delete_topics(created, operation_timeout=30).values():
            future.result(timeout=30)


@pytest.fixture
def control_topic(admin: AdminClient) -> Iterator[str]:
    """A fresh name for a deployment topic, deleted after the test if something made it."""
    name = f"test-deployments-{uuid.uuid4().hex[:12]}"
    yield name
    if name in admin.list_topics(timeout=10).topics:
        admin.delete_topics([name], operation_timeout=30)[name].result(timeout=30)
