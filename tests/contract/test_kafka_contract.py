"""What the loop relies on from its Kafka clients, held for the in-memory broker and the real one alike.

Each test runs against both backends (see conftest.py). The loop's unit tests use the in-memory broker; a
behaviour they depend on belongs here, so that the fake cannot drift from librdkafka.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from kafka_backends import Backend

from worker.runtime.clients import ConsumerClient, ProducerClient, membership

TIMEOUT_S = 30.0


def consumer_config(kafka: Backend, group: str, **extra: Any) -> dict[str, Any]:
    return kafka.config(**{
        "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "enable.auto.offset.store": False, "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky", "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500, **extra,
    })  # fmt: skip


def until(condition: Callable[[], bool], what: str, turn: Callable[[], object] = lambda: None) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        turn()


def drain(consumer: ConsumerClient, want: int) -> list[Message]:
    got: list[Message] = []
    until(lambda: len(got) >= want, f"{want} messages", lambda: got.extend(consumer.consume(100, 0.2)))
    return got


class Reports:
    """A delivery callback that keeps every (error, message) it is given."""

    def __init__(self) -> None:
        self.seen: list[tuple[KafkaError | None, Message]] = []

    def __call__(self, error: KafkaError | None, message: Message) -> None:
        self.seen.append((error, message))

    def wait(self, producer: ProducerClient, n: int) -> None:
        until(lambda: len(self.seen) >= n, f"{n} delivery reports", lambda: producer.poll(0.1))


def test_every_message_gets_its_delivery_report_and_is_read_back_in_order(kafka: Backend) -> None:
    topic = kafka.create_topic(2)
    producer = kafka.clients.producer(kafka.config(**{"enable.idempotence": True}))
    reports = Reports()
    for i in range(10):
        producer.produce(topic, b"v%d" % i, b"k", partition=i % 2, headers=[("h", b"%d" % i)],
                         on_delivery=reports)  # fmt: skip
    reports.wait(producer, 10)
    assert [e for e, _ in reports.seen] == [None] * 10
    by_partition = {p: [m.offset() for e, m in reports.seen if m.partition() == p] for p in (0, 1)}
    assert by_partition == {0: [0, 1, 2, 3, 4], 1: [0, 1, 2, 3, 4]}
    consumer = kafka.clients.consumer(consumer_config(kafka, f"g-{uuid.uuid4().hex}"))
    consumer.subscribe([topic])
    got = drain(consumer, 10)
    consumer.close()
    assert sorted((m.partition(), m.offset(), m.value(), m.key()) for m in got) == sorted(
        (i % 2, i // 2, b"v%d" % i, b"k") for i in range(10)
    )
    assert all(m.headers() == [("h", m.value()[1:])] for m in got)  # type: ignore[index]


def test_a_message_over_message_max_bytes_is_refused_at_produce(kafka: Backend) -> None:
    topic = kafka.create_topic()
    producer = kafka.clients.producer(kafka.config(**{"message.max.bytes": 10_000}))
    with pytest.raises(KafkaException) as raised:
        producer.produce(topic, b"x" * 20_000, partition=0)
    assert raised.value.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE


def test_a_full_local_queue_raises_buffer_error(kafka: Backend) -> None:
    topic = kafka.create_topic()
    producer = kafka.clients.producer(kafka.config(**{"queue.buffering.max.messages": 3, "linger.ms": 5000}))
    for _ in range(3):
        producer.produce(topic, b"v", partition=0)
    with pytest.raises(BufferError):
        producer.produce(topic, b"v", partition=0)
    assert len(producer) == 3
    assert producer.flush(TIMEOUT_S) == 0


def test_a_record_over_the_topic_limit_fails_in_its_report_and_later_ones_go_through(kafka: Backend) -> None:
    topic = kafka.create_topic(max_message_bytes=2000)
    producer = kafka.clients.producer(kafka.config(**{"enable.idempotence": True}))
    reports = Reports()
    producer.produce(topic, b"x" * 5000, partition=0, on_delivery=reports)
    reports.wait(producer, 1)
    producer.produce(topic, b"small", partition=0, on_delivery=reports)
    reports.wait(producer, 2)
    errors = [None if e is None else e.code() for e, _ in reports.seen]
    assert errors == [KafkaError.MSG_SIZE_TOO_LARGE, None]
    assert [v for _, _, v in kafka.read_committed(topic)] == [b"small"]


def test_purging_the_queue_fails_what_was_not_sent(kafka: Backend) -> None:
    topic = kafka.create_topic()
    producer = kafka.clients.producer(kafka.config(**{"linger.ms": 5000}))
    reports = Reports()
    for _ in range(3):
        producer.produce(topic, b"v", partition=0, on_delivery=reports)
    producer.purge(in_queue=True, in_flight=False)
    reports.wait(producer, 3)
    assert [e.code() if e else None for e, _ in reports.seen] == [KafkaError._PURGE_QUEUE] * 3
    assert kafka.read_committed(topic) == []


def test_assignment_commits_pause_seek_and_watermarks(kafka: Backend) -> None:
    topic = kafka.create_topic(2)
    kafka.write(topic, 0, [b"a", b"b", b"c"])
    kafka.write(topic, 1, [b"d"])
    group = f"g-{uuid.uuid4().hex}"
    commits: list[tuple[KafkaError | None, list[TopicPartition]]] = []
    assigned: list[tuple[str, int]] = []
    consumer = kafka.clients.consumer(
        consumer_config(kafka, group, on_commit=lambda e, parts: commits.append((e, parts)))
    )
    consumer.subscribe(
        [topic], on_assign=lambda _c, parts: assigned.extend((p.topic, p.partition) for p in parts)
    )
    got = drain(consumer, 4)
    assert sorted(assigned) == [(topic, 0), (topic, 1)]
    assert sorted((m.partition(), m.offset()) for m in got) == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert consumer.get_watermark_offsets(TopicPartition(topic, 0), cached=False) == (0, 3)
    consumer.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
    consumer.commit(offsets=[TopicPartition(topic, 1, 1)], asynchronous=True)
    until(lambda: bool(commits), "the asynchronous commit's result", lambda: consumer.poll(0.1))
    assert commits[0][0] is None and [(p.partition, p.offset) for p in commits[0][1]] == [(1, 1)]
    assert [tp.offset for tp in consumer.committed([TopicPartition(topic, 0)], timeout=10)] == [2]
    kafka.settle()
    assert kafka.group_offsets(group, topic, 2) == {0: 2, 1: 1}
    consumer.pause([TopicPartition(topic, 0)])
    kafka.write(topic, 0, [b"e"])
    kafka.write(topic, 1, [b"f"])
    later = drain(consumer, 1)
    assert [(m.partition(), m.value()) for m in later] == [(1, b"f")]
    consumer.seek(TopicPartition(topic, 0, 1))  # allowed on a paused partition; read once resumed
    consumer.resume([TopicPartition(topic, 0)])
    again = drain(consumer, 3)
    expected = [(0, 1, b"b"), (0, 2, b"c"), (0, 3, b"e")]
    assert [(m.partition(), m.offset(), m.value()) for m in again] == expected
    consumer.close()


def test_a_second_member_takes_partitions_incrementally_and_close_revokes(kafka: Backend) -> None:
    topic = kafka.create_topic(4)
    group = f"g-{uuid.uuid4().hex}"
    owned: dict[str, set[int]] = {"a": set(), "b": set()}
    revoked_in_close: list[int] = []
    closing = [False]

    def callbacks(name: str) -> dict[str, Any]:
        def on_assign(_c: Any, parts: list[TopicPartition]) -> None:
            assert not owned[name] & {p.partition for p in parts}, "an assignment must be incremental"
            owned[name].update(p.partition for p in parts)

        def on_revoke(_c: Any, parts: list[TopicPartition]) -> None:
            owned[name].difference_update(p.partition for p in parts)
            if closing[0]:
                revoked_in_close.extend(p.partition for p in parts)

        return {"on_assign": on_assign, "on_revoke": on_revoke}

    first = kafka.clients.consumer(consumer_config(kafka, group))
    first.subscribe([topic], **callbacks("a"))
    until(lambda: owned["a"] == {0, 1, 2, 3}, "the first member owning everything", lambda: first.poll(0.1))
    second = kafka.clients.consumer(consumer_config(kafka, group))
    second.subscribe([topic], **callbacks("b"))

    def both() -> None:
        first.poll(0.05)
        second.poll(0.05)

    until(lambda: len(owned["a"]) == 2 and len(owned["b"]) == 2, "two partitions each", both)
    assert owned["a"] | owned["b"] == {0, 1, 2, 3}
    closing[0] = True
    kept = set(owned["b"])
    second.close()
    assert sorted(revoked_in_close) == sorted(kept)
    until(lambda: owned["a"] == {0, 1, 2, 3}, "the first member owning all again", lambda: first.poll(0.1))
    first.close()


def test_a_commit_sent_across_a_rebalance_is_refused_and_goes_through_once_rejoined(kafka: Backend) -> None:
    """The worker's last commit on SIGTERM can meet a rebalance: Kafka refuses a commit whose generation the
    group has left (ILLEGAL_GENERATION, or REBALANCE_IN_PROGRESS while it completes; librdkafka does not
    retry it, #4908), the member keeps the partitions it was not asked to give up, and the same commit goes
    through once the member has polled its way into the new generation. A join is retried with a new
    member when one passes without a refused commit (the window is a round trip of the second join)."""
    topic = kafka.create_topic(4)
    group = f"g-{uuid.uuid4().hex}"
    owned: dict[str, set[int]] = {"a": set(), "b": set()}

    def tracked(name: str) -> dict[str, Any]:
        def on_assign(_c: Any, parts: list[TopicPartition]) -> None:
            owned[name].update(p.partition for p in parts)

        def on_revoke(_c: Any, parts: list[TopicPartition]) -> None:
            owned[name].difference_update(p.partition for p in parts)

        return {"on_assign": on_assign, "on_revoke": on_revoke}

    first = kafka.clients.consumer(consumer_config(kafka, group))
    first.subscribe([topic], **tracked("a"))
    until(lambda: owned["a"] == {0, 1, 2, 3}, "the first member owning everything", lambda: first.poll(0.1))
    refused: list[tuple[KafkaError, list[TopicPartition]]] = []
    offset = 0
    for _join in range(5):
        second = kafka.clients.consumer(consumer_config(kafka, group))
        second.subscribe([topic], **tracked("b"))
        while not refused and not (len(owned["a"]) == 2 and len(owned["b"]) == 2):
            first.poll(0.01)
            second.poll(0.01)
            offset += 1
            offsets = [TopicPartition(topic, p, offset) for p in sorted(owned["a"])]
            try:
                first.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                refused.append((exc.args[0], offsets))
        if refused:
            break
        second.close()
        until(lambda: len(owned["a"]) == 4, "the first member owning all again", lambda: first.poll(0.1))
    assert refused, "no commit was refused in 5 joins"
    error, offsets = refused[0]
    assert error.code() in (KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS), error
    kept = [tp for tp in offsets if tp.partition in owned["a"]]
    assert kept, f"the member gave up every partition it committed: {owned}"
    before = first.committed(kept, timeout=10)
    assert all(now.offset < tp.offset for now, tp in zip(before, kept, strict=True)), "it landed"

    def both() -> None:
        first.poll(0.05)
        second.poll(0.05)

    until(lambda: _commits(first, kept), "the refused commit going through", both)
    assert [tp.offset for tp in first.committed(kept, timeout=10)] == [tp.offset for tp in kept]
    second.close()
    first.close()


def _commits(consumer: ConsumerClient, offsets: list[TopicPartition]) -> bool:
    try:
        consumer.commit(offsets=offsets, asynchronous=False)
    except KafkaException:
        return False
    return True


def transactional(kafka: Backend, txn_id: str, timeout_ms: int = 10_000) -> ProducerClient:
    producer = kafka.clients.producer(
        kafka.config(**{"transactional.id": txn_id, "transaction.timeout.ms": timeout_ms})
    )
    producer.init_transactions(TIMEOUT_S)
    return producer


def test_transactions_hide_aborted_records_and_commit_offsets_with_the_outputs(kafka: Backend) -> None:
    source, sink = kafka.create_topic(), kafka.create_topic()
    kafka.write(source, 0, [b"in-0", b"in-1"])
    group = f"g-{uuid.uuid4().hex}"
    consumer = kafka.clients.consumer(consumer_config(kafka, group))
    consumer.subscribe([source])
    drain(consumer, 2)
    producer = transactional(kafka, f"t-{uuid.uuid4().hex}")
    producer.begin_transaction()
    producer.produce(sink, b"aborted", partition=0)
    producer.abort_transaction(TIMEOUT_S)
    producer.begin_transaction()
    producer.produce(sink, b"committed", partition=0)
    producer.send_offsets_to_transaction(
        [TopicPartition(source, 0, 2)], consumer.consumer_group_metadata(), TIMEOUT_S
    )
    producer.commit_transaction(TIMEOUT_S)
    assert [v for _, _, v in kafka.read_committed(sink)] == [b"committed"]
    kafka.settle()
    assert kafka.group_offsets(group, source, 1) == {0: 2}
    consumer.close()


def test_a_newer_producer_with_the_same_transactional_id_fences_the_older(kafka: Backend) -> None:
    topic = kafka.create_topic()
    txn_id = f"t-{uuid.uuid4().hex}"
    older = transactional(kafka, txn_id)
    transactional(kafka, txn_id)
    with pytest.raises(KafkaException) as raised:
        older.begin_transaction()
        older.produce(topic, b"zombie", partition=0)
        older.commit_transaction(TIMEOUT_S)
    error = raised.value.args[0]
    assert error.fatal() and error.code() == KafkaError._FENCED
    assert kafka.read_committed(topic) == []


def test_a_transaction_open_past_its_timeout_is_aborted_and_its_producer_fails(kafka: Backend) -> None:
    """What exactly-once renews its producer on: the coordinator aborts the transaction and bumps the
    epoch; the producer's next call fails with a fatal error, and a new producer with the id goes on."""
    topic = kafka.create_topic()
    txn_id = f"t-{uuid.uuid4().hex}"
    starved = transactional(kafka, txn_id, timeout_ms=1000)
    starved.begin_transaction()
    starved.produce(topic, b"too late", partition=0)
    starved.flush(TIMEOUT_S)
    kafka.time_out_transactions(1.0)
    with pytest.raises(KafkaException) as raised:
        starved.produce(topic, b"after the timeout", partition=0)
        starved.commit_transaction(TIMEOUT_S)
    assert raised.value.args[0].fatal()
    renewed = transactional(kafka, txn_id, timeout_ms=1000)
    renewed.begin_transaction()
    renewed.produce(topic, b"renewed", partition=0)
    renewed.commit_transaction(TIMEOUT_S)
    assert [v for _, _, v in kafka.read_committed(topic)] == [b"renewed"]


def test_a_transactional_commit_from_outside_the_group_is_taken_over_its_live_member(kafka: Backend) -> None:
    """Kafka takes TxnOffsetCommit with generation -1 and no member id whatever the group holds (older
    protocol versions send no group metadata): exactly-once must never send a consumer's metadata from
    outside the group, or a replica that lost its partitions commits over their new owner."""
    topic = kafka.create_topic()
    group = f"g-{uuid.uuid4().hex}"
    owner = kafka.clients.consumer(consumer_config(kafka, group))
    assigned: list[TopicPartition] = []
    owner.subscribe([topic], on_assign=lambda _c, parts: assigned.extend(parts))
    until(lambda: bool(assigned), "the owner's assignment", lambda: owner.consume(10, 0.2))
    outsider = kafka.clients.consumer(consumer_config(kafka, group))
    generation, member_id = membership(owner.consumer_group_metadata())
    assert generation >= 1 and member_id
    assert membership(outsider.consumer_group_metadata()) == (-1, "")
    producer = transactional(kafka, f"t-{uuid.uuid4().hex}")
    producer.begin_transaction()
    producer.produce(topic, b"from outside", partition=0)
    producer.send_offsets_to_transaction(
        [TopicPartition(topic, 0, 42)], outsider.consumer_group_metadata(), TIMEOUT_S
    )
    producer.commit_transaction(TIMEOUT_S)
    kafka.settle()
    assert kafka.group_offsets(group, topic, 1) == {0: 42}
    outsider.close()
    owner.close()
