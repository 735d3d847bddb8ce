"""Workers with one fault put back on purpose: the negative controls of the loop's ordering tests.

Each class undoes one fix of the delivery path, the way the code was before it or the way it could regress.
A test run with one of them must fail (``xfail(strict=True)``): otherwise the test cannot tell the fixed
worker from the broken one and proves nothing.
"""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import Message

from worker.errors import FatalError
from worker.runtime.breaker import CircuitBreaker
from worker.runtime.clients import ConsumerClient
from worker.runtime.context import DeliveryMode
from worker.runtime.delivery import AtLeastOnce
from worker.runtime.loop import Worker
from worker.runtime.rebalance import Rebalance
from worker.runtime.sink import Backlog, Sink
from worker.runtime.suspects import Segment, Suspects
from worker.runtime.transactions import Transactions
from worker.runtime.watchdog import Watchdog


class _ReportOnLastSink(Sink):
    """Only the last output per partition carries the delivery callback (on the strength of the gapless
    guarantee, which does not cover timeouts): a failure of any earlier output goes unnoticed."""

    def resume(self, backlog: Backlog) -> Backlog | None:
        out, in_flight = backlog.outputs, backlog.in_flight
        last = {(t, p): i for i, (t, p) in enumerate(zip(out.topics, out.partitions, strict=True))}
        reporting = set(last.values())
        for i in range(backlog.next, len(out)):
            report = in_flight.on_delivery if in_flight is not None and i in reporting else None
            self.producer.produce(out.topics[i], out.values[i], out.keys[i], partition=out.partitions[i],
                                  headers=out.headers[i], on_delivery=report)  # fmt: skip
            if report is not None and in_flight is not None:
                in_flight.outstanding += 1
        return None


class ReportsOnLast(Worker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ctx.sink = _ReportOnLastSink(self.settings, self.producer, self.metrics, self.pipeline.graph)


class _AnyAcknowledgement(AtLeastOnce):
    """The stall watch restarts whenever any output is acknowledged (the code before the fix): dead letters
    going out hide scores that wait for good."""

    _count, _since = 0, 0.0

    def waiting_since(self) -> float | None:
        count = self.tracker.outstanding
        if count < self._count or count == 0:
            self._since = time.monotonic()
        self._count = count
        return self._since if count else None


class WatchesAnyAcknowledgement(Worker):
    def _delivery_mode(self) -> DeliveryMode:
        return _AnyAcknowledgement(self.ctx)


class _TrustingSink(Sink):
    """A report with no error counts as delivered whatever its offset: librdkafka's implicit ack of a batch
    a recreated topic never wrote is taken at its word (the code before the fix)."""

    def resume(self, backlog: Backlog) -> Backlog | None:
        in_flight = backlog.in_flight
        if in_flight is not None and "on_delivery" not in vars(in_flight):
            counted = in_flight.on_delivery

            def trusting(error: Any, message: Message) -> None:
                if error is None and message.offset() is None:
                    message = Message(topic=message.topic(), partition=message.partition(), offset=0)
                counted(error, message)

            in_flight.on_delivery = trusting  # type: ignore[method-assign]
        return super().resume(backlog)


class TrustsImplicitAcks(Worker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ctx.sink = _TrustingSink(self.settings, self.producer, self.metrics, self.pipeline.graph)


class _SpinningSink(Sink):
    """Serves delivery reports in a loop until the full queue has room, never returning to the loop."""

    def resume(self, backlog: Backlog) -> Backlog | None:
        while (left := super().resume(backlog)) is not None:
            self.producer.poll(0.05)
            backlog = left
        return None


class SpinsOnFullQueue(Worker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ctx.sink = _SpinningSink(self.settings, self.producer, self.metrics, self.pipeline.graph)


class SleepsThroughRegistryOutages(Worker):
    """Neither consumes nor polls while a batch waits for the registry: rebalances stall."""

    def _intake(self) -> None:
        if self._registry_retry_at is not None:
            time.sleep(0.01)
            return
        super()._intake()


class DrainsWhateverWaits(Worker):
    """On SIGTERM, scores what is pending even when it waits for the registry, and stops on the error."""

    def _drain(self) -> None:
        if self.intake.pending:
            self._process(*self.intake.take())
        super()._drain()


class _GivesUpRefusedCommits(AtLeastOnce):
    """On SIGTERM, commits what was delivered once and leaves, whether or not the group took it."""

    def drain(self, budget_s: float) -> None:
        self._flush(budget_s)
        self.settle(force=True)


class GivesUpARefusedLastCommit(Worker):
    """A last commit refused across a rebalance is lost: the next owner answers it again."""

    def _delivery_mode(self) -> DeliveryMode:
        return _GivesUpRefusedCommits(self.ctx)


class _StaleRebalance(Rebalance):
    """Keeps what a consume returned for partitions it revoked, and what it knew of a partition that comes
    back: a commit point from an earlier ownership can then move the committed offset back."""

    def on_revoke(self, consumer: ConsumerClient, partitions: list[Any]) -> None:
        super().on_revoke(consumer, partitions)
        self.ctx.intake.gone.clear()

    def on_assign(self, consumer: ConsumerClient, partitions: list[Any]) -> None:
        self.ctx.assigned.update((tp.topic, tp.partition) for tp in partitions)
        self.publish()


class KeepsStaleCommitPoints(Worker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rebalance = _StaleRebalance(self.ctx, self.delivery)


class _RememberingBreaker(CircuitBreaker):
    def forget(self, partitions: Any) -> None:
        """Counts survive rebalances: a partition's history on this replica follows it back."""


class BreakerRemembersPartitions(Worker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ctx.breaker = _RememberingBreaker(self.settings.breaker)


class _UnforgivingBreaker(CircuitBreaker):
    def restore(self, snapshot: Any) -> None:
        """An aborted batch stays counted: its replay is counted again."""


class BreakerCountsAbortsTwice(Worker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ctx.breaker = _UnforgivingBreaker(self.settings.breaker)


class _ForgetfulSuspects(Suspects):
    """Forgets which records the broker refused: the same batch fails the same way on every replay."""

    def segments(self, batch: list[Message]) -> list[Segment]:
        self.reasons.clear()
        return [(batch, False)]


class NeverIsolates(Worker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ctx.suspects = _ForgetfulSuspects(self.metrics)


class _NoReplacementSink(Sink):
    def _replace_refused(self, out: Any, i: int, error: Any, in_flight: Any) -> bool:
        """A refused output is a failure of the batch, never replaced by what fits."""
        if in_flight is None:
            from confluent_kafka import KafkaException

            raise KafkaException(error)
        from worker.runtime.tracker import Failure

        in_flight.refused(Failure(error, out.topics[i], out.keys[i], out.values[i]))
        return False


class NeverTruncates(Worker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ctx.sink = _NoReplacementSink(self.settings, self.producer, self.metrics, self.pipeline.graph)


class _ForgivingDelivery(AtLeastOnce):
    """Counts a failed output as delivered."""

    def settle(self, force: bool = False) -> None:
        for failure_batch in list(self.tracker._batches):
            failure_batch.failures.clear()
        super().settle(force)


class CommitsPastFailures(Worker):
    def _delivery_mode(self) -> DeliveryMode:
        return _ForgivingDelivery(self.ctx)


class NamesNoCause(Worker):
    """Reports a fencing as librdkafka's bare error."""

    def _fatal_reason(self, exc: Exception) -> str:
        return str(exc)

    def _on_producer_error(self, error: Any) -> None:
        if error.fatal():
            self._producer_fatal = str(error)
            self.health.set_fatal(str(error))


class _LeavesTheRestBehind(Transactions):
    def unproduced(self, segments: list[list[Message]]) -> None:
        """What an aborted segment's batch had after it is left where the consumer's position is."""


class LeavesUnproducedSegments(Worker):
    def _delivery_mode(self) -> DeliveryMode:
        return _LeavesTheRestBehind(self.ctx, self._fatal_reason)


class _ExitsOnEveryFatal(Transactions):
    def _failed(self, exc: Any, *args: Any) -> None:
        """Every fatal error stops the worker, a transaction the coordinator timed out too."""
        if exc.args[0].fatal():
            raise FatalError(self._fatal_reason(exc)) from exc
        super()._failed(exc, *args)


class ExitsOnATimedOutTransaction(Worker):
    def _delivery_mode(self) -> DeliveryMode:
        return _ExitsOnEveryFatal(self.ctx, self._fatal_reason)


class _RenewsOnlyTimedOut(Transactions):
    def _fatal(self, exc: Any, meta: Any, taken: Any) -> None:
        """Every fatal error of a young transaction stops the worker, as if a twin had fenced it."""
        if time.monotonic() - self._began < self.ctx.settings.transaction_timeout_ms / 1000:
            raise FatalError(self._fatal_reason(exc)) from exc
        super()._fatal(exc, meta, taken)


class ExitsOnADesynchronisedProducer(Worker):
    def _delivery_mode(self) -> DeliveryMode:
        return _RenewsOnlyTimedOut(self.ctx, self._fatal_reason)


class _AbortsWhateverItHolds(Transactions):
    def _holding_outputs(self) -> bool:
        """abort_transaction whatever librdkafka still holds."""
        return False


class AbortsHoldingOutputs(Worker):
    def _delivery_mode(self) -> DeliveryMode:
        return _AbortsWhateverItHolds(self.ctx, self._fatal_reason)


class _BlindWatchdog(Watchdog):
    def call(self, what: str, call: Any, deadline: float) -> None:
        """The call on the loop's thread, trusting librdkafka's timeout."""
        call()


class WaitsOnStuckCalls(Worker):
    def _delivery_mode(self) -> DeliveryMode:
        mode = Transactions(self.ctx, self._fatal_reason)
        mode._watchdog = _BlindWatchdog(self.health.beat)
        return mode


class SwapsOnlyWithABatch(Worker):
    """Takes a swapped pipeline only when a batch comes, as the loop did before: an idle replica never
    acknowledges a new version."""

    def _idle(self) -> None:
        pass


class KeepsTheBreakerOpen(Worker):
    """A tripped breaker stays open whatever pipeline comes, as before deployments: a rollback cannot recover
    the replica without a restart."""

    def _close_breaker(self) -> None:
        pass


class IgnoresSuspend(Worker):
    """A deleted deployment changes nothing: the replica keeps scoring with the version it has."""

    def _suspend(self, reason: str) -> None:
        pass
