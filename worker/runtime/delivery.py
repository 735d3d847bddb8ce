"""At-least-once delivery: outputs produced with delivery reports, input offsets committed behind them.

``AtLeastOnce`` is the loop's delivery mode by default (its interface: ``worker.runtime.context``). On the
loop's thread; delivery reports, served by ``Producer.poll``, count each batch down. ``deliver`` does not
block, except while there are suspects: then it awaits each segment, up to ``AWAIT_S``. ``release`` and
``drain`` block within their budgets. An awaited segment whose outputs are not all acknowledged within
``AWAIT_S`` counts as failed (the loop rewinds). Raises only the sink's ``FatalError``.

The order of one batch:
  1. the loop processes the batch (decode, graph, encode): every message yields exactly one output, a score
     or a dead-letter record;
  2. every output is produced with the batch's delivery callback (``Sink``); the batch is tracked with the
     count of outputs it awaits (``CommitTracker``);
  3. delivery reports (served by ``Producer.poll``) count it down, and keep what failed;
  4. every ``commit_interval_ms``, the commit points of the batches delivered in order are committed, and
     offered again until the broker confirms them (a commit lost in a rebalance is sent again).
When an output fails (``worker.runtime.faults``), the loop rewinds instead of committing past it:
  1. librdkafka's queue is purged (nothing queued behind the failure is sent, so no partition's outputs can
     overtake it), the partitions are paused, the pending messages dropped;
  2. the loop keeps turning until every output in flight has its report;
  3. the points delivered before the first failed batch are committed; every partition of the failed and
     later batches is sought back to its first offset in them (what they delivered comes again: the
     duplicates of at-least-once, bounded by what was in flight);
  4. a record the broker refused (too large, invalid) becomes a suspect: on the replay it is produced alone,
     awaited, and if refused again dead-lettered with the broker's reason (``worker.runtime.suspects``);
  5. an output reported delivered with no offset (``tracker.IMPLICIT_ACK``) also purges what is in flight,
     and once every report is in, a new producer takes over before the seek: the old one's sequence
     numbers no longer match the broker's (a chaos run without this saw it go fatal with
     OUT_OF_ORDER_SEQUENCE_NUMBER); then as 6;
  6. any other failure is the broker side's: the partitions resume after a backoff (0.5 s doubling to 30 s),
     not ready meanwhile.
On a revoke, in-flight outputs are flushed within ``revoke_budget_ms`` and what is delivered is committed;
nothing is committed once the breaker is open or the worker failed. On SIGTERM, the same within
``shutdown_budget_ms``, and a last commit the group refused (a rebalance under way) is sent again until taken.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from worker.runtime import faults
from worker.runtime.context import Context, DeliveryMode, merge_min
from worker.runtime.intake import TP
from worker.runtime.pipeline import Meta, Processed
from worker.runtime.sink import Backlog, Outputs
from worker.runtime.suspects import coordinates, replace_refused
from worker.runtime.tracker import IMPLICIT_ACK, CommitTracker, Failure, InFlight

log = logging.getLogger("worker.runtime")
AWAIT_S = 30.0  # an isolated record's outputs must be acknowledged within this
RECOMMIT_EVERY_S = 0.1  # on SIGTERM, a refused last commit is sent again this often, within the budget


class AtLeastOnce(DeliveryMode):
    """Tracks every segment's outputs, commits the points they delivered, rewinds after a failure."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.tracker = CommitTracker()
        self.backlog: Backlog | None = None  # the current batch's outputs librdkafka's queue had no room for
        self._rewind_extra: dict[TP, int] = {}  # first offsets of what was consumed and dropped unproduced
        self._delivered_at_rewind: int | None = None
        self._renew_after_rewind = False  # an implicit ack: the producer is replaced before the seek
        self._last_commit = time.monotonic()

    def pump(self) -> None:
        if self.backlog is not None:
            self.backlog = self.ctx.sink.resume(self.backlog)

    def holding(self) -> bool:
        return self.rewinding or self.backlog is not None or self.resume_at is not None

    def outstanding(self) -> int:
        return self.tracker.outstanding

    def waiting_since(self) -> float | None:
        return self.tracker.waiting_since()

    def deliver(self, segment: list[Message], meta: Meta, result: Processed, isolated: bool) -> bool:
        """Admit the segment to the breaker and produce it; False when nothing more of the batch may go."""
        ctx = self.ctx
        if not ctx.admit(meta, result):
            return False
        if ctx.settings.unsafe_commit_on_receipt:
            self.backlog = ctx.sink.send(segment, meta, result, None)
            return True
        in_flight = InFlight(dict(meta.commit_points), dict(meta.first_offsets))
        self.tracker.track(in_flight)
        outputs = ctx.sink.outputs(segment, meta, result)
        in_flight.outputs = outputs
        backlog = ctx.sink.resume(Backlog(outputs, 0, in_flight))
        if ctx.suspects:  # every segment awaited: a suspect must not overtake nor be overtaken
            self._await(backlog, in_flight)
            if isolated:
                self._settle_suspect(segment[0], outputs, in_flight)
            return not in_flight.failures
        self.backlog = backlog
        return True

    def unproduced(self, segments: list[list[Message]]) -> None:
        for later in segments:  # consumed, not produced: read again after the rewind
            merge_min(self._rewind_extra, Meta.of(later).first_offsets)

    def _await(self, backlog: Backlog | None, in_flight: InFlight) -> None:
        """Hand every output to librdkafka and serve reports until each is acknowledged. Not all of them
        within ``AWAIT_S`` is a failure of the batch (the loop rewinds; an output may not be overtaken)."""
        deadline = time.monotonic() + AWAIT_S
        try:
            self.ctx.push(backlog, AWAIT_S, transactional=False)
        except KafkaException as exc:  # the queue stayed full: nothing after may go first
            in_flight.refused(Failure(exc.args[0], "", None, None))
            return
        while in_flight.outstanding > 0 and time.monotonic() < deadline:
            self.ctx.health.beat()
            self.ctx.producer.poll(0.05)
        if in_flight.outstanding > 0:
            late = KafkaError(KafkaError._TIMED_OUT, f"outputs not acknowledged within {AWAIT_S:.0f} s")
            in_flight.refused(Failure(late, "", None, None))

    def _settle_suspect(self, message: Message, outputs: Outputs, in_flight: InFlight) -> None:
        """A suspect's output went out alone: delivered, it is cleared; refused again as a record, its
        replacement goes (a score's dead letter, a truncated dead letter); anything else rewinds."""
        reason = replace_refused(self.ctx.sink, outputs, in_flight.failures)
        if reason is not None:
            in_flight.failures.clear()
            log.warning("the broker refused a record's output: sending its replacement",
                        extra={"record": list(coordinates(message)), "error": reason})  # fmt: skip
            self._await(self.ctx.sink.resume(Backlog(outputs, 0, in_flight)), in_flight)
        if not in_flight.failures and in_flight.outstanding <= 0:
            self.ctx.suspects.remove(message)

    # --- committing and rewinding -----------------------------------------------------------------------

    def settle(self, force: bool = False) -> None:
        """Commit, per assigned partition, the point its delivered outputs reached, unless confirmed; when
        an output failed, start rewinding instead of going on."""
        ctx = self.ctx
        if self.tracker.failing() and not self.rewinding:
            self._start_rewind()
        if self._delivered_at_rewind is not None and self.tracker.delivered > self._delivered_at_rewind:
            self._delivered_at_rewind = None  # a batch went through since: outputs flow again
            self.retry.reset()
            ctx.health.set_outputs_down(None)
        now = time.monotonic()
        if ctx.breaker.open or (
            not force and (now - self._last_commit) * 1000 < ctx.settings.commit_interval_ms
        ):
            return
        self._last_commit = now
        self._commit_delivered(ctx.assigned, wait=force)

    def _start_rewind(self) -> None:
        self.rewinding = True
        self._renew_after_rewind = any(f.error is IMPLICIT_ACK for f in self.tracker.failures())
        # In flight too after an implicit ack: the producer is given up, what it holds is sent again.
        self.ctx.producer.purge(in_queue=True, in_flight=self._renew_after_rewind)
        self.backlog = None  # its batch is tracked: it is rewound with the others
        merge_min(self._rewind_extra, self.ctx.intake.drop())
        failure = self.tracker.failures()[0]
        reason = f"{failure.topic}: {faults.describe(failure.error)}"
        log.warning("an output was not delivered: rewinding", extra={"error": reason})
        self.ctx.health.set_outputs_down(reason)
        self.ctx.flow.pause()

    def finish_rewind(self) -> None:
        """Once every output in flight has its report: commit what was delivered, seek back the rest."""
        if self.tracker.outstanding > 0:
            return
        ctx = self.ctx
        points, failed, outputs = self.tracker.rewind()
        refused = sum(ctx.suspects.note(out, fails) for out, fails in outputs)
        merge_min(points, self._rewind_extra)
        self._rewind_extra = {}
        self.settle(force=True)
        if self._renew_after_rewind:
            self._renew_after_rewind = False
            self._renew_producer()
        ctx.seek(points)
        ctx.sink.forget_output_partitions()  # the topic may have been re-created
        delay = self.retry.next() if len(failed) > refused else 0.0
        ctx.metrics.rewound()
        extra = {"partitions": len(points), "suspects": len(ctx.suspects), "retry_in_s": delay}
        log.warning("rewound to the first undelivered outputs", extra=extra)
        self.rewinding = False
        self._delivered_at_rewind = self.tracker.delivered
        self.resume_at = time.monotonic() + delay

    def _renew_producer(self) -> None:
        """Give the producer up for a new one (see 5. in the module docstring). Every output it held has
        its report, so nothing is lost with it."""
        log.warning("an output was implicitly acknowledged: a new producer takes over",
                    extra={"cause": "implicit_ack"})  # fmt: skip
        self.ctx.metrics.producer_renewed("implicit_ack")
        self.ctx.renew_producer()

    def _commit_delivered(self, partitions: Iterable[TP], *, wait: bool) -> None:
        points = self.tracker.to_commit(partitions)
        if points and not self.ctx.settings.unsafe_commit_on_receipt:
            self._commit([TopicPartition(t, p, o) for (t, p), o in points.items()], wait=wait)

    def _commit(self, offsets: list[TopicPartition], *, wait: bool) -> None:
        consumer = self.ctx.consumer
        started = time.perf_counter()
        try:
            if wait:
                self.confirm(consumer.commit(offsets=offsets, asynchronous=False))
            else:
                consumer.commit(offsets=offsets, asynchronous=True)  # confirmed through the loop's on_commit
        except KafkaException as exc:
            log.warning("commit failed; the next one sends it again", extra={"error": str(exc.args[0])})
        self.ctx.metrics.observe_commit(time.perf_counter() - started)

    def confirm(self, partitions: list[TopicPartition] | None) -> None:
        """Remember what the broker took, of the partitions still assigned."""
        for tp in partitions or ():
            key = (tp.topic, tp.partition)
            if tp.error is None and tp.offset >= 0 and key in self.ctx.assigned:
                self.tracker.confirm(key, tp.offset)

    # --- rebalances and shutdown ------------------------------------------------------------------------

    def release(self, partitions: set[TP]) -> None:
        if self.ctx.breaker.open or self.ctx.failed:
            return
        self._flush(self.ctx.settings.revoke_budget_ms / 1000)
        self._commit_delivered(partitions, wait=True)

    def forget(self, partitions: set[TP]) -> None:
        self.tracker.forget(partitions)
        for tp in partitions:
            self._rewind_extra.pop(tp, None)

    def drain(self, budget_s: float) -> None:
        deadline = time.monotonic() + budget_s
        self._flush(budget_s)
        self.settle(force=True)
        self._commit_again(deadline)

    def _commit_again(self, deadline: float) -> None:
        """A last commit the group refused (sent across a rebalance: ILLEGAL_GENERATION or
        REBALANCE_IN_PROGRESS; librdkafka does not retry it, and ``close``'s revoke meets the same refusal)
        goes again once the consumer, polled, has rejoined. Without it, a replica stopped while another
        joins (a rolling restart) leaves its last commit interval to be answered again. Nothing more is
        consumed: the partitions are paused; what a poll still returns stays pending, never processed."""
        ctx = self.ctx
        if not self.tracker.to_commit(ctx.assigned):
            return
        log.info("the last commit was not taken: polling the group and sending it again")
        if not ctx.flow.paused:
            ctx.flow.pause()
        while not ctx.breaker.open and time.monotonic() < deadline:
            ctx.health.beat()
            ctx.intake.fetch(paused=True)  # the group's events: the rejoin, a revoke (which commits), results
            ctx.producer.poll(RECOMMIT_EVERY_S)
            if not self.tracker.to_commit(ctx.assigned):
                log.info("nothing delivered is left uncommitted")  # taken, or its partitions revoked or lost
                return
            self._commit_delivered(ctx.assigned, wait=True)

    def _flush(self, budget_s: float) -> None:
        """Serve deliveries until every output is acknowledged, one failed, or the budget is spent."""
        deadline = time.monotonic() + budget_s
        while self.tracker.outstanding > 0 and not self.tracker.failing() and time.monotonic() < deadline:
            self.ctx.health.beat()
            self.pump()
            self.ctx.producer.poll(0.05)
