"""Exactly-once delivery: each segment of a batch is one transaction holding its outputs and input offsets.

``Transactions`` is the loop's delivery mode with ``delivery = "exactly-once"`` (its interface:
``worker.runtime.context``). On the loop's thread; ``deliver`` blocks until its transaction is committed or
aborted (librdkafka's calls wait up to 30 s each, the outputs' hand-over up to ``transaction_timeout_ms``).
Raises ``FatalError`` naming the cause for a fatal or non-abortable error (fenced: another producer has this
replica's transactional id); the loop stops with a non-zero exit.

One segment, in order:
  1. the breaker's counts of its partitions are kept (``snapshot``), then it is admitted;
  2. begin, hand every output to librdkafka and serve its reports until it holds none (beating the
     heartbeat; not ready after ``OUTPUT_STALL_S``), ``send_offsets_to_transaction`` with its commit points,
     commit (the last two again after a retriable error, such as a timeout); an output reported delivered
     with no offset (``IMPLICIT_ACK``: never written, and librdkafka would commit without it) is 5.;
  3. an isolated suspect refused again as a record: abort, replace its output (``replace_refused``), and
     commit the replacement in a transaction of its own;
  4. any other abortable error: abort, take the segment back from the breaker (``restore``), note the records
     the broker refused as suspects (each then scored in a transaction of its own, so one record cannot make
     the same batch abort forever), seek the segment's partitions and the pending messages back to their
     first offsets, and back off (0.5 s doubling to 30 s; the first abort without a refused record, such as a
     rebalance moving the group on, is retried at once); three aborts in a row: not ready;
  5. an implicit ack (the producer's sequence numbers no longer match the broker's, see
     ``worker.runtime.delivery``), a fatal desynchronisation (``faults.DESYNCHRONISED``: librdkafka's
     OUT_OF_ORDER_SEQUENCE_NUMBER after a leader bounce), a fatal error of a transaction open longer than
     ``transaction_timeout_ms``
     (the coordinator aborted it and bumped the producer's epoch: a replica stopped or starved that long, or
     cut off from the brokers),
     a ``send_offsets_to_transaction`` still blocked at the transaction's deadline (librdkafka #5456, #5511,
     see ``worker.runtime.watchdog``), an abort that fails, or one due while outputs are still unsent
     (librdkafka can crash on it, see ``_holding_outputs``): the producer is given up and a new one with
     the same transactional id takes over (its ``init_transactions`` fences the old one and aborts what it
     had open), then the segment is rewound as in 4. Any other fatal error stops the worker: a young
     transaction fenced means another live producer has this id;
  6. what the batch had after a segment that was not committed is read again too (``unproduced``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from worker.errors import FatalError
from worker.runtime import faults
from worker.runtime.clients import ConsumerClient, membership
from worker.runtime.context import Context, DeliveryMode, merge_min
from worker.runtime.intake import TP
from worker.runtime.metrics import RenewalKind
from worker.runtime.pipeline import Meta, Processed
from worker.runtime.sink import Backlog, Outputs
from worker.runtime.suspects import replace_refused
from worker.runtime.tracker import IMPLICIT_ACK, InFlight
from worker.runtime.watchdog import Stuck, Watchdog

log = logging.getLogger("worker.runtime")
MIN_OFFSETS_WAIT_S = 5.0  # send_offsets_to_transaction may wait this long past the transaction's budget
OFFSETS_GRACE_S = 2.0  # and this long past librdkafka's own cap, so that its timeout comes first
MAX_STUCK = 8  # producers given up with a call still blocked: past this, stop (a restart frees them)


class Transactions(DeliveryMode):
    """One transaction per segment; ``fatal_reason`` names an error that stops the worker."""

    def __init__(self, ctx: Context, fatal_reason: Callable[[Exception], str]) -> None:
        super().__init__(ctx)
        self._fatal_reason = fatal_reason
        self._watchdog = Watchdog(ctx.health.beat)
        self._began = time.monotonic()  # when the current transaction began

    def start(self) -> None:
        self.ctx.producer.init_transactions(30)  # fences any older producer with this transactional id
        log.info("transactions initialised", extra={"transactional_id": self.ctx.settings.transactional_id})

    def outstanding(self) -> int:
        return len(self.ctx.producer)

    def deliver(self, segment: list[Message], meta: Meta, result: Processed, isolated: bool) -> bool:
        """One transaction: the segment's outputs and its input offsets, committed together or not at all.
        False when it was aborted (the batch is rewound) or the breaker tripped."""
        ctx = self.ctx
        taken = ctx.breaker.snapshot(meta.commit_points)
        if not ctx.admit(meta, result):
            return False
        outputs = ctx.sink.outputs(segment, meta, result)
        in_flight = InFlight({}, {}, outputs=outputs)  # only to keep the failed outputs' reports
        try:
            try:
                self._commit(outputs, in_flight, meta)
            except KafkaException as exc:
                if not (isolated and _abortable(exc) and self._replaced(outputs, in_flight)):
                    raise
                # Alone, the suspect was refused again: abort, and commit its replacement instead.
                self._abort_transaction()
                ctx.metrics.aborted()
                in_flight = InFlight({}, {}, outputs=outputs)
                self._commit(outputs, in_flight, meta)
        except KafkaException as exc:
            self._failed(exc, meta, outputs, in_flight, taken)
            return False
        except Stuck as exc:
            self._renew("stuck", str(exc), meta, taken, usable=False)
            return False
        except ImplicitAck as exc:
            self._renew("implicit_ack", str(exc), meta, taken, usable=True)
            return False
        if isolated:
            ctx.suspects.remove(segment[0])
        if self.retry.failing:
            self.retry.reset()
            ctx.health.set_outputs_down(None)
        return True

    def unproduced(self, segments: list[list[Message]]) -> None:
        """The segment that was not committed and the rest of its batch, all consumed: read them again (a
        partition only in a later segment would otherwise be committed past them by the next batch)."""
        points: dict[TP, int] = {}
        for segment in segments:
            merge_min(points, Meta.of(segment).first_offsets)
        self.ctx.seek(points)

    def _commit(self, outputs: Outputs, in_flight: InFlight, meta: Meta) -> None:
        ctx = self.ctx
        started = time.perf_counter()
        self._began = time.monotonic()
        ctx.producer.begin_transaction()
        backlog = ctx.sink.resume(Backlog(outputs, 0, in_flight))
        budget_s = ctx.settings.transaction_timeout_ms / 1000
        ctx.push(backlog, budget_s, transactional=True)
        ctx.await_acks(budget_s)  # the loop beats meanwhile; commit_transaction would block blind
        if any(f.error is IMPLICIT_ACK for f in in_flight.failures):  # librdkafka would commit without them
            raise ImplicitAck(faults.describe(IMPLICIT_ACK))
        offsets = [TopicPartition(t, p, o) for (t, p), o in meta.commit_points.items()]
        # librdkafka caps the call at the transaction's budget (then a retriable timeout, and an abort), and
        # past it the coordinator aborts the transaction anyway: a call blocked longer than that is stuck.
        deadline = max(self._began + budget_s + OFFSETS_GRACE_S,
                       time.monotonic() + min(MIN_OFFSETS_WAIT_S, budget_s))  # fmt: skip
        producer, group = ctx.producer, _member_metadata(ctx.consumer)
        send = lambda: producer.send_offsets_to_transaction(offsets, group, 30)  # noqa: E731
        _retrying(lambda: self._watchdog.call("send_offsets_to_transaction", send, deadline))
        _retrying(lambda: ctx.producer.commit_transaction(30))
        ctx.metrics.observe_commit(time.perf_counter() - started)

    def _replaced(self, outputs: Outputs, in_flight: InFlight) -> bool:
        """An isolated record's outputs were refused as records: replace them; False if not that case."""
        self.ctx.producer.poll(0)  # the refused outputs' reports
        return replace_refused(self.ctx.sink, outputs, in_flight.failures) is not None

    def _failed(
        self, exc: KafkaException, meta: Meta, outputs: Outputs, in_flight: InFlight, taken: dict[TP, Any]
    ) -> None:
        """A fatal error: see ``_fatal``. An abortable one, or a retriable one that outlasted its retries (a
        timeout): abort and rewind the segment. Any other stops the worker."""
        error: KafkaError = exc.args[0]
        if error.fatal():
            self._fatal(exc, meta, taken)
        elif error.txn_requires_abort() or error.retriable():
            self._abort(error, meta, outputs, in_flight, taken)
        else:
            raise FatalError(self._fatal_reason(exc)) from exc

    def _fatal(self, exc: KafkaException, meta: Meta, taken: dict[TP, Any]) -> None:
        """A fatal error of a transaction open past ``transaction_timeout_ms``: the coordinator aborted it
        and bumped the epoch, so a new producer takes over, as after a desynchronised one (no one else has
        the id). Of a younger one: another live producer has this transactional id (or worse), and the
        worker stops."""
        error: KafkaError = exc.args[0]
        if error.code() in faults.DESYNCHRONISED:
            self._renew("desynchronised", faults.describe(error), meta, taken, usable=True)
            return
        open_s = time.monotonic() - self._began
        timeout_s = self.ctx.settings.transaction_timeout_ms / 1000
        if open_s < timeout_s:
            raise FatalError(self._fatal_reason(exc)) from exc
        why = (f"the transaction was open {open_s:.1f} s, past transaction_timeout_ms ({timeout_s:g} s): "
               f"the coordinator aborted it ({faults.describe(error)})")  # fmt: skip
        self._renew("timed_out", why, meta, taken, usable=True)

    def _renew(self, cause: RenewalKind, why: str, meta: Meta, taken: dict[TP, Any], *, usable: bool) -> None:
        """Give the producer up for a new one with the same transactional id, then rewind the segment.
        ``usable``: its calls still return, so what it holds is failed and reported first."""
        ctx = self.ctx
        if self._watchdog.stuck() >= MAX_STUCK:
            raise FatalError(f"{MAX_STUCK} producers given up with a librdkafka call still blocked: {why}")
        old = ctx.producer
        if usable:
            try:
                old.purge(in_queue=True, in_flight=True)
                old.poll(0)  # the purged outputs' reports
            except KafkaException as exc:  # a producer in a fatal state raises it from poll: it is left
                log.info("the producer given up raised", extra={"error": str(exc.args[0])})
        log.warning("a new producer takes over", extra={"cause": cause, "reason": why})
        ctx.metrics.producer_renewed(cause)
        producer = ctx.renew_producer()
        # Fences the old one, aborting what it had open; the coordinator may itself be failing over, so
        # this is retried after a timeout, the heartbeat beaten meanwhile.
        start = lambda: producer.init_transactions(30)  # noqa: E731
        _retrying(lambda: self._watchdog.call("init_transactions", start, time.monotonic() + 35))
        ctx.breaker.restore(taken)
        self._rewind(meta, self._retry_delay(refused=False))

    def _abort(
        self, error: KafkaError, meta: Meta, outputs: Outputs, in_flight: InFlight, taken: dict[TP, Any]
    ) -> None:
        """Abort, take the segment back from the breaker, note refused records, rewind with backoff. An
        abort that fails, or one librdkafka could crash on, leaves the transaction to a new producer (whose
        init_transactions aborts it)."""
        ctx = self.ctx
        if self._holding_outputs():
            why = f"{len(ctx.producer)} outputs still unsent at the abort ({faults.describe(error)})"
            self._renew("outputs_held", why, meta, taken, usable=True)
            return
        try:
            self._abort_transaction()
        except KafkaException as exc:
            if exc.args[0].fatal():
                self._fatal(exc, meta, taken)
            else:
                why = f"abort_transaction failed: {faults.describe(exc.args[0])}"
                self._renew("abort_failed", why, meta, taken, usable=True)
            return
        except Stuck as exc:
            self._renew("abort_failed", str(exc), meta, taken, usable=False)
            return
        ctx.producer.poll(0)  # the aborted outputs' reports
        ctx.breaker.restore(taken)
        ctx.metrics.aborted()
        refused = ctx.suspects.note(outputs, in_flight.failures)
        delay = self._retry_delay(refused=bool(refused))
        log.warning("transaction aborted: rewinding the batch",
                    extra={"error": faults.describe(error), "retry_in_s": delay})  # fmt: skip
        if self.retry.attempts >= 3:
            ctx.health.set_outputs_down(f"{self.retry.attempts} transactions aborted in a row: "
                                        f"{faults.describe(error)}")  # fmt: skip
        self._rewind(meta, delay)

    def _holding_outputs(self) -> bool:
        """Outputs still unsent: an AddPartitionsToTxn request may be outstanding, and librdkafka (2.16)
        aborts the process when its answer arrives after abort_transaction completed (it asserts
        ``txn_req_cnt > 0`` before it checks whether the answer is outdated)."""
        return len(self.ctx.producer) > 0

    def _abort_transaction(self) -> None:
        """abort_transaction, again after a timeout (the coordinator may be failing over), beating the
        heartbeat meanwhile."""
        producer = self.ctx.producer
        abort = lambda: producer.abort_transaction(30)  # noqa: E731
        _retrying(lambda: self._watchdog.call("abort_transaction", abort, time.monotonic() + 35))

    def _retry_delay(self, *, refused: bool) -> float:
        """The backoff before the segment is tried again (see 4. in the module docstring)."""
        delay = self.retry.next() if self.retry.attempts or not refused else 0.0
        if not refused and self.retry.attempts == 1:
            delay = 0.0  # one abort (a rebalance moved the group on) is retried at once
        return delay

    def _rewind(self, meta: Meta, delay: float) -> None:
        """Consume the segment and the pending messages again from their first offsets, after ``delay``."""
        points = dict(meta.first_offsets)
        merge_min(points, self.ctx.intake.drop())
        self.ctx.seek(points)
        self.resume_at = time.monotonic() + delay


class ImplicitAck(Exception):
    """An output of the transaction was reported delivered with no offset: it was never written."""


def _member_metadata(consumer: ConsumerClient) -> Any:
    """The consumer's group metadata, if it is a member of the group's current generation; otherwise an
    abortable error. Kafka takes a transactional commit with generation -1 and no member id whatever the
    group holds, and librdkafka hands out exactly that between the coordinator's errors (it expired the
    member) and the loop hearing of it at a poll: the commit would land over the partitions' new owner."""
    metadata = consumer.consumer_group_metadata()
    generation, member_id = membership(metadata)
    if generation < 1 or not member_id:
        why = f"the consumer is outside the group (generation {generation}, member id {member_id!r})"
        raise KafkaException(KafkaError(KafkaError.UNKNOWN_MEMBER_ID, why, txn_requires_abort=True))
    return metadata


def _retrying(call: Callable[[], object], attempts: int = 3) -> None:
    """A transactional call, again after a retriable error (a timeout): librdkafka allows the same call."""
    for attempt in range(attempts):
        try:
            call()
            return
        except KafkaException as exc:
            if not exc.args[0].retriable() or attempt == attempts - 1:
                raise
            log.warning("retrying a transactional call", extra={"error": str(exc.args[0])})


def _abortable(exc: KafkaException) -> bool:
    error: KafkaError = exc.args[0]
    return bool(error.txn_requires_abort()) and not error.fatal()
