"""The consumer group's callbacks: partitions assigned, revoked, lost.

The loop subscribes with ``Rebalance``'s methods; librdkafka calls them inside the loop's ``consume``/``poll``
(so on its thread, between two steps of a turn) and from ``close``. A revoke blocks up to
``revoke_budget_ms`` (at-least-once: flushing outputs); none raises.

On revoke, in order:
  1. the unprocessed messages of the revoked partitions are dropped (nothing was produced for them), and
     what the same ``consume`` returned of them is dropped too (``Intake.revoke``);
  2. at-least-once, unless the breaker is open or the worker failed: in-flight outputs are flushed within
     ``revoke_budget_ms`` and what is delivered is committed (``DeliveryMode.release``);
  3. the partitions are released: their commit points and breaker counts are forgotten.
On lost partitions, steps 1 and 3: in-flight work is forgotten without a commit.
On assign, a partition starts with no history (commit points, breaker counts), paused if the loop is (by
the loop's next turn: a pause in the callback, before librdkafka applies the assignment, can race it).
"""

from __future__ import annotations

import logging

from confluent_kafka import TopicPartition

from worker.runtime.clients import ConsumerClient
from worker.runtime.context import Context, DeliveryMode
from worker.runtime.intake import TP

log = logging.getLogger("worker.runtime")


class Rebalance:
    """Keeps the loop's ``assigned`` set, and what each part knows of a partition, in step with the group."""

    def __init__(self, ctx: Context, delivery: DeliveryMode) -> None:
        self.ctx = ctx
        self.delivery = delivery

    def on_assign(self, consumer: ConsumerClient, partitions: list[TopicPartition]) -> None:
        self.ctx.member_id = consumer.memberid() or ""
        fresh = {(tp.topic, tp.partition) for tp in partitions}
        self.delivery.forget(fresh)  # nothing known from an earlier ownership may be committed now
        self.ctx.breaker.forget(fresh)
        self.ctx.suspects.forget(fresh)
        self.ctx.assigned.update(fresh)
        self.ctx.metrics.rebalance("assign", len(partitions))
        self.publish()
        self.ctx.flow.added(partitions)  # paused after the callback, if the loop is paused
        log.info("partitions assigned", extra={"partitions": _names(partitions)})

    def on_revoke(self, _consumer: ConsumerClient, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self.ctx.intake.revoke(revoked)
        self.delivery.release(revoked)
        self._forget(revoked)
        self.ctx.metrics.rebalance("revoke", len(partitions))
        self.publish()
        log.info("partitions revoked", extra={"partitions": _names(partitions)})

    def on_lost(self, _consumer: ConsumerClient, partitions: list[TopicPartition]) -> None:
        lost = {(tp.topic, tp.partition) for tp in partitions}
        self.ctx.intake.revoke(lost)
        self._forget(lost)
        self.ctx.metrics.rebalance("lost", len(partitions))
        self.publish()
        log.warning("partitions lost: in-flight work dropped", extra={"partitions": _names(partitions)})

    def publish(self) -> None:
        """The number of partitions assigned, to the metrics and the readiness."""
        self.ctx.metrics.set_assigned(len(self.ctx.assigned))
        self.ctx.health.set_assigned(len(self.ctx.assigned))

    def _forget(self, partitions: set[TP]) -> None:
        """Partitions no longer ours: their offsets are not ours to commit, their counts not ours to keep."""
        self.delivery.forget(partitions)
        self.ctx.breaker.forget(partitions)
        self.ctx.suspects.forget(partitions)
        self.ctx.assigned.difference_update(partitions)


def _names(partitions: list[TopicPartition]) -> list[str]:
    return [f"{tp.topic}[{tp.partition}]" for tp in partitions]
