"""The consumer loop: consume -> micro-batch -> pipeline -> sink -> commit, one thread, per batch.

Batching: drain with a non-blocking ``consume`` and block (in ``poll``) only when idle: a blocking
``consume(n, timeout)`` waits out its whole timeout even with messages queued. With ``batch.max_wait_ms = 0``
(the default) a batch is what arrived while the previous one was processed, so batches grow with the load;
above 0 a batch also waits that long to fill, up to ``batch.max_records``.

At-least-once (default), the order of one batch:
  1. process the batch (decode, graph, encode): every message yields exactly one output, a score or a
     dead-letter record;
  2. produce every output with the batch's delivery callback (``Sink``); the batch is tracked with the count
     of outputs it awaits (``CommitTracker``);
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
     awaited, and if refused again dead-lettered with the broker's reason (a dead letter: truncated);
  5. any other failure is the broker side's: the partitions resume after a backoff (0.5 s doubling to 30 s),
     not ready meanwhile.
Exactly-once: each batch is one transaction holding its outputs and its input offsets
(``send_offsets_to_transaction``). An abortable error aborts, takes the batch back from the breaker and
rewinds the batch's partitions to its first offsets; records the broker refused become suspects, each
then scored in a transaction of its own, so one record cannot make the same batch abort forever; repeated
aborts back off. A fatal error (fenced) stops the worker with a non-zero exit naming the cause.

Rebalances (served inside ``consume``/``poll``): on revoke, the unprocessed messages of the revoked
partitions are dropped (nothing was produced for them), in-flight outputs are flushed within
``revoke_budget_ms``, what is delivered is committed, the partitions are released. On lost partitions,
in-flight work is forgotten without a commit. Messages the same ``consume`` returned for a partition it
revoked are dropped, and an assigned partition starts with no history (commit points, breaker counts).

Waiting without stalling the group: while partitions are paused (more than ``batch.max_in_flight`` outputs
unacknowledged, librdkafka's queue full, the registry down, a rewind or its backoff, the breaker open), the
loop keeps turning: it polls the consumer (serving rebalances and commit results), serves delivery reports
and beats the health heartbeat, so ``max.poll.interval.ms`` and ``/healthz`` never see a stall.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

import numpy as np
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from worker.errors import FatalError, InfrastructureError, RegistryUnavailable
from worker.runtime import faults
from worker.runtime.backoff import Backoff
from worker.runtime.breaker import CircuitBreaker
from worker.runtime.clients import ConfluentClients, ConsumerClient, KafkaClients
from worker.runtime.config import Settings
from worker.runtime.health import Health
from worker.runtime.metrics import Metrics
from worker.runtime.pipeline import Meta, Pipeline, Processed
from worker.runtime.sink import Backlog, Outputs, Sink
from worker.runtime.tracker import CommitTracker, Failure, InFlight

log = logging.getLogger("worker.runtime")
TP = tuple[str, int]
Coordinates = tuple[str, int, int]  # topic, partition, offset of one input record
IDLE_BLOCK_S = 0.1
WAIT_S = 0.01  # how long a paused turn waits for delivery reports
LAG_EVERY_S = 5.0
AWAIT_S = 30.0  # an isolated record's outputs must be acknowledged within this
OUTPUT_STALL_S = 10.0  # outputs in flight and none acknowledged this long: not ready
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


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
        self.backlog: Backlog | None = None  # the current batch's outputs librdkafka's queue had no room for
        self.rewinding = False  # outputs failed: waiting for every report, then rewinding
        self.suspects: dict[Coordinates, str] = {}  # records whose output the broker refused: produced alone
        self._rewind_extra: dict[TP, int] = {}  # first offsets of what was consumed and dropped unproduced
        self._resume_at: float | None = None  # partitions stay paused until then (backoff after a failure)
        self._retry_backoff = Backoff()  # failing outputs and aborted transactions
        self._delivered_at_rewind: int | None = None
        self._next_pipeline: Pipeline | None = None
        self._registry_retry_at: float | None = None  # set while a batch waits for the registry
        self._registry_backoff = Backoff()
        self._over_limit = False
        self._gone: set[TP] = set()  # partitions revoked or lost during the current consume call
        self._first_at = 0.0
        self._last_commit = time.monotonic()
        self._last_lag = 0.0
        self._outstanding = (0, time.monotonic())  # (outputs in flight, when that count last went down)

    # --- lifecycle -------------------------------------------------------------------------------------

    def run(self) -> int:
        """Consume until SIGTERM/SIGINT/SIGHUP (drain, commit, exit 0) or a fatal error (exit 1)."""
        self._install_signals()
        code = 0
        try:
            if self.exactly_once:
                self.producer.init_transactions(30)
            self.consumer.subscribe(self.settings.input.topics, on_assign=self._on_assign,
                                    on_revoke=self._on_revoke, on_lost=self._on_lost)  # fmt: skip
            while not self.stopping:
                self._turn()
            self._drain()
        except (KafkaException, InfrastructureError) as exc:
            reason = self._fatal_reason(exc)
            log.error("stopping on a fatal error", extra={"error": reason, "kind": type(exc).__name__})
            self.health.set_fatal(reason)
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
        if self.backlog is not None:
            self.backlog = self.sink.resume(self.backlog)
        self._intake()
        now = time.monotonic()
        if self.rewinding:
            self._finish_rewind()
        elif self._registry_retry_at is not None:
            if now >= self._registry_retry_at:
                self._retry_registry()
        elif self._resume_at is not None:
            if now >= self._resume_at:
                self._resume_at = None
        elif self.backlog is None and self.pending and self._batch_due(now):
            self._process_or_wait(*self._take_pending())
        elif self.pending:
            time.sleep(0.0005)  # waiting for the batch to fill: let librdkafka's threads fetch
        self.producer.poll(WAIT_S if self.paused else 0)
        if not self.exactly_once:
            self._settle()
        self._flow()
        if now - self._last_lag >= LAG_EVERY_S:
            self._report_lag(now)

    def _intake(self) -> None:
        """Take what the consumer has; while paused or full, still poll it for the group's sake."""
        room = self.settings.batch.max_records - len(self.pending)
        if self.paused or room <= 0:
            first = self.consumer.poll(0)
            messages = [first] if first is not None else []
        else:
            messages = self.consumer.consume(room, 0)
            if not messages and not self.pending:
                # Idle: block in poll, which returns on the first message (consume(n, t) would wait out t).
                first = self.consumer.poll(IDLE_BLOCK_S)
                if first is not None:
                    messages = [first, *self.consumer.consume(room - 1, 0)]
        if self._gone:  # the call served a revoke: what it returned of those partitions is not ours
            messages = [m for m in messages if (m.topic(), m.partition()) in self.assigned]
            self._gone.clear()
        if messages:
            if not self.pending:
                self._first_at = time.monotonic()
            valid = self._valid(messages)
            self.pending.extend(valid)
            self.received.extend([time.monotonic()] * len(valid))

    def _batch_due(self, now: float) -> bool:
        batching = self.settings.batch
        return (
            len(self.pending) >= batching.max_records
            or self.paused
            or (now - self._first_at >= batching.max_wait_ms / 1000)
        )

    def _take_pending(self) -> tuple[list[Message], list[float]]:
        taken = self.pending, self.received
        self.pending, self.received = [], []
        return taken

    def _drop_pending(self, partitions: set[TP] | None = None) -> dict[TP, int]:
        """Drop unprocessed messages (of ``partitions``, or all): nothing was produced for them. Their first
        offset per partition, where consuming must start again if they are to be read again."""
        firsts: dict[TP, int] = {}
        kept: list[tuple[Message, float]] = []
        for message, at in zip(self.pending, self.received, strict=True):
            tp = (message.topic(), message.partition())
            if partitions is None or tp in partitions:
                firsts.setdefault(tp, message.offset())  # type: ignore[arg-type]
            else:
                kept.append((message, at))
        self.pending, self.received = [m for m, _ in kept], [t for _, t in kept]
        return firsts

    def _valid(self, messages: list[Message]) -> list[Message]:
        good = [m for m in messages if m.error() is None]
        for message in messages if len(good) != len(messages) else ():
            error = message.error()
            if error is not None and error.fatal():
                raise FatalError(f"consumer: {error}")
            if error is not None:
                log.warning("consumer error", extra={"error": str(error)})
        return good

    def _holding(self) -> bool:
        """Partitions must stay paused whatever the load: the loop is waiting on something."""
        return (
            self.breaker.open
            or self.rewinding
            or self.backlog is not None
            or self._registry_retry_at is not None
            or self._resume_at is not None
        )

    # --- one batch ----------------------------------------------------------------------------------------

    def _process_or_wait(self, batch: list[Message], received: list[float]) -> None:
        """Process the batch; if the registry is down, keep it and try again later (never dead-letter)."""
        try:
            self._process(batch, received)
        except RegistryUnavailable as exc:
            self.pending, self.received = batch + self.pending, received + self.received
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
        self._process_or_wait(*self._take_pending())

    def _process(self, batch: list[Message], received: list[float]) -> None:
        if self._next_pipeline is not None:
            self._use(self._next_pipeline)
        if self.breaker.open:
            return  # tripped: nothing more goes out or gets committed
        started = time.perf_counter()
        segments = self._segments(batch)
        # Every segment through the pipeline before anything is produced: a registry outage keeps them all.
        processed = [(segment, self._score(segment), isolated) for segment, isolated in segments]
        for at, (segment, (meta, result), isolated) in enumerate(processed):
            if self.rewinding or not self._deliver(segment, meta, result, isolated):
                for later, _, _ in processed[at:]:  # consumed, not produced: read again after the rewind
                    _merge_min(self._rewind_extra, Meta.of(later).first_offsets)
                break
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

    def _segments(self, batch: list[Message]) -> list[tuple[list[Message], bool]]:
        """The batch as one segment, or split so that every suspect record is a segment of its own."""
        if not self.suspects:
            return [(batch, False)]
        segments: list[tuple[list[Message], bool]] = []
        run: list[Message] = []
        for message in batch:
            if _coordinates(message) in self.suspects:
                if run:
                    segments.append((run, False))
                segments.append(([message], True))
                run = []
            else:
                run.append(message)
        if run:
            segments.append((run, False))
        return segments

    def _deliver(self, batch: list[Message], meta: Meta, result: Processed, isolated: bool) -> bool:
        """Admit the segment to the breaker and produce it; False when nothing more of the batch may go."""
        if self.exactly_once:
            return self._transaction(batch, meta, result, isolated)
        if not self._admit(meta, result):
            return False
        if self.settings.unsafe_commit_on_receipt:
            self.backlog = self.sink.send(batch, meta, result, None)
            return True
        in_flight = InFlight(dict(meta.commit_points), dict(meta.first_offsets))
        self.tracker.track(in_flight)
        outputs = self.sink.outputs(batch, meta, result)
        in_flight.outputs = outputs
        backlog = self.sink.resume(Backlog(outputs, 0, in_flight))
        if self.suspects:  # every segment awaited: a suspect must not overtake nor be overtaken
            self._await(backlog, in_flight)
            if isolated:
                self._settle_suspect(batch[0], outputs, in_flight)
            return not in_flight.failures
        self.backlog = backlog
        return True

    def _await(self, backlog: Backlog | None, in_flight: InFlight) -> None:
        """Hand every output to librdkafka and serve reports until each is acknowledged (or ``AWAIT_S``)."""
        deadline = time.monotonic() + AWAIT_S
        self._push(backlog, AWAIT_S)
        while in_flight.outstanding > 0 and time.monotonic() < deadline:
            self.health.beat()
            self.producer.poll(0.05)

    def _push(self, backlog: Backlog | None, budget_s: float) -> None:
        """Hand a backlog to librdkafka, serving delivery reports (which make room) meanwhile."""
        deadline = time.monotonic() + budget_s
        while backlog is not None and time.monotonic() < deadline:
            self.health.beat()
            self.producer.poll(0.05)
            backlog = self.sink.resume(backlog)
        if backlog is not None:
            full = KafkaError(KafkaError._TIMED_OUT, "the producer's queue stayed full", retriable=True,
                              txn_requires_abort=self.exactly_once)  # fmt: skip
            raise KafkaException(full)

    def _settle_suspect(self, message: Message, outputs: Outputs, in_flight: InFlight) -> None:
        """A suspect's output went out alone: delivered, it is cleared; refused again as a record, its
        replacement goes (a score's dead letter, a truncated dead letter); anything else rewinds."""
        coordinates = _coordinates(message)
        if in_flight.failures and all(faults.is_record_fault(f.error) for f in in_flight.failures):
            reason = faults.describe(in_flight.failures[0].error)
            in_flight.failures.clear()
            if outputs.dead[0] is None:
                self.sink.dead_letter_of(outputs, 0, f"the broker refused the score: {reason}")
            else:
                self.sink.truncate(outputs, 0, limit=0)
            log.warning("the broker refused a record's output: sending its replacement",
                        extra={"record": list(coordinates), "error": reason})  # fmt: skip
            self._await(self.sink.resume(Backlog(outputs, 0, in_flight)), in_flight)
        if not in_flight.failures and in_flight.outstanding <= 0:
            del self.suspects[coordinates]

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

    # --- exactly-once -----------------------------------------------------------------------------------

    def _transaction(self, batch: list[Message], meta: Meta, result: Processed, isolated: bool) -> bool:
        """One transaction: the segment's outputs and its input offsets, committed together or not at all.
        False when it was aborted (the batch is rewound) or the breaker tripped."""
        taken = self.breaker.snapshot(meta.commit_points)
        if not self._admit(meta, result):
            return False
        outputs = self.sink.outputs(batch, meta, result)
        in_flight = InFlight({}, {}, outputs=outputs)  # only to keep the failed outputs' reports
        try:
            try:
                self._commit_transaction(outputs, in_flight, meta)
            except KafkaException as exc:
                if not (isolated and _abortable(exc) and self._replace_refused(outputs, in_flight)):
                    raise
                # Alone, the suspect was refused again: abort, and commit its replacement instead.
                self.producer.abort_transaction(30)
                self.metrics.aborted()
                in_flight = InFlight({}, {}, outputs=outputs)
                self._commit_transaction(outputs, in_flight, meta)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.fatal() or not error.txn_requires_abort():
                raise FatalError(self._fatal_reason(exc)) from exc
            self._abort(error, batch, meta, outputs, in_flight, taken)
            return False
        if isolated:
            self.suspects.pop(_coordinates(batch[0]), None)
        if self._retry_backoff.failing:
            self._retry_backoff.reset()
            self.health.set_outputs_down(None)
        return True

    def _commit_transaction(self, outputs: Outputs, in_flight: InFlight, meta: Meta) -> None:
        started = time.perf_counter()
        self.producer.begin_transaction()
        self._push(
            self.sink.resume(Backlog(outputs, 0, in_flight)), self.settings.transaction_timeout_ms / 1000
        )
        offsets = [TopicPartition(t, p, o) for (t, p), o in meta.commit_points.items()]
        _retrying(lambda: self.producer.send_offsets_to_transaction(
            offsets, self.consumer.consumer_group_metadata(), 30))  # fmt: skip
        _retrying(lambda: self.producer.commit_transaction(30))
        self.metrics.observe_commit(time.perf_counter() - started)

    def _replace_refused(self, outputs: Outputs, in_flight: InFlight) -> bool:
        """An isolated record's outputs were refused as records: replace them; False if not that case."""
        self.producer.poll(0)  # the refused outputs' reports
        if not in_flight.failures or not all(faults.is_record_fault(f.error) for f in in_flight.failures):
            return False
        reason = faults.describe(in_flight.failures[0].error)
        for i in range(len(outputs)):
            if outputs.dead[i] is None:
                self.sink.dead_letter_of(outputs, i, f"the broker refused the score: {reason}")
            else:
                self.sink.truncate(outputs, i, limit=0)
        return True

    def _abort(  # noqa: PLR0917 - one call site, every argument a piece of the aborted transaction
        self,
        error: KafkaError,
        batch: list[Message],
        meta: Meta,
        outputs: Outputs,
        in_flight: InFlight,
        taken: dict[TP, Any],
    ) -> None:
        """Abort, take the batch back from the breaker, note refused records, rewind with backoff."""
        self.producer.abort_transaction(30)
        self.producer.poll(0)  # the aborted outputs' reports
        self.breaker.restore(taken)
        self.metrics.aborted()
        refused = self._note_suspects(outputs, in_flight.failures)
        delay = self._retry_backoff.next() if self._retry_backoff.attempts or not refused else 0.0
        if not refused and self._retry_backoff.attempts == 1:
            delay = 0.0  # one abort (a rebalance moved the group on) is retried at once
        log.warning("transaction aborted: rewinding the batch",
                    extra={"error": faults.describe(error), "retry_in_s": delay})  # fmt: skip
        if self._retry_backoff.attempts >= 3:
            self.health.set_outputs_down(f"{self._retry_backoff.attempts} transactions aborted in a row: "
                                         f"{faults.describe(error)}")  # fmt: skip
        points = dict(meta.first_offsets)
        _merge_min(points, self._drop_pending())
        self._seek(points)
        self._resume_at = time.monotonic() + delay
        del batch

    def _note_suspects(self, outputs: Outputs | None, failed: list[Failure]) -> int:
        """Record-fault failures: their inputs become suspects (produced alone on the replay). How many."""
        refused = [f for f in failed if faults.is_record_fault(f.error)]
        self.metrics.output_failures("record", len(refused))
        self.metrics.output_failures("broker", len(failed) - len(refused))
        matched: set[int] = set()
        for failure in refused if outputs is not None else ():
            assert outputs is not None
            i = outputs.find(failure, exclude=matched)
            if i is not None:
                matched.add(i)
                self.suspects[_coordinates(outputs.batch[outputs.rows[i]])] = faults.describe(failure.error)
        return len(refused)

    # --- committing and rewinding (at-least-once) -------------------------------------------------------

    def _settle(self, force: bool = False) -> None:
        """Commit, per assigned partition, the point its delivered outputs reached, unless confirmed; when
        an output failed, start rewinding instead of going on."""
        if self.tracker.failing() and not self.rewinding:
            self._start_rewind()
        if self._delivered_at_rewind is not None and self.tracker.delivered > self._delivered_at_rewind:
            self._delivered_at_rewind = None  # a batch went through since: outputs flow again
            self._retry_backoff.reset()
            self.health.set_outputs_down(None)
        now = time.monotonic()
        if self.breaker.open or (
            not force and (now - self._last_commit) * 1000 < self.settings.commit_interval_ms
        ):
            return
        self._last_commit = now
        points = self.tracker.to_commit(self.assigned)
        if points and not self.settings.unsafe_commit_on_receipt:
            self._commit([TopicPartition(t, p, o) for (t, p), o in points.items()], wait=force)

    def _start_rewind(self) -> None:
        self.rewinding = True
        self.producer.purge(in_queue=True, in_flight=False)
        self.backlog = None  # its batch is tracked: it is rewound with the others
        _merge_min(self._rewind_extra, self._drop_pending())
        failure = self.tracker.failures()[0]
        reason = f"{failure.topic}: {faults.describe(failure.error)}"
        log.warning("an output was not delivered: rewinding", extra={"error": reason})
        self.health.set_outputs_down(reason)
        self._pause()

    def _finish_rewind(self) -> None:
        """Once every output in flight has its report: commit what was delivered, seek back the rest."""
        if self.tracker.outstanding > 0:
            return
        points, failed, outputs = self.tracker.rewind()
        refused = sum(self._note_suspects(out, fails) for out, fails in outputs)
        _merge_min(points, self._rewind_extra)
        self._rewind_extra = {}
        self._settle(force=True)
        self._seek(points)
        self.sink.forget_output_partitions()  # the topic may have been re-created
        delay = self._retry_backoff.next() if len(failed) > refused else 0.0
        self.metrics.rewound()
        extra = {"partitions": len(points), "suspects": len(self.suspects), "retry_in_s": delay}
        log.warning("rewound to the first undelivered outputs", extra=extra)
        self.rewinding = False
        self._delivered_at_rewind = self.tracker.delivered
        self._resume_at = time.monotonic() + delay

    def _seek(self, points: dict[TP, int]) -> None:
        for (topic, partition), offset in points.items():
            if (topic, partition) in self.assigned:
                self.consumer.seek(TopicPartition(topic, partition, offset))

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
            return
        for tp in partitions or ():
            key = (tp.topic, tp.partition)
            if tp.error is None and tp.offset >= 0 and key in self.assigned:
                self.tracker.confirm(key, tp.offset)

    def _flush(self, budget_s: float) -> None:
        """Serve deliveries until every output is acknowledged, one failed, or the budget is spent."""
        deadline = time.monotonic() + budget_s
        while self.tracker.outstanding > 0 and not self.tracker.failing() and time.monotonic() < deadline:
            self.health.beat()
            if self.backlog is not None:
                self.backlog = self.sink.resume(self.backlog)
            self.producer.poll(0.05)

    # --- rebalances -------------------------------------------------------------------------------------

    def _on_assign(self, consumer: ConsumerClient, partitions: list[TopicPartition]) -> None:
        fresh = {(tp.topic, tp.partition) for tp in partitions}
        self.tracker.forget(fresh)  # nothing known from an earlier ownership may be committed now
        self.breaker.forget(fresh)
        self.assigned.update(fresh)
        self.metrics.rebalance("assign", len(partitions))
        self._publish_assignment()
        if self.paused:
            consumer.pause(partitions)
        log.info("partitions assigned", extra={"partitions": _names(partitions)})

    def _on_revoke(self, consumer: ConsumerClient, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self._gone |= revoked
        self._drop_pending(revoked)
        if not self.exactly_once and not self.breaker.open and not self.failed:
            self._flush(self.settings.revoke_budget_ms / 1000)
            self._commit_delivered(revoked)
        self._forget(revoked)
        self.metrics.rebalance("revoke", len(partitions))
        self._publish_assignment()
        log.info("partitions revoked", extra={"partitions": _names(partitions)})

    def _commit_delivered(self, partitions: Iterable[TP]) -> None:
        points = self.tracker.to_commit(partitions)
        if points and not self.settings.unsafe_commit_on_receipt:
            self._commit([TopicPartition(t, p, o) for (t, p), o in points.items()], wait=True)

    def _on_lost(self, _consumer: ConsumerClient, partitions: list[TopicPartition]) -> None:
        lost = {(tp.topic, tp.partition) for tp in partitions}
        self._gone |= lost
        self._drop_pending(lost)
        self._forget(lost)
        self.metrics.rebalance("lost", len(partitions))
        self._publish_assignment()
        log.warning("partitions lost: in-flight work dropped", extra={"partitions": _names(partitions)})

    def _forget(self, partitions: set[TP]) -> None:
        """Partitions no longer ours: their offsets are not ours to commit, their counts not ours to keep."""
        self.tracker.forget(partitions)
        self.breaker.forget(partitions)
        for tp in partitions:
            self._rewind_extra.pop(tp, None)
        self.assigned -= partitions

    def _publish_assignment(self) -> None:
        self.metrics.set_assigned(len(self.assigned))
        self.health.set_assigned(len(self.assigned))

    def _on_producer_error(self, error: KafkaError) -> None:
        """A fatal producer error (fenced): the loop stops at its next turn."""
        if error.fatal():
            reason = faults.fenced_reason(error, self.settings.effective_transactional_id()) or str(error)
            self._producer_fatal = reason
            self.health.set_fatal(reason)
        self._on_client_error(error)

    def _on_client_error(self, error: KafkaError) -> None:
        if error.fatal():
            self.health.set_fatal(str(error))
        log.warning("kafka client error", extra={"error": str(error)})

    # --- backpressure, lag, shutdown --------------------------------------------------------------------

    def _flow(self) -> None:
        """Pause or resume the partitions: held while waiting on something, and above
        ``batch.max_in_flight`` unacknowledged outputs until half of them are acknowledged."""
        outstanding = len(self.producer) if self.exactly_once else self.tracker.outstanding
        limit = self.settings.batch.max_in_flight
        self._over_limit = outstanding > limit or (self._over_limit and outstanding > limit // 2)
        self._watch_outputs(outstanding)
        wanted = self._holding() or self._over_limit
        if wanted and not self.paused:
            self._pause()
        elif not wanted and self.paused:
            self._resume()

    def _watch_outputs(self, outstanding: int) -> None:
        """Not ready while outputs are in flight and none was acknowledged for ``OUTPUT_STALL_S``."""
        count, since = self._outstanding
        now = time.monotonic()
        if outstanding < count or outstanding == 0:
            if count and now - since >= OUTPUT_STALL_S and not self.rewinding:
                self.health.set_outputs_down(None)
            self._outstanding = (outstanding, now)
        elif outstanding > count:
            self._outstanding = (outstanding, since)
        elif now - since >= OUTPUT_STALL_S and not self.rewinding:
            self.health.set_outputs_down(
                f"{outstanding} outputs waiting on the broker for {now - since:.0f} s"
            )

    def _resume(self) -> None:
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
        """SIGTERM: score what was consumed (unless waiting on something), deliver it, commit it."""
        if self.pending and not self._holding():
            try:
                self._process(*self._take_pending())
            except RegistryUnavailable as exc:
                log.warning("stopping without scoring what waits for the registry", extra={"error": str(exc)})
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


def _abortable(exc: KafkaException) -> bool:
    error: KafkaError = exc.args[0]
    return bool(error.txn_requires_abort()) and not error.fatal()


def _coordinates(message: Message) -> Coordinates:
    return message.topic(), message.partition(), message.offset()  # type: ignore[return-value]


def _merge_min(into: dict[TP, int], points: dict[TP, int]) -> None:
    for tp, offset in points.items():
        into[tp] = min(offset, into.get(tp, offset))


def _names(partitions: list[TopicPartition]) -> list[str]:
    return [f"{tp.topic}[{tp.partition}]" for tp in partitions]
