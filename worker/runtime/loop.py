"""The consumer loop: consume -> micro-batch -> pipeline -> sink -> commit, one thread, per batch.

``Worker.run`` blocks on the calling thread until a stop signal or ``stop`` (drain, commit, exit 0) or a fatal
error (``KafkaException`` or ``InfrastructureError`` out of a turn: exit 1, ``/healthz`` failing with the
cause). It composes the parts, each with its orderings as numbered lists in its docstring:
  - ``worker.runtime.intake``: the pending messages and how a batch is taken (batching);
  - ``worker.runtime.delivery``: at-least-once, the order of one batch and the rewind after a failed output;
  - ``worker.runtime.transactions``: exactly-once, one transaction per segment and its abort;
  - ``worker.runtime.suspects``: records the broker refused, isolated on the replay;
  - ``worker.runtime.rebalance``: revoke, lost and assign;
  - ``worker.runtime.flow``: pausing, backpressure, and waiting without stalling the group;
  - ``worker.runtime.context``: the interface between the loop and its delivery mode.

One turn, in order:
  1. beat the health heartbeat; stop if the producer reported a fatal error;
  2. the delivery mode hands on what librdkafka's queue had no room for (``pump``);
  3. take what the consumer has (``Intake.fetch``: rebalance callbacks and commit results are served here);
  4. the first that applies: finish a rewind; wait out a backoff; retry the batch that waits for the
     registry, when due; while suspended (``suspend``), only take a new pipeline; process a batch, when
     one is due and nothing holds; let the batch fill; with nothing pending, take a pipeline handed to
     ``swap_pipeline``;
  5. serve delivery reports (``Producer.poll``, waiting ``WAIT_S`` while paused);
  6. settle: commit what was delivered, or start a rewind (at-least-once);
  7. pause or resume the partitions (``Flow.update``); report the lag every ``LAG_EVERY_S``.
One batch, in order:
  1. a pipeline handed to ``swap_pipeline`` takes over (the sink's lineage headers with it), and the
     future ``swap_pipeline`` returned says so;
  2. if the breaker is open, nothing more is produced or committed;
  3. every segment (the batch cut around suspects) goes through the pipeline before anything is produced: a
     registry outage keeps the whole batch, which waits (partitions paused, not ready) and is retried with
     backoff, never dead-lettered;
  4. the segments are delivered in order until one is not (or a rewind starts); the rest is read again.
Stopping: score what was consumed unless waiting on something, deliver and commit it (``drain``), then leave
the group at once (the revoke commits what is done, unless the worker failed).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from types import FrameType

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition

from worker.errors import FatalError, InfrastructureError, RegistryUnavailable
from worker.runtime import faults
from worker.runtime.backoff import Backoff
from worker.runtime.breaker import CircuitBreaker
from worker.runtime.clients import ConfluentClients, KafkaClients, ProducerClient
from worker.runtime.config import Settings
from worker.runtime.context import Context, DeliveryMode
from worker.runtime.delivery import AtLeastOnce
from worker.runtime.flow import Flow
from worker.runtime.handover import Handover
from worker.runtime.health import Health
from worker.runtime.intake import TP, Intake
from worker.runtime.metrics import Metrics
from worker.runtime.pipeline import Meta, Pipeline, Processed
from worker.runtime.rebalance import Rebalance
from worker.runtime.sink import Sink
from worker.runtime.suspects import Suspects
from worker.runtime.transactions import Transactions

log = logging.getLogger("worker.runtime")
WAIT_S = 0.01  # how long a paused turn waits for delivery reports
LAG_EVERY_S = 5.0
COMMITTED_TIMEOUT_S = 10.0  # the committed offsets asked of the coordinator when the breaker closes
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@dataclass(frozen=True)
class Suspend:
    """Handed over instead of a pipeline: score nothing until the next one (see ``Worker.suspend``)."""

    reason: str


class Worker:
    """Runs one replica of the consumer group until stopped; ``run`` returns the process exit code."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        metrics: Metrics,
        health: Health,
        clients: KafkaClients | None = None,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.metrics = metrics
        self.health = health
        self._clients = clients or ConfluentClients()
        self.consumer = self._clients.consumer(self._consumer_config())
        self._producers = 0  # how many producers were made: only the newest one's errors count
        self._producer_fatal: str | None = None
        producer = self._new_producer()
        assigned: set[TP] = set()
        self.intake = Intake(self.consumer, settings.batch, assigned)
        self.flow = Flow(self.consumer, assigned, metrics, health, settings.batch.max_in_flight)
        sink = Sink(settings, producer, metrics, pipeline.graph, pipeline.deployment)
        breaker, suspects = CircuitBreaker(settings.breaker), Suspects(metrics)
        self.ctx = Context(settings, self.consumer, producer, sink, breaker, metrics, health, self.flow,
                           self.intake, suspects, assigned, self._renew_producer)  # fmt: skip
        self.delivery = self._delivery_mode()
        self.rebalance = Rebalance(self.ctx, self.delivery)
        self.stopping = False
        self._handover: Handover[Pipeline | Suspend] = Handover()
        self._suspended: str | None = None  # why nothing is scored now (a deployment deleted)
        # Per partition, the first offset scored with the pipeline in use (the status of a deployment's
        # replica reports it); read from the follower's thread, so replaced whole, never changed in place.
        self.switched: dict[TP, int] = {}
        self._registry_retry_at: float | None = None  # set while a batch waits for the registry
        self._registry_backoff = Backoff()
        self._last_lag = 0.0

    @property
    def producer(self) -> ProducerClient:
        """The producer in use (exactly-once may replace it, see ``worker.runtime.transactions``)."""
        return self.ctx.producer

    @property
    def assigned(self) -> set[TP]:
        """The partitions this replica owns now."""
        return self.ctx.assigned

    def _delivery_mode(self) -> DeliveryMode:
        if self.settings.delivery == "exactly-once":
            return Transactions(self.ctx, self._fatal_reason)
        return AtLeastOnce(self.ctx)

    # --- lifecycle -------------------------------------------------------------------------------------

    def run(self) -> int:
        """Consume until SIGTERM/SIGINT/SIGHUP (drain, commit, exit 0) or a fatal error (exit 1)."""
        self._install_signals()
        code = 0
        try:
            self.delivery.start()
            group = self.rebalance
            self.consumer.subscribe(self.settings.input.topics, on_assign=group.on_assign,
                                    on_revoke=group.on_revoke, on_lost=group.on_lost)  # fmt: skip
            while not self.stopping:
                self._turn()
            self._drain()
        except (KafkaException, InfrastructureError) as exc:
            reason = self._fatal_reason(exc)
            log.error(
                "stopping on a fatal error",
                extra={"error": reason, "kind": type(exc).__name__},
                exc_info=True,
            )  # where it came from: a fatal exit is worth its traceback
            self.health.set_fatal(reason)
            self.ctx.failed = True
            code = 1
        finally:
            self._close()
        return code

    def swap_pipeline(self, pipeline: Pipeline) -> Future[bool]:
        """Use ``pipeline`` from the next batch on (a new deployment); safe to call from another thread.

        The future is True once the loop uses it, False if another swap replaced it before that."""
        return self._handover.offer(pipeline)

    def suspend(self, reason: str) -> Future[bool]:
        """Score nothing from the next turn on, until ``swap_pipeline``: what is done is committed, the
        partitions pause, readiness says ``reason``; what was fetched is read again after. Any thread."""
        return self._handover.offer(Suspend(reason))

    def stop(self) -> None:
        self.stopping = True

    def _install_signals(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("signal received: draining", extra={"signal": signal.Signals(signum).name})
            self.stop()

        if threading.current_thread() is threading.main_thread():  # embedded in a thread: the host stops it
            for signum in STOP_SIGNALS:
                signal.signal(signum, handler)

    def _consumer_config(self) -> dict[str, object]:
        config = self.settings.consumer_config()
        config["error_cb"] = self._on_client_error
        config["on_commit"] = self._on_commit
        if self.settings.unsafe_commit_on_receipt:  # the negative control of the delivery tests only
            config.update({"enable.auto.commit": True, "enable.auto.offset.store": True,
                           "auto.commit.interval.ms": 200})  # fmt: skip
        return config

    def _fatal_reason(self, exc: Exception) -> str:
        if isinstance(exc, KafkaException):
            error: KafkaError = exc.args[0]
            return faults.fenced_reason(error, self.settings.effective_transactional_id()) or str(error)
        return str(exc)

    # --- the loop ---------------------------------------------------------------------------------------

    def _turn(self) -> None:
        self.health.beat()
        if self._producer_fatal is not None:
            raise FatalError(f"producer: {self._producer_fatal}")
        delivery, intake = self.delivery, self.intake
        delivery.pump()
        self._intake()
        now = time.monotonic()
        if delivery.rewinding:
            delivery.finish_rewind()
        elif delivery.backing_off(now):
            pass  # the partitions stay paused until the backoff is over
        elif self._registry_retry_at is not None:
            if now >= self._registry_retry_at:
                self._retry_registry()
        elif self._suspended is not None:
            self._take_offered()  # only a new pipeline ends it
        elif intake.pending and not delivery.holding() and intake.due(now, self.flow.paused):
            self._process_or_wait(*intake.take())
        elif intake.pending:
            time.sleep(0.0005)  # waiting for the batch to fill: let librdkafka's threads fetch
        else:
            self._idle()
        self.producer.poll(WAIT_S if self.flow.paused else 0)
        delivery.settle()
        self.flow.update(
            delivery.outstanding(), self._holding(), delivery.rewinding, delivery.waiting_since()
        )
        if now - self._last_lag >= LAG_EVERY_S:
            self._report_lag(now)

    def _intake(self) -> None:
        """Take what the consumer has; while paused or full, still poll it for the group's sake."""
        self.intake.fetch(self.flow.paused)

    def _holding(self) -> bool:
        """Partitions must stay paused whatever the load: the loop is waiting on something."""
        waiting = self._registry_retry_at is not None or self._suspended is not None
        return self.ctx.breaker.open or self.delivery.holding() or waiting

    # --- one batch ----------------------------------------------------------------------------------------

    def _process_or_wait(self, batch: list[Message], received: list[float]) -> None:
        """Process the batch; if the registry is down, keep it and try again later (never dead-letter)."""
        try:
            self._process(batch, received)
        except RegistryUnavailable as exc:
            self.intake.put_back(batch, received)
            delay = self._registry_backoff.next()
            self._registry_retry_at = time.monotonic() + delay
            log.warning("schema registry unavailable: the batch waits, partitions paused",
                        extra={"error": str(exc), "retry_in_s": delay})  # fmt: skip
            self.health.set_dependency_down(f"schema registry: {exc}")
            return
        if self._registry_backoff.failing:
            self._registry_backoff.reset()
            self.health.set_dependency_down(None)

    def _retry_registry(self) -> None:
        self._registry_retry_at = None
        if not self.intake.pending:  # a rewind dropped the batch that waited: nothing waits any more
            self._registry_backoff.reset()
            self.health.set_dependency_down(None)
            return
        self._process_or_wait(*self.intake.take())

    def _process(self, batch: list[Message], received: list[float]) -> None:
        self._take_offered()
        if self.ctx.breaker.open:
            return  # tripped: nothing more goes out or gets committed
        started = time.perf_counter()
        segments = self.ctx.suspects.segments(batch)
        # Every segment through the pipeline before anything is produced: a registry outage keeps them all.
        processed = [(segment, self._score(segment), isolated) for segment, isolated in segments]
        delivery = self.delivery
        for at, (segment, (meta, result), isolated) in enumerate(processed):
            if delivery.rewinding or not delivery.deliver(segment, meta, result, isolated):
                delivery.unproduced([later for later, _, _ in processed[at:]])
                break
            if any(tp not in self.switched for tp in meta.first_offsets):
                self.switched = meta.first_offsets | self.switched
            self.metrics.events_out(len(result.score_values))
            self.metrics.observe_end_to_end(time.time() - meta.timestamps_ms / 1000)
        self.metrics.observe_in_worker(time.monotonic() - np.asarray(received))
        self.metrics.observe_batch(len(batch), time.perf_counter() - started)

    def _score(self, batch: list[Message]) -> tuple[Meta, Processed]:
        meta = Meta.of(batch)
        timings: list[tuple[str, float]] = []
        result = self.pipeline.process(meta, on_node=lambda node, t: timings.append((node, t)))
        self.metrics.observe_nodes(timings)
        for topic, at in meta.groups:
            self.metrics.events_in(topic, len(at))
        return meta, result

    def _idle(self) -> None:
        """Nothing pending: a swap need not wait for the next event to be taken (and acknowledged)."""
        self._take_offered()

    def _take_offered(self) -> None:
        if (offered := self._handover.take()) is None:
            return
        item, done = offered
        if isinstance(item, Suspend):
            self._suspend(item.reason)
        else:
            self._use(item)
        done.set_result(True)

    def _suspend(self, reason: str) -> None:
        if self._suspended is None:
            self.ctx.seek(self.intake.drop())  # fetched, not scored: read again once a pipeline comes
        self._suspended = reason
        self.health.set_suspended(reason)
        log.warning("suspended: nothing is scored until a new pipeline", extra={"reason": reason})

    def _use(self, pipeline: Pipeline) -> None:
        if self._suspended is not None:
            self.ctx.seek(self.intake.drop())  # anything fetched while paused is read again, by this pipeline
            self._suspended = None
            self.health.set_suspended(None)
        self.pipeline = pipeline
        self.switched = {}
        self.ctx.sink.use_graph(pipeline.graph, pipeline.deployment)
        extra = {"graph_digest": pipeline.graph.digest, "deployment": pipeline.deployment}
        log.info("new graph in use", extra=extra)
        if self.ctx.breaker.open:
            self._close_breaker()

    def _close_breaker(self) -> None:
        """A new pipeline may score what tripped the breaker: close it, and read again from the committed
        offsets what was consumed since the trip (and not produced: nothing goes out while it is open)."""
        assigned = [TopicPartition(t, p) for t, p in sorted(self.ctx.assigned)]
        committed = self.consumer.committed(assigned, timeout=COMMITTED_TIMEOUT_S) if assigned else []
        # None committed yet: from the start, as auto.offset.reset=earliest would have it
        points = {
            (tp.topic, tp.partition): tp.offset if tp.offset >= 0 else OFFSET_BEGINNING for tp in committed
        }
        self.intake.drop()
        self.ctx.breaker.reset()
        self.ctx.seek(points)
        self.ctx.health.set_breaker_open(None)
        self.metrics.breaker_open(False)
        self.flow.resume()
        log.warning("circuit breaker closed by a new pipeline; reading again from the committed offsets",
                    extra={"partitions": len(points)})  # fmt: skip

    # --- the clients' callbacks -------------------------------------------------------------------------

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition] | None) -> None:
        """Commit results (librdkafka's offset_commit_cb): remember what the broker took."""
        if error is not None and error.code() != KafkaError._NO_OFFSET:
            log.warning("commit failed; the next one sends it again", extra={"error": str(error)})
            return
        self.delivery.confirm(partitions)

    def _new_producer(self) -> ProducerClient:
        """A producer whose error callback counts only while it is the one in use."""
        self._producers += 1
        made = self._producers

        def on_error(error: KafkaError) -> None:
            if made == self._producers:
                self._on_producer_error(error)
            else:
                log.info("error from a replaced producer", extra={"error": str(error)})

        return self._clients.producer({**self.settings.producer_config(), "error_cb": on_error})

    def _renew_producer(self) -> ProducerClient:
        """The delivery mode gave its producer up: a new one takes its place, its fatal error forgotten."""
        producer = self._new_producer()
        self.ctx.producer = self.ctx.sink.producer = producer
        self._producer_fatal = None
        return producer

    def _on_producer_error(self, error: KafkaError) -> None:
        """A fatal producer error: the loop stops at its next turn, unless exactly-once, failing a
        transaction meanwhile, replaces the producer (a transaction the coordinator timed out)."""
        if error.fatal():
            reason = faults.fenced_reason(error, self.settings.effective_transactional_id()) or str(error)
            self._producer_fatal = reason
        log.warning("kafka client error", extra={"error": str(error)})

    def _on_client_error(self, error: KafkaError) -> None:
        if error.fatal():
            self.health.set_fatal(str(error))
        log.warning("kafka client error", extra={"error": str(error)})

    # --- lag, shutdown ----------------------------------------------------------------------------------

    def _report_lag(self, now: float) -> None:
        self._last_lag = now
        lags: dict[TP, int] = {}
        positions = self.consumer.position([TopicPartition(t, p) for t, p in self.assigned])
        for tp in positions:
            _, high = self.consumer.get_watermark_offsets(tp, cached=True)
            if tp.offset >= 0 and high >= 0:
                lags[(tp.topic, tp.partition)] = max(0, high - tp.offset)
        self.metrics.set_lag(lags)

    def _drain(self) -> None:
        """SIGTERM: score what was consumed (unless waiting on something), deliver it, commit it."""
        if self.intake.pending and not self._holding():
            try:
                self._process(*self.intake.take())
            except RegistryUnavailable as exc:
                log.warning("stopping without scoring what waits for the registry", extra={"error": str(exc)})
        self.delivery.drain(self.settings.shutdown_budget_ms / 1000)

    def _close(self) -> None:
        """Leave the group at once (the revoke callback commits what is done, unless failed)."""
        try:
            self.consumer.close()
            self.producer.flush(0 if self.ctx.failed else self.settings.shutdown_budget_ms / 1000)
        except (KafkaException, RuntimeError) as exc:
            log.warning("error while closing", extra={"error": str(exc)})
