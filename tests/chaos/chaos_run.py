"""One chaos run: topics on the chaos stack, worker replicas, a paced producer, faults, then the verifier.

``ChaosEnv`` is what every run of a session shares (the three-broker stack, its registry, the trained
car-insurance models, a folder). A scenario makes a ``ChaosRun`` per run with a recorded seed, starts it,
injects its faults (timed by the clock or by progress: ``wait_progress``), and ``finish``es it, which waits
until the group has committed every produced event, stops the replicas, reads both output topics with a
fresh read_committed consumer and judges them with the shared verifier (tests/integration/runtime/
verifier.py). ``Row.add`` sums the runs of one scenario into the line the session prints:

    scenario | runs | faults | events | lost | duplicated | wrong | out of order | stalls over 5 s | restarts

While a run goes, ``Progress`` samples the group's committed offsets every 250 ms (a committed offset that
goes down is a failure of its own) and counts stalls: more than 5 s without a commit while produced events
wait. ``Supervisor`` plays the orchestrator: a replica that exits without being told to is counted as a
worker restart and started again. Every wait is bounded; a run that does not finish fails its test with the
replicas' logs. Blocking; called from the test thread.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from harness import (
    BackgroundProducer,
    Planned,
    end_offsets,
    plan_events,
    read_partitions,
    reconcile,
    register_schema,
)
from replicas import Fleet, Replica, write_config
from scenario import CarModels, worker_settings
from verifier import Output, Report, ScoreDecoder, Source, Sources, describe, read_outputs, verify

SAMPLE_EVERY_S = 0.25
STALL_S = 5.0
RENEW_READER_AFTER = 20  # samples failed in a row: the progress reader is made again
FINISH_TIMEOUT_S = 240.0
ROWS: dict[str, Row] = {}  # scenario -> its summed runs, printed at the end of the session


@dataclass
class ChaosEnv:
    """The stack, registry and models every run of the session uses; the topics a test made."""

    bootstrap: str
    registry_url: str
    admin: AdminClient
    models: CarModels
    root: Path
    cluster: Cluster
    created: list[str] = field(default_factory=list)

    def create_topic(self, partitions: int, *, prefix: str, config: Mapping[str, str] | None = None) -> str:
        """A uuid-named topic with replication factor 3 (min.insync.replicas 2 from the brokers)."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.cluster.create_topic(name, partitions, replication=3, config=dict(config or {}))
        self.created.append(name)
        return name

    def recreate_topic(self, name: str, partitions: int) -> None:
        self.cluster.create_topic(name, partitions, replication=3)

    def delete_topic(self, name: str) -> None:
        self.cluster.delete_topics([name])


@dataclass
class Row:
    """One scenario's line of the table, summed over its runs."""

    scenario: str
    runs: int = 0
    faults: int = 0
    events: int = 0
    lost: int = 0
    duplicated: int = 0
    wrong: int = 0
    out_of_order: int = 0
    stalls: int = 0
    restarts: int = 0
    seeds: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    passed: bool = False  # set by check(): only a row whose claims held is kept in the ledger

    @classmethod
    def of(cls, scenario: str) -> Row:
        return ROWS.setdefault(scenario, cls(scenario))

    def check(self, delivery: str, *, in_order: bool = True) -> None:
        """The scenario's claims: nothing lost or wrong, nothing out of order (unless ``in_order`` is
        False), no duplicate in exactly-once mode."""
        assert self.lost == self.wrong == 0, self
        assert self.out_of_order == 0 or not in_order, self
        assert self.duplicated == 0 or delivery != "exactly-once", self
        self.passed = self.runs > 0

    def add(self, result: RunResult, *, restarts_allowed: bool = False) -> None:
        """One run's figures into the row; a run whose workers were restarted fails here, unless allowed."""
        report = result.report
        self.runs += 1
        self.faults += result.faults
        self.events += report.total("inputs")
        self.lost += report.lost
        self.duplicated += report.duplicated
        self.wrong += report.wrong + report.misrouted + report.unknown
        self.out_of_order += report.out_of_order
        self.stalls += result.stalls
        self.restarts += result.restarts
        self.seeds.append(result.seed)
        self.notes.extend(result.notes)
        assert restarts_allowed or result.restarts == 0, result.notes


@dataclass
class RunResult:
    seed: int
    faults: int
    report: Report
    stalls: int
    restarts: int
    exit_codes: dict[str, int]
    went_back: list[tuple[int, int, int]]  # (partition, from, to) of committed offsets that went down
    duplicate_bound: int = 0  # at-least-once: at most this many inputs may be answered twice
    notes: list[str] = field(default_factory=list)


class Progress(threading.Thread):
    """Samples the group's committed offsets and the input's high watermarks every ``SAMPLE_EVERY_S``.

    Through a consumer that never subscribes (so never joins the group), not an AdminClient: librdkafka
    2.16's admin coordinator requests abort the process when a broker dies under them (``Assertion
    eonce->refcnt > 0 failed`` in rd_kafka_enq_once_del_source_return), which took whole test sessions down.
    """

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        super().__init__(name="chaos-progress", daemon=True)
        self.bootstrap, self.group, self.topic, self.partitions = bootstrap, group, topic, partitions
        self.reader = self._reader()
        self.failures = 0  # samples in a row that got no answer
        self.last_error: BaseException | None = None
        self.committed: dict[int, int] = {}
        self.highs: dict[int, int] = {}
        self.went_back: list[tuple[int, int, int]] = []
        self.stalls = 0
        self._halt = threading.Event()
        self._last_advance = time.monotonic()
        self._stalled = False
        self._peak = 0  # the largest lag sampled since the last peak_lag()

    def _reader(self) -> Consumer:
        # A request unanswered for 2 s drops its connection: a paused broker is not waited on for long. And
        # a restarted one is tried again within a second, not librdkafka's 10 s of reconnect backoff, which
        # would be counted as the worker's recovery time.
        return Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group,
                         "enable.auto.commit": False, "socket.timeout.ms": 2000,
                         "reconnect.backoff.max.ms": 1000})  # fmt: skip

    def run(self) -> None:
        while not self._halt.wait(SAMPLE_EVERY_S):
            try:
                committed, highs = self._committed(), self._highs()
            except Exception as exc:  # a broker may be down on purpose: sample again
                self.failures, self.last_error = self.failures + 1, exc
                if self.failures % RENEW_READER_AFTER == 0:
                    self._renew_reader()
                continue
            self.failures = 0
            self._judge(committed, highs)
        self.reader.close()

    def _renew_reader(self) -> None:
        """A new reader in place of one that keeps failing. After a leader bounce the old one once answered
        UNKNOWN_PARTITION for 2 minutes (467 samples in a row, "Failed to get watermark offsets") while every
        replica was ready and reported a lag of 0 to 2: the sample, not the worker, was stuck."""
        old, self.reader = self.reader, self._reader()
        try:
            old.close()
        except Exception as exc:  # closing the stuck one must not stop the sampling
            self.last_error = exc

    def _committed(self) -> dict[int, int]:
        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        return {tp.partition: tp.offset for tp in self.reader.committed(tps, timeout=5) if tp.offset >= 0}

    def _highs(self) -> dict[int, int]:
        watermarks = self.reader.get_watermark_offsets
        return {p: watermarks(TopicPartition(self.topic, p), timeout=5)[1] for p in range(self.partitions)}

    def _judge(self, committed: dict[int, int], highs: dict[int, int]) -> None:
        now = time.monotonic()
        advanced = False
        for p, offset in committed.items():
            before = self.committed.get(p, -1)
            if offset < before:
                self.went_back.append((p, before, offset))
            advanced |= offset > before
        self.committed = {**self.committed, **committed}
        self.highs = highs
        self._peak = max(self._peak, self.lag())
        waiting = any(highs.get(p, 0) > self.committed.get(p, 0) for p in range(self.partitions))
        if advanced or not waiting:
            self._last_advance, self._stalled = now, False
        elif now - self._last_advance > STALL_S and not self._stalled:
            self.stalls += 1
            self._stalled = True

    def lag(self) -> int:
        """Events produced and not yet committed, as last sampled: what a crash now could answer twice."""
        return sum(max(0, h - self.committed.get(p, 0)) for p, h in self.highs.items())

    def peak_lag(self) -> int:
        """The largest lag sampled since the last call (or the start); starts the next window."""
        peak, self._peak = self._peak, self.lag()
        return peak

    def total_committed(self) -> int:
        return sum(self.committed.values())

    def seconds_since_advance(self) -> float:
        return time.monotonic() - self._last_advance

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(10)


class Supervisor(threading.Thread):
    """Starts again every replica that exited without being told to, and counts it: a worker restart."""

    def __init__(self, fleet: Fleet) -> None:
        super().__init__(name="chaos-supervisor", daemon=True)
        self.fleet = fleet
        self.restarts = 0
        self.exits: list[str] = []
        self.lock = threading.Lock()  # the test thread starts and kills replicas too
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.2):
            with self.lock:
                for replica in self.fleet.replicas:
                    if replica.process is not None and not replica.alive and not replica.expected_exit:
                        self.restarts += 1
                        self.exits.append(
                            f"{replica.name} exited with {replica.returncode}:\n{replica.tail(15)}"
                        )
                        replica.start()

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(10)


class ChaosRun:
    """See the module docstring. ``settings`` are merged into the replicas' worker settings;
    ``topic_config`` gives topic configs by role ("input", "scores", "dead"); ``command`` runs a wrapper of
    the worker instead of ``python -m worker run`` (tests/chaos/faulty_worker.py), with ``env``."""

    def __init__(
        self,
        env: ChaosEnv,
        *,
        seed: int,
        events: int,
        rate: float,
        partitions: int = 12,
        replicas: int = 3,
        settings: Mapping[str, Any] | None = None,
        poison_ratio: float = 0.002,
        topic_config: Mapping[str, Mapping[str, str]] | None = None,
        command: Sequence[str] | None = None,
        replica_env: Mapping[str, str] | None = None,
    ) -> None:
        self.env, self.seed, self.events, self.rate = env, seed, events, rate
        self.partitions = partitions
        self.faults = 0
        self.notes: list[str] = []
        names = {"input": "ch-in", "scores": "ch-scores", "dead": "ch-dlq"}
        configs = dict(topic_config or {})
        self.topics = {
            k: env.create_topic(partitions, prefix=v, config=configs.get(k)) for k, v in names.items()
        }
        self.group = f"ch-{uuid.uuid4().hex[:10]}"
        values = worker_settings(
            env.bootstrap, env.registry_url, group_id=self.group, input_topic=self.topics["input"],
            score_topic=self.topics["scores"], dead_letter_topic=self.topics["dead"],
            graph=env.models.graph_path, store=env.models.store,
        )  # fmt: skip
        _merge(values, settings or {})
        folder = env.root / self.group
        folder.mkdir(parents=True)
        self.config = write_config(folder / "worker.toml", values)
        self.fleet = Fleet(self.config, folder, replicas, self.group, command=command, env=replica_env)
        self.schema_id = register_schema(env.registry_url, f"{self.topics['input']}-value")
        self.planned: list[Planned] = plan_events(
            env.models.graph, events, seed=seed, schema_id=self.schema_id, poison_ratio=poison_ratio
        )
        self.progress = Progress(env.bootstrap, self.group, self.topics["input"], partitions)
        self.supervisor = Supervisor(self.fleet)
        self.decoder = ScoreDecoder(env.registry_url)
        self.producers: list[BackgroundProducer] = []
        self.started = 0.0
        self.duplicate_bound = 0

    # --- the run ---------------------------------------------------------------------------------------

    def start(self, *, replicas: int | None = None, load: bool = True) -> None:
        """Start ``replicas`` of the fleet (all by default), wait until one is ready, then the load: every
        planned event at the run's rate (unless ``load`` is false: the scenario calls ``load`` itself)."""
        for replica in self.fleet.replicas[: len(self.fleet.replicas) if replicas is None else replicas]:
            replica.start()
        self.wait(lambda: bool(self.fleet.ready()), "a ready replica", 90)
        self.progress.start()
        self.supervisor.start()
        self.started = time.monotonic()
        if load:
            self.load(self.planned)

    def load(self, planned: list[Planned]) -> BackgroundProducer:
        """Produce ``planned`` at the run's rate from a thread; ``finish`` collects where they landed."""
        producer = BackgroundProducer(self.env.bootstrap, self.topics["input"], planned, rate_per_s=self.rate)
        self.producers.append(producer)
        return producer

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def wait(self, condition: Callable[[], bool], what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                seen = f"committed {self.progress.committed}, highs {self.progress.highs}, sampling: "
                seen += f"{self.progress.failures} failures in a row, last {self.progress.last_error!r}"
                pytest.fail(f"no {what} within {timeout_s:.0f} s (seed {self.seed}); {seen}\n"
                            f"{self.replica_states()}\n{self.logs()}", pytrace=False)  # fmt: skip
            time.sleep(0.1)

    def replica_states(self) -> str:
        """Each live replica's readiness and partition gauges, for a failure's message."""
        lines = []
        for replica in (r for r in self.fleet.replicas if r.alive and r.process is not None):
            try:
                status, body = replica.process.get("/readyz", timeout_s=2)
                _, metrics = replica.process.get("/metrics", timeout_s=2)
            except OSError as exc:
                lines.append(f"{replica.name}: no answer ({exc})")
                continue
            gauges = [line for line in metrics.decode().splitlines()
                      if line.startswith(("rtml_paused_partitions", "rtml_assigned_partitions",
                                          "rtml_consumer_lag", "rtml_breaker_open"))]  # fmt: skip
            lines.append(f"{replica.name}: readyz {status} {body.decode().strip()}; {'; '.join(gauges)}")
        return "\n".join(lines)

    def wait_progress(self, fraction: float, timeout_s: float = 180.0) -> None:
        """Until the group has committed ``fraction`` of the run's events: faults timed by progress."""
        self.wait(lambda: self.progress.total_committed() >= fraction * self.events,
                  f"{fraction:.0%} of the events committed", timeout_s)  # fmt: skip

    def wait_committed(self, sources: Sources, timeout_s: float = FINISH_TIMEOUT_S) -> None:
        """Until the group has committed past every record of ``sources``."""
        targets = end_offsets(sources, self.partitions)
        self.wait(lambda: all(self.progress.committed.get(p, 0) >= t for p, t in targets.items()),
                  "commit of every event", timeout_s)  # fmt: skip

    def fault(self, note: str | None = None) -> None:
        """Count one injected fault (and keep a note of it for the report)."""
        self.faults += 1
        if note:
            self.notes.append(note)

    def replica(self, i: int) -> Replica:
        return self.fleet.replicas[i]

    def kill(self, replica: Replica, *, restart: bool = True) -> None:
        """SIGKILL ``replica`` (and start it again): a fault, and at-least-once's duplicates' bound grows by
        what was produced and not committed then (plus a second of load, for the sampling's lag)."""
        with self.supervisor.lock:
            self.duplicate_bound += self.progress.lag() + int(self.rate)
            replica.sigkill()
            if restart:
                replica.start()
        self.fault(f"SIGKILL of {replica.name} at {self.elapsed():.0f} s")

    def logs(self) -> str:
        return self.fleet.logs()

    def scores_now(self) -> list[Output]:
        """Every score the score topic holds now (read_committed), e.g. before a scenario deletes it."""
        return read_outputs(self.env.bootstrap, self.topics["scores"], "score", decode=self.decoder)

    def sources(self) -> Sources:
        """Every record the input partitions hold, with what the worker owes it (waits for every producer of
        the run to finish): the delivery reports, checked against the log read back, whose copies of a record
        written twice are inputs too (``harness.reconcile``)."""
        reported: dict[int, dict[int, Source]] = {}
        for producer in self.producers:
            for partition, placed in producer.result(timeout_s=FINISH_TIMEOUT_S).items():
                reported.setdefault(partition, {}).update(placed)
        logs = read_partitions(self.env.bootstrap, self.topics["input"], range(self.partitions))
        sources, copies = reconcile(reported, logs)
        if copies:
            self.notes.append(f"the input producer wrote {copies} records twice; each is an input to answer")
        return sources

    def finish(self, *, earlier: Sequence[Output] = (), verify_timeout_s: float = 180.0) -> RunResult:
        """Wait for every event to be committed, stop the replicas (SIGTERM), verify the outputs.

        ``earlier``: scores read before the scenario deleted the score topic, judged with what it holds now.
        """
        sources = self.sources()
        self.wait_committed(sources)
        self.supervisor.stop()
        running = [r for r in self.fleet.replicas if r.alive]
        for replica in running:
            replica.sigterm()
        codes = {r.name: r.wait(60) for r in running}
        self.progress.stop()
        read = functools.partial(read_outputs, self.env.bootstrap, timeout_s=verify_timeout_s)
        scores = [*earlier, *read(self.topics["scores"], "score", decode=self.decoder)]
        dead = read(self.topics["dead"], "dead_letter")
        digest = self.env.models.graph.digest
        report = verify(sources, scores, dead, input_topic=self.topics["input"],
                        score_partitions=self.partitions, graph_digest=digest)  # fmt: skip
        print(describe(sources, report))
        notes = [*self.notes, *self.supervisor.exits]
        return RunResult(self.seed, self.faults, report, self.progress.stalls, self.supervisor.restarts,
                         codes, self.progress.went_back, self.duplicate_bound, notes)  # fmt: skip

    def __enter__(self) -> ChaosRun:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Teardown, also after a failure: nothing of the run keeps running (the replicas go first)."""
        try:
            self.supervisor.stop()
        finally:
            self.fleet.stop()
            self.progress.stop()
            self.decoder.close()


def seeds(base: int, runs: int) -> list[int]:
    """The recorded seeds of a scenario's runs (printed with its row)."""
    return [base * 1000 + i for i in range(runs)]


def _merge(into: dict[str, Any], extra: Mapping[str, Any]) -> None:
    """``extra`` merged into ``into``, table by table; a None value removes the key."""
    for key, value in extra.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def render(rows: list[Row]) -> list[str]:
    """The table's lines: one per scenario, the seeds and notes below it."""
    columns = ("scenario", "runs", "faults", "events", "lost", "duplicated", "wrong", "out of order",
               "stalls over 5 s", "worker restarts")  # fmt: skip
    cells = [[r.scenario if r.passed else f"{r.scenario} [FAILED]", r.runs, r.faults, r.events, r.lost,
              r.duplicated, r.wrong, r.out_of_order, r.stalls, r.restarts] for r in rows]  # fmt: skip
    widths = [max(len(c), *(len(str(row[i])) for row in cells)) for i, c in enumerate(columns)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    for row in rows:
        lines.append(f"  {row.scenario}: seeds {', '.join(map(str, row.seeds))}")
        lines += [f"    {note.splitlines()[0]}" for note in itertools.islice(row.notes, 5)]
    return lines
