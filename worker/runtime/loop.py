"""The consumer loop: consume -> micro-batch -> pipeline -> sink -> commit, one thread, per batch.

Batching: drain with a non-blocking ``consume`` and block (in ``poll``) only when idle: a blocking
``consume(n, timeout)`` waits out its whole timeout even with messages queued. With ``batch.max_wait_ms = 0``
(the default) a batch is what arrived while the previous one was processed, so batches grow with the load;
above 0 a batch also waits that long to fill, up to ``batch.max_records``.

At-least-once (default), the order of one batch:
  1. process the batch (decode, graph, encode): every message yields exactly one output, a score or a
     dead-letter record;
  2. produce all outputs (``Sink.send``); the batch is tracked with the delivery reports it awaits;
  3. delivery callbacks (served by ``Producer.poll``) count it down; a failed delivery stops the worker;
  4. every ``commit_interval_ms``, the commit points of the batches completed in order are committed, and
     offered again until the broker confirms them (a commit lost in a rebalance is sent again).
Exactly-once: each batch is one transaction holding its outputs and its input offsets
(``send_offsets_to_transaction``); an abortable error aborts and rewinds to the committed offsets, a fatal one
(fenced) stops the worker with a non-zero exit.

Rebalances (served inside ``consume``): on revoke, the unprocessed messages of the revoked partitions are
dropped (nothing was produced for them), in-flight outputs are flushed within ``revoke_budget_ms``, what is
done is committed, the partitions are released. On lost partitions, in-flight work is forgotten without a
commit.

Waiting without stalling the group: above ``batch.max_in_flight`` unacknowledged outputs, or while the schema
registry is down (the batch is kept and retried with backoff, never dead-lettered), the assigned partitions
are paused while the loop keeps polling, so ``max.poll.interval.ms`` is never exceeded.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

import numpy as np
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from worker.errors import FatalError, InfrastructureError, RegistryUnavailable
from worker.runtime.breaker import CircuitBreaker
from worker.runtime.clients import ConfluentClients, ConsumerClient, KafkaClients
from worker.runtime.config import Settings
from worker.runtime.health import Health
from worker.runtime.metrics import Metrics
from worker.runtime.pipeline import Meta, Pipeline, Processed
from worker.runtime.sink import Sink
from worker.runtime.tracker import CommitTracker, InFlight

log = logging.getLogger("worker.runtime")
TP = tuple[str, int]
IDLE_BLOCK_S = 0.1
LAG_EVERY_S = 5.0
REGISTRY_BACKOFF_MAX_S = 30.0


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
        self.exactly_once = settings.delivery == "exactly-once"
        clients = clients or ConfluentClients()
        self.consumer = clients.consumer(self._consumer_config())
        self.producer = clients.producer({**settings.producer_config(), "error_cb": self._on_producer_error})
        self._producer_fatal: str | None = None
        self.sink = Sink(settings, self.producer, metrics, pipeline.graph)
        self.tracker = CommitTracker()
        self.breaker = CircuitBreaker(settings.breaker)
        self.assigned: set[TP] = set()
        self.pending: list[Message] = []
        self.received: list[float] = []  # when consume() returned each pending message (monotonic)
        self.paused = False
        self.stopping = False
        self.failed = False  # after a fatal error nothing more is committed, not even on close
        self._next_pipeline: Pipeline | None = None
        self._registry_retry_at: float | None = None  # set while a batch waits for the registry
        self._registry_backoff = 0.0
        self._first_at = 0.0
        self._last_commit = time.monotonic()
        self._last_lag = 0.0

    # --- lifecycle -------------------------------------------------------------------------------------

    def run(self) -> int:
        """Consume until SIGTERM/SIGINT (drain, commit, exit 0) or a fatal error (exit 1)."""
        self._install_signals()
        if self.exactly_once:
            self.producer.init_transactions(30)
        self.consumer.subscribe(self.settings.input.topics, on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)  # fmt: skip
        code = 0
        try:
            while not self.stopping:
                self._turn()
            self._drain()
        except (KafkaException, InfrastructureError) as exc:
            log.error("stopping on a fatal error", extra={"error": str(exc), "kind": type(exc).__name__})
            self.health.set_fatal(str(exc))
            self.failed = True
            code = 1
        finally:
            self._close()
        return code

    def swap_pipeline(self, pipeline: Pipeline) -> None:
        """Use ``pipeline`` from the next batch on (a new deployment); safe to call from another thread."""
        self._next_pipeline = pipeline

    def stop(self) -> None:
        self.stopping = True

    def _install_signals(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("signal received: draining", extra={"signal": signal.Signals(signum).name})
            self.stop()

        if threading.current_thread() is threading.main_thread():  # embedded in a thread: the host stops it
            signal.signal(signal.SIGTERM, handler)
            signal.signal(signal.SIGINT, handler)

    def _consumer_config(self) -> dict[str, object]:
        config = self.settings.consumer_config()
        config["error_cb"] = self._on_client_error
        config["on_commit"] = self._on_commit
        if self.settings.unsafe_commit_on_receipt:  # the negative control of the delivery tests only
            config.update({"enable.auto.commit": True, "enable.auto.offset.store": True,
                           "auto.commit.interval.ms": 200})  # fmt: skip
        return config

    # --- the loop ---------------------------------------------------------------------------------------

    def _turn(self) -> None:
        self.health.beat()
        if self._producer_fatal is not None:
            raise FatalError(f"producer: {self._producer_fatal}")
        batching = self.settings.batch
        room = batching.max_records - len(self.pending)
        messages = self.consumer.consume(room, 0) if room > 0 and not self.paused else []
        if not messages and not self.pending:
            # Idle: block in poll, which returns on the first message (consume(n, t) would wait out t).
            first = self.consumer.poll(IDLE_BLOCK_S)
            if first is not None:
                messages = [first, *self.consumer.consume(batching.max_records - 1, 0)]
        now = time.monotonic()
        if messages:
            if not self.pending:
                self._first_at = now
            valid = self._valid(messages)
            self.pending.extend(valid)
            self.received.extend([now] * len(valid))
        due = now - self._first_at >= batching.max_wait_ms / 1000
        if self._registry_retry_at is not None:
            if now >= self._registry_retry_at:
                self._retry_registry()
            else:
                time.sleep(0.01)  # partitions are paused; the loop keeps polling for the group's sake
        elif self.pending and (len(self.pending) >= batching.max_records or due or self.paused):
            batch, received = self._take_pending()
            self._process_or_wait(batch, received)
        elif self.pending:
            time.sleep(0.0005)  # waiting for the batch to fill: let librdkafka's threads fetch
        self.producer.poll(0)
        if not self.exactly_once:
            self._settle()
        self._backpressure()
        if now - self._last_lag >= LAG_EVERY_S:
            self._report_lag(now)

    def _take_pending(self) -> tuple[list[Message], list[float]]:
        taken = self.pending, self.received
        self.pending, self.received = [], []
        return taken

    def _drop_pending(self, partitions: set[TP]) -> None:
        """Unprocessed messages of partitions no longer ours: nothing was produced or committed for them."""
        kept = [(m, t) for m, t in zip(self.pending, self.received, strict=True)
                if (m.topic(), m.partition()) not in partitions]  # fmt: skip
        self.pending, self.received = [m for m, _ in kept], [t for _, t in kept]

    def _valid(self, messages: list[Message]) -> list[Message]:
        good = [m for m in messages if m.error() is None]
        for message in messages if len(good) != len(messages) else ():
            error = message.error()
            if error is not None and error.fatal():
                raise FatalError(f"consumer: {error}")
            if error is not None:
                log.warning("consumer error", extra={"error": str(error)})
        return good

    def _process_or_wait(self, batch: list[Message], received: list[float]) -> None:
        """Process the batch; if the registry is down, keep it and try again later (never dead-letter)."""
        try:
            self._process(batch, received)
        except RegistryUnavailable as exc:
            self.pending, self.received = batch + self.pending, received + self.received
            self._registry_backoff = min(2 * self._registry_backoff or 0.5, REGISTRY_BACKOFF_MAX_S)
            self._registry_retry_at = time.monotonic() + self._registry_backoff
            log.warning("schema registry unavailable: the batch waits, partitions paused",
                        extra={"error": str(exc), "retry_in_s": self._registry_backoff})  # fmt: skip
            self.health.set_dependency_down(f"schema registry: {exc}")
            self._pause()
            return
        if self._registry_backoff:
            self._registry_backoff = 0.0
            self.health.set_dependency_down(None)

    def _retry_registry(self) -> None:
        self._registry_retry_at = None
        batch, received = self._take_pending()
        self._process_or_wait(batch, received)
        if self._registry_retry_at is None:  # it went through: fetch again
            self._resume()

    def _process(self, batch: list[Message], received: list[float]) -> None:
        if self._next_pipeline is not None:
            self._use(self._next_pipeline)
        if self.breaker.open:
            return  # tripped: nothing more goes out or gets committed
        started = time.perf_counter()
        meta = Meta.of(batch)
        timings: list[tuple[str, float]] = []
        result = self.pipeline.process(meta, on_node=lambda node, t: timings.append((node, t)))
        self.metrics.observe_nodes(timings)
        if not self._admit(meta, result):
            return
        for topic, at in meta.groups:
            self.metrics.events_in(topic, len(at))
        if self.exactly_once:
            self._produce_transaction(batch, meta, result)
        else:
            self.sink.send(batch, meta, result, self._track(meta))
        self.metrics.observe_in_worker(time.monotonic() - np.asarray(received))
        self.metrics.events_out(len(result.score_values))
        self.metrics.observe_batch(len(batch), time.perf_counter() - started)
        self.metrics.observe_end_to_end(time.time() - meta.timestamps_ms / 1000)

    def _use(self, pipeline: Pipeline) -> None:
        self.pipeline, self._next_pipeline = pipeline, None
        self.sink.use_graph(pipeline.graph)
        log.info("new graph in use", extra={"graph_digest": pipeline.graph.digest})

    def _admit(self, meta: Meta, result: Processed) -> bool:
        invalid = np.zeros(len(meta.topics), dtype=np.bool_)
        invalid[list(result.errors)] = True
        parts = meta.partitions
        if all(self.breaker.admit(t, parts[at], invalid[at]) for t, at in meta.groups):
            return True
        log.error("circuit breaker open: pausing, nothing more is produced or committed",
                  extra={"reason": self.breaker.reason})  # fmt: skip
        self.health.set_breaker_open(self.breaker.reason)
        self.metrics.breaker_open(True)
        self._pause()
        return False

    # --- producing --------------------------------------------------------------------------------------

    def _track(self, meta: Meta) -> InFlight | None:
        if self.settings.unsafe_commit_on_receipt:
            return None
        in_flight = InFlight(dict(meta.commit_points))  # a copy: the tracker edits its own
        self.tracker.track(in_flight)
        return in_flight

    def _produce_transaction(self, batch: list[Message], meta: Meta, result: Processed) -> None:
        """One transaction: the batch's outputs and its input offsets, committed together or not at all."""
        try:
            self.producer.begin_transaction()
            self.sink.send(batch, meta, result, None)
            commit_offsets = [TopicPartition(t, p, o) for (t, p), o in meta.commit_points.items()]
            started = time.perf_counter()
            _retrying(lambda: self.producer.send_offsets_to_transaction(
                commit_offsets, self.consumer.consumer_group_metadata(), 30))  # fmt: skip
            _retrying(lambda: self.producer.commit_transaction(30))
            self.metrics.observe_commit(time.perf_counter() - started)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.fatal() or not error.txn_requires_abort():
                raise FatalError(f"transaction: {error}") from exc
            # e.g. a rebalance moved the group on (ILLEGAL_GENERATION): nothing of the batch is visible
            log.warning(
                "transaction aborted: rewinding to the committed offsets", extra={"error": str(error)}
            )
            self.producer.abort_transaction(30)
            self._rewind()

    def _rewind(self) -> None:
        """After an abort: forget what was consumed and go back to the committed offsets."""
        self._take_pending()
        assignment = self.consumer.assignment()
        for tp in self.consumer.committed(assignment, timeout=30) if assignment else ():
            # OFFSET_BEGINNING when nothing was committed yet: auto.offset.reset is "earliest"
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else -2))

    # --- committing -------------------------------------------------------------------------------------

    def _settle(self, force: bool = False) -> None:
        """Commit, per assigned partition, the point its delivered outputs reached, unless confirmed."""
        failed = self.tracker.failed()
        if failed is not None:
            raise FatalError(f"an output was not delivered: {failed}")
        now = time.monotonic()
        if self.breaker.open or (
            not force and (now - self._last_commit) * 1000 < self.settings.commit_interval_ms
        ):
            return
        self._last_commit = now
        points = self.tracker.to_commit(self.assigned)
        if points and not self.settings.unsafe_commit_on_receipt:
            self._commit([TopicPartition(t, p, o) for (t, p), o in points.items()], wait=force)

    def _commit(self, offsets: list[TopicPartition], *, wait: bool) -> None:
        started = time.perf_counter()
        try:
            if wait:
                self._on_commit(None, self.consumer.commit(offsets=offsets, asynchronous=False))
            else:
                self.consumer.commit(offsets=offsets, asynchronous=True)  # confirmed in _on_commit
        except KafkaException as exc:
            log.warning("commit failed; the next one sends it again", extra={"error": str(exc.args[0])})
        self.metrics.observe_commit(time.perf_counter() - started)

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition] | None) -> None:
        """Commit results (librdkafka's offset_commit_cb, and sync commits): remember what the broker took."""
        if error is not None and error.code() != KafkaError._NO_OFFSET:
            log.warning("commit failed; the next one sends it again", extra={"error": str(error)})
        for tp in partitions or ():
            key = (tp.topic, tp.partition)
            if tp.error is None and tp.offset >= 0 and key in self.assigned:
                self.tracker.confirm(key, tp.offset)

    def _flush(self, budget_s: float) -> None:
        """Serve deliveries until every output is acknowledged, one failed, or the budget is spent."""
        deadline = time.monotonic() + budget_s
        while self.tracker.outstanding > 0 and self.tracker.failed() is None and time.monotonic() < deadline:
            self.producer.poll(0.05)

    # --- rebalances -------------------------------------------------------------------------------------

    def _on_assign(self, consumer: ConsumerClient, partitions: list[TopicPartition]) -> None:
        self.assigned.update((tp.topic, tp.partition) for tp in partitions)
        self.metrics.rebalance("assign", len(partitions))
        self._publish_assignment()
        if self.paused or self.breaker.open:
            consumer.pause(partitions)
        log.info("partitions assigned", extra={"partitions": _names(partitions)})

    def _on_revoke(self, consumer: ConsumerClient, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self._drop_pending(revoked)
        if not self.exactly_once and not self.breaker.open and not self.failed:
            self._flush(self.settings.revoke_budget_ms / 1000)
            try:
                self._settle(force=True)
            except FatalError:
                log.error("outputs of revoked partitions failed: not committing them")
        self._forget(revoked)
        self.metrics.rebalance("revoke", len(partitions))
        self._publish_assignment()
        log.info("partitions revoked", extra={"partitions": _names(partitions)})

    def _on_lost(self, _consumer: ConsumerClient, partitions: list[TopicPartition]) -> None:
        lost = {(tp.topic, tp.partition) for tp in partitions}
        self._drop_pending(lost)
        self._forget(lost)
        self.metrics.rebalance("lost", len(partitions))
        self._publish_assignment()
        log.warning("partitions lost: in-flight work dropped", extra={"partitions": _names(partitions)})

    def _forget(self, partitions: set[TP]) -> None:
        """Partitions no longer ours: their offsets are not ours to commit any more."""
        self.tracker.forget(partitions)
        self.assigned -= partitions

    def _publish_assignment(self) -> None:
        self.metrics.set_assigned(len(self.assigned))
        self.health.set_assigned(len(self.assigned))

    def _on_producer_error(self, error: KafkaError) -> None:
        """A fatal producer error (a gap in a partition's deliveries): the loop stops at its next turn."""
        if error.fatal():
            self._producer_fatal = str(error)
        self._on_client_error(error)

    def _on_client_error(self, error: KafkaError) -> None:
        if error.fatal():
            self.health.set_fatal(str(error))
        log.warning("kafka client error", extra={"error": str(error)})

    # --- backpressure, lag, shutdown --------------------------------------------------------------------

    def _backpressure(self) -> None:
        limit = self.settings.batch.max_in_flight
        if self.breaker.open or self._registry_retry_at is not None:
            return
        outstanding = self.tracker.outstanding if not self.exactly_once else len(self.producer)
        if not self.paused and outstanding > limit:
            self._pause()
        elif self.paused and outstanding <= limit // 2:
            self._resume()

    def _resume(self) -> None:
        if self.breaker.open:  # a tripped breaker keeps everything paused until a restart
            return
        self.paused = False
        self.consumer.resume([TopicPartition(t, p) for t, p in self.assigned])
        self.metrics.set_paused(0)

    def _pause(self) -> None:
        self.paused = True
        self.consumer.pause([TopicPartition(t, p) for t, p in self.assigned])
        self.metrics.set_paused(len(self.assigned))

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
        """SIGTERM: score what was consumed, deliver it, commit it."""
        if self.pending and not self.breaker.open:
            self._process(*self._take_pending())
        if not self.exactly_once:
            self._flush(self.settings.shutdown_budget_ms / 1000)
            self._settle(force=True)

    def _close(self) -> None:
        """Leave the group at once (the revoke callback commits what is done, unless failed)."""
        try:
            self.consumer.close()
            self.producer.flush(0 if self.failed else self.settings.shutdown_budget_ms / 1000)
        except (KafkaException, RuntimeError) as exc:
            log.warning("error while closing", extra={"error": str(exc)})


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


def _names(partitions: list[TopicPartition]) -> list[str]:
    return [f"{tp.topic}[{tp.partition}]" for tp in partitions]
