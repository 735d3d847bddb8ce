"""Broker faults on the three-broker stack: a leader SIGKILLed or SIGSTOPped is replaced, and comes back.

Each test writes acknowledged records (acks=all, min.insync.replicas=2) to a replication-factor-3 topic,
faults the leader of partition 0, waits for a new leader, writes again with one broker out, brings the old
leader back (restart on its own data, or SIGCONT), waits until every replica is in sync, and then reads every
acknowledged record back. The failover time is a test property (``failover_s``), printed in the summary.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from cluster import Cluster
from confluent_kafka import Consumer, KafkaError, Message, Producer

pytestmark = pytest.mark.timeout(300)
RECORDS = 50
FAILOVER_TIMEOUT_S = 60.0  # the default broker.session.timeout.ms is 9 s; a loaded 2-core machine needs more


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Write ``values`` to partition 0 with acks=all; fails the test unless every one is acknowledged."""
    failed: list[KafkaError] = []

    def report(err: KafkaError | None, _: Message) -> None:
        if err is not None:
            failed.append(err)

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    for value in values:
        producer.produce(topic, value, partition=0, on_delivery=report)
    assert producer.flush(60) == 0, "records still unacknowledged after 60 s"
    assert not failed, failed[:3]


def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(values) < expected and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                values.append(message.value())
    finally:
        consumer.close()
    return values


def batch(tag: str) -> list[bytes]:
    return [f"{tag}-{n}".encode() for n in range(RECORDS)]


@pytest.mark.parametrize("fault", ["sigkill", "sigstop"])
def test_a_faulted_leader_is_replaced_and_rejoins_without_losing_acknowledged_records(
    fault: str,
    cluster: Cluster,
    chaos_topic: Callable[..., str],
    request: pytest.FixtureRequest,
) -> None:
    topic = chaos_topic()
    bootstrap = cluster.stack.bootstrap
    produce(bootstrap, topic, batch("before"))
    leader = cluster.leader_of(topic, 0)

    faulted_at = time.monotonic()
    getattr(cluster, fault)(leader)
    new_leader = cluster.wait_new_leader(topic, 0, leader, FAILOVER_TIMEOUT_S)
    request.node.user_properties.append(("failover_s", round(time.monotonic() - faulted_at, 1)))
    assert new_leader in set(cluster.node_ids) - {leader}
    produce(bootstrap, topic, batch("during"))  # two replicas of three still satisfy min.insync.replicas

    if fault == "sigkill":
        assert not cluster.running(leader)
        cluster.restart(leader)
    else:
        cluster.sigcont(leader)
    cluster.wait_broker_registered(leader, 90)
    cluster.wait_in_sync(topic, 90)
    assert cluster.running(leader)

    # One partition and an idempotent producer: every acknowledged record, in order.
    assert consume_all(bootstrap, topic, 2 * RECORDS) == batch("before") + batch("during")
