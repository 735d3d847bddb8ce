"""The fault proxy in front of the three-broker stack's PROXIED listeners, with a real producer and consumer.

A client bootstrapped at ``Stack.proxied_bootstrap`` is told only the proxy ports, so every byte it exchanges
crosses the ``ProxyGroup``. A blackhole makes its writes time out while the main listener keeps serving;
passing through again lets it recover, and the record written into the blackhole is not in the topic. The
recovery time is a test property (``recovery_s``), printed in the summary.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from cluster import Cluster
from confluent_kafka import Consumer, KafkaError, Message, Producer
from faultproxy import ProxyGroup

pytestmark = pytest.mark.timeout(300)
MESSAGE_TIMEOUT_MS = 4000
# A request unanswered for 3 s drops its connection: after a blackhole the client reconnects that soon.
CLIENT = {"socket.timeout.ms": 3000, "request.timeout.ms": 3000}


@pytest.fixture
def proxies(cluster: Cluster) -> Iterator[ProxyGroup]:
    with ProxyGroup(cluster.stack.proxy_routes()) as group:
        yield group


@pytest.fixture
def producer(cluster: Cluster, proxies: ProxyGroup) -> Producer:
    return Producer({"bootstrap.servers": cluster.stack.proxied_bootstrap, "acks": "all",
                     "message.timeout.ms": MESSAGE_TIMEOUT_MS, **CLIENT})  # fmt: skip


def deliver(producer: Producer, topic: str, values: list[bytes]) -> list[KafkaError | None]:
    """Produce ``values`` and wait for their delivery reports: one error, or None, per value."""
    reports: list[KafkaError | None] = []

    def report(err: KafkaError | None, _: Message) -> None:
        reports.append(err)

    for value in values:
        producer.produce(topic, value, on_delivery=report)
    assert producer.flush(MESSAGE_TIMEOUT_MS / 1000 + 10) == 0, "a delivery report never came"
    return reports


def consume_through(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", **CLIENT})  # fmt: skip
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(values) < expected and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                values.append(message.value())
        time.sleep(1.0)  # and nothing more arrives
        while (message := consumer.poll(0.5)) is not None:
            values.append(message.value())
    finally:
        consumer.close()
    return values


def test_a_client_behind_the_proxy_times_out_in_a_blackhole_and_recovers(
    cluster: Cluster,
    proxies: ProxyGroup,
    producer: Producer,
    chaos_topic: Callable[..., str],
    request: pytest.FixtureRequest,
) -> None:
    topic = chaos_topic()
    before = [f"before-{n}".encode() for n in range(10)]
    assert deliver(producer, topic, before) == [None] * len(before)
    brokers = producer.list_topics(timeout=10).brokers.values()
    assert sorted(f"{b.host}:{b.port}" for b in brokers) == cluster.stack.proxied_bootstrap.split(",")

    proxies.blackhole()
    errors = deliver(producer, topic, [b"lost"])
    assert [e.code() if e else None for e in errors] == [KafkaError._MSG_TIMED_OUT]
    assert cluster.metadata(topic) is not None  # the main listener is not behind the proxy

    proxies.pass_through()
    passed_at = time.monotonic()
    for _ in range(10):
        if deliver(producer, topic, [b"after"]) == [None]:
            break
    else:
        pytest.fail("still no delivery through the proxy after 10 attempts")
    request.node.user_properties.append(("recovery_s", round(time.monotonic() - passed_at, 1)))

    values = consume_through(cluster.stack.proxied_bootstrap, topic, len(before) + 1)
    assert sorted(values) == sorted([*before, b"after"])  # the blackholed record was never written


def test_latency_slows_every_round_trip_and_reset_forces_a_reconnect(
    proxies: ProxyGroup, producer: Producer, chaos_topic: Callable[..., str]
) -> None:
    topic = chaos_topic()
    assert deliver(producer, topic, [b"warm"]) == [None]
    proxies.latency(300)
    started = time.monotonic()
    assert deliver(producer, topic, [b"slow"]) == [None]
    assert time.monotonic() - started >= 0.6  # the request and its answer each waited 300 ms

    proxies.reset()
    errors = deliver(producer, topic, [b"refused"])
    assert [e.code() if e else None for e in errors] == [KafkaError._MSG_TIMED_OUT]
    proxies.pass_through()
    assert any(deliver(producer, topic, [b"again"]) == [None] for _ in range(10))
