"""Flow control against a consumer that behaves as librdkafka does when a resume races a queued pause.

librdkafka applies ``pause`` asynchronously and skips a ``resume`` of a partition whose pause is not
applied yet; the pause, applied after, then holds the partition for good (issue #5591; seen in the chaos
suite: exactly-once replicas whose newly assigned partitions never started fetching). ``SkippingConsumer``
does the same for the first resume of each partition it is told to.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import TopicPartition

from worker.runtime import flow
from worker.runtime.flow import Flow
from worker.runtime.health import Health
from worker.runtime.metrics import Metrics


class SkippingConsumer:
    """Pause and resume calls on a set of paused partitions; the first resume of ``skip`` is lost."""

    def __init__(self, skip: set[tuple[str, int]]) -> None:
        self.paused: set[tuple[str, int]] = set()
        self.skip = set(skip)
        self.calls: list[tuple[str, list[tuple[str, int]]]] = []

    def pause(self, partitions: list[TopicPartition]) -> None:
        names = [(tp.topic, tp.partition) for tp in partitions]
        self.calls.append(("pause", names))
        self.paused.update(names)

    def resume(self, partitions: list[TopicPartition]) -> None:
        names = [(tp.topic, tp.partition) for tp in partitions]
        self.calls.append(("resume", names))
        for name in names:
            if name in self.skip:
                self.skip.discard(name)  # librdkafka saw no applied pause: nothing done
            else:
                self.paused.discard(name)


def make(consumer: SkippingConsumer, assigned: set[tuple[str, int]]) -> Flow:
    return Flow(consumer, assigned, Metrics(), Health(30.0), max_in_flight=100)  # type: ignore[arg-type]


def test_a_resume_librdkafka_skipped_is_issued_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flow, "RESUME_AGAIN_S", 0.05)
    consumer = SkippingConsumer(skip={("in", 1)})
    subject = make(consumer, {("in", 0), ("in", 1)})
    subject.update(0, holding=True, rewinding=False, waiting_since=None)
    assert consumer.paused == {("in", 0), ("in", 1)}
    subject.update(0, holding=False, rewinding=False, waiting_since=None)
    assert consumer.paused == {("in", 1)}, "the model skips the first resume of partition 1"
    deadline = time.monotonic() + 2
    while consumer.paused and time.monotonic() < deadline:
        subject.update(0, holding=False, rewinding=False, waiting_since=None)
        time.sleep(0.01)
    assert consumer.paused == set(), "partition 1 stayed paused: the skipped resume was never repeated"


def test_partitions_assigned_while_paused_are_paused_after_the_callback() -> None:
    consumer = SkippingConsumer(skip=set())
    assigned = {("in", 0)}
    subject = make(consumer, assigned)
    subject.update(0, holding=True, rewinding=False, waiting_since=None)
    # the rebalance callback: the loop's set grows and the flow is told, nothing is paused yet
    assigned.add(("in", 1))
    subject.added([TopicPartition("in", 1)])
    assert ("in", 1) not in consumer.paused, "paused inside the callback, before the assignment applies"
    subject.update(0, holding=True, rewinding=False, waiting_since=None)
    assert ("in", 1) in consumer.paused
    subject.update(0, holding=False, rewinding=False, waiting_since=None)
    assert consumer.paused == set()


def test_partitions_assigned_while_running_are_left_alone() -> None:
    consumer = SkippingConsumer(skip=set())
    assigned = {("in", 0)}
    subject = make(consumer, assigned)
    subject.update(0, holding=False, rewinding=False, waiting_since=None)
    assigned.add(("in", 1))
    subject.added([TopicPartition("in", 1)])
    subject.update(0, holding=False, rewinding=False, waiting_since=None)
    assert not any(kind == "pause" for kind, _ in consumer.calls)
