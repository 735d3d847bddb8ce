"""What the loop shares with its delivery mode, and the interface every delivery mode presents to the loop.

The loop (``worker.runtime.loop``) builds one ``Context`` and one ``DeliveryMode``: ``AtLeastOnce``
(``worker.runtime.delivery``) or ``Transactions`` (``worker.runtime.transactions``). Everything here runs on
the loop's thread: delivery reports and rebalance callbacks too, which librdkafka serves inside the loop's
``poll``/``consume``/``flush``. The loop calls the mode, in one turn:
  1. ``pump`` before consuming: hand on what librdkafka's queue had no room for;
  2. after consuming, the first that applies: while ``rewinding``, ``finish_rewind``; the registry's wait
     (the loop's own); while ``backing_off``, nothing; unless ``holding``, a batch: ``deliver`` per segment,
     in order, until one returns False (or a rewind starts), then ``unproduced`` with the rest;
  3. ``settle`` after serving delivery reports: commit what was delivered, or start a rewind;
  4. ``outstanding``, ``holding`` and ``rewinding`` for the flow control (``worker.runtime.flow``).
Around it: ``start`` before subscribing; ``confirm`` with the commits the broker took; on a revoke
``release`` (deliver and commit what it can) then ``forget``, on lost or assigned partitions ``forget``;
``drain`` when stopping. Only ``deliver``, ``release`` and ``drain`` may block (within their budgets); the
mode raises ``KafkaException`` or ``FatalError`` only for what must stop the worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from worker.runtime.backoff import Backoff
from worker.runtime.breaker import CircuitBreaker
from worker.runtime.clients import ConsumerClient, ProducerClient
from worker.runtime.config import Settings
from worker.runtime.flow import OUTPUT_STALL_S, Flow
from worker.runtime.health import Health
from worker.runtime.intake import TP, Intake
from worker.runtime.metrics import Metrics
from worker.runtime.pipeline import Meta, Processed
from worker.runtime.sink import Backlog, Sink
from worker.runtime.suspects import Suspects

log = logging.getLogger("worker.runtime")


@dataclass(eq=False)
class Context:
    """The loop's clients and parts a delivery mode works with; ``assigned`` is the loop's own set."""

    settings: Settings
    consumer: ConsumerClient
    producer: ProducerClient
    sink: Sink
    breaker: CircuitBreaker
    metrics: Metrics
    health: Health
    flow: Flow
    intake: Intake
    suspects: Suspects
    assigned: set[TP]
    renew_producer: Callable[[], ProducerClient]  # a new producer in place of ``producer``
    failed: bool = False  # after a fatal error nothing more is committed, not even on close
    # The group member id, taken in the assign callback (on the loop's thread: librdkafka's
    # consumer_group_metadata() from another thread waits for the consumer's poll to return).
    member_id: str = ""

    def admit(self, meta: Meta, result: Processed) -> bool:
        """Account a segment with the breaker; False (paused, not ready) when it tripped."""
        invalid = np.zeros(len(meta.topics), dtype=np.bool_)
        invalid[list(result.errors)] = True
        parts = meta.partitions
        if all(self.breaker.admit(t, parts[at], invalid[at]) for t, at in meta.groups):
            return True
        log.error("circuit breaker open: pausing, nothing more is produced or committed",
                  extra={"reason": self.breaker.reason})  # fmt: skip
        self.health.set_breaker_open(self.breaker.reason)
        self.metrics.breaker_open(True)
        self.flow.pause()
        return False

    def push(self, backlog: Backlog | None, budget_s: float, *, transactional: bool) -> None:
        """Hand a backlog to librdkafka, serving delivery reports (which make room) meanwhile. Raises a
        retriable ``KafkaException`` (abortable when ``transactional``) if the queue stays full that long."""
        deadline = time.monotonic() + budget_s
        while backlog is not None and time.monotonic() < deadline:
            self.health.beat()
            self.producer.poll(0.05)
            backlog = self.sink.resume(backlog)
        if backlog is not None:
            full = KafkaError(KafkaError._TIMED_OUT, "the producer's queue stayed full", retriable=True,
                              txn_requires_abort=transactional)  # fmt: skip
            raise KafkaException(full)

    def await_acks(self, budget_s: float) -> None:
        """Serve delivery reports until librdkafka holds nothing (each output acknowledged or failed), or
        ``budget_s``, beating the heartbeat; not ready while that takes longer than ``OUTPUT_STALL_S``.
        Exactly-once calls it before committing, so that the commit itself never waits on the broker."""
        started = time.monotonic()
        flagged = False
        while len(self.producer) > 0 and (now := time.monotonic()) - started < budget_s:
            self.health.beat()
            self.producer.poll(0.05)
            if not flagged and now - started > OUTPUT_STALL_S:
                flagged = True
                waiting = f"{len(self.producer)} outputs of a transaction waiting on the broker"
                self.health.set_outputs_down(f"{waiting} for {OUTPUT_STALL_S:.0f} s")
        if flagged and len(self.producer) == 0:
            self.health.set_outputs_down(None)

    def seek(self, points: dict[TP, int]) -> None:
        """Consume the assigned ones of ``points`` again from their offset."""
        for (topic, partition), offset in points.items():
            if (topic, partition) in self.assigned:
                self.consumer.seek(TopicPartition(topic, partition, offset))


class DeliveryMode:
    """The interface the loop drives (see the module docstring), with what both modes share: the backoff
    after a failure, during which the partitions stay paused. A mode overrides ``deliver`` and
    ``outstanding``, and the other calls it acts on (here, they do nothing)."""

    rewinding = False  # outputs failed: waiting for every report, then rewinding (at-least-once only)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.retry = Backoff()  # failing outputs and aborted transactions
        self.resume_at: float | None = None  # partitions stay paused until then (backoff after a failure)

    def start(self) -> None:
        """Before subscribing."""

    def pump(self) -> None:
        """At the start of a turn: hand on what librdkafka's queue had no room for."""

    def finish_rewind(self) -> None:
        """While ``rewinding``: rewind once every report is in."""

    def backing_off(self, now: float) -> bool:
        """True while a backoff after a failure runs (and at the turn it ends)."""
        if self.resume_at is None:
            return False
        if now >= self.resume_at:
            self.resume_at = None
        return True

    def holding(self) -> bool:
        """The partitions must stay paused whatever the load: the mode waits on something."""
        return self.resume_at is not None

    def deliver(self, segment: list[Message], meta: Meta, result: Processed, isolated: bool) -> bool:
        """Produce one segment of a batch; False when nothing more of the batch may go."""
        raise NotImplementedError

    def unproduced(self, segments: list[list[Message]]) -> None:
        """Segments of the batch consumed and not produced (a ``deliver`` returned False, or a rewind)."""

    def settle(self) -> None:
        """After the turn served delivery reports."""

    def outstanding(self) -> int:
        """Outputs handed to librdkafka and not yet acknowledged."""
        raise NotImplementedError

    def waiting_since(self) -> float | None:
        """When the oldest outputs still unacknowledged were handed over (the stall watch's clock); None when
        none are. Exactly-once awaits its outputs inside ``deliver``, and watches them there."""
        return None

    def confirm(self, partitions: list[TopicPartition] | None) -> None:
        """The broker took these commits (the consumer's commit results)."""

    def release(self, partitions: set[TP]) -> None:
        """``partitions`` are being revoked: deliver and commit what can be, within ``revoke_budget_ms``."""

    def forget(self, partitions: set[TP]) -> None:
        """``partitions`` were revoked, lost or assigned afresh: nothing known of them is ours now."""

    def drain(self, budget_s: float) -> None:
        """The worker stops: deliver and commit what was produced, within ``budget_s``."""


def merge_min(into: dict[TP, int], points: dict[TP, int]) -> None:
    """Per partition, the lower of the two offsets."""
    for tp, offset in points.items():
        into[tp] = min(offset, into.get(tp, offset))
