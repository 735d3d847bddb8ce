"""A worker in a thread over the in-memory broker: what the loop's ordering tests are made of.

``World`` holds an ``InMemoryBroker`` with an input topic, a score topic and a dead-letter topic, a tiny
graph (``x`` parsed as a number, ``y = 2 x``; a value that does not parse is rejected by the graph), the
worker's settings, and a ``Worker`` running ``run()`` in a thread. Plain Avro by default; with a
``FlakyRegistry`` the input is Confluent-framed and the registry can be switched off. Events are written by
the test straight into the broker; what the worker wrote is read back from it.
"""

from __future__ import annotations

import io
import json
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fastavro
from confluent_kafka import KafkaError

from worker.avro.decoder import BatchDecoder
from worker.avro.encoder import ScoreEncoder
from worker.avro.schema import AvroSchema
from worker.errors import RegistryUnavailable
from worker.graph import InMemoryModels, compile_graph, load_graph
from worker.runtime.config import Settings
from worker.runtime.health import Health
from worker.runtime.inmemory import InMemoryBroker
from worker.runtime.loop import Worker
from worker.runtime.metrics import Metrics
from worker.runtime.pipeline import Pipeline

EVENT = {"type": "record", "name": "Event", "fields": [
    {"name": "id", "type": "string"}, {"name": "x", "type": "string"}]}  # fmt: skip
SCORE = {"type": "record", "name": "Score", "fields": [{"name": "id", "type": "string"},
    {"name": "y", "type": ["null", "double"], "default": None}]}  # fmt: skip
GRAPH = {
    "name": "double",
    "inputs": [{"name": "id", "dtype": "string"}, {"name": "x", "dtype": "string"}],
    "nodes": [
        {"id": "parse", "kind": "astype", "columns": ["x"], "dtype": "float64"},
        {"id": "twice", "kind": "expr", "expr": "x * 2", "output": "y"},
    ],
    "outputs": [{"name": "id", "dtype": "string"}, {"name": "y", "dtype": "float64", "nullable": True}],
}
SCHEMA_ID = 7
TIMEOUT_S = 15.0


class FlakyRegistry:
    """A registry that answers the event schema for any id, and that a test switches off and on."""

    def __init__(self) -> None:
        self.up = True
        self.calls = 0
        self._schema = AvroSchema.parse(EVENT)

    def schema_by_id(self, schema_id: int) -> AvroSchema:
        self.calls += 1
        if not self.up:
            raise RegistryUnavailable("registry down for the test")
        return self._schema


def encode(event: dict[str, Any], *, schema_id: int | None) -> bytes:
    """Plain Avro, or Confluent-framed with ``schema_id``."""
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(EVENT), event)
    return (b"" if schema_id is None else b"\x00" + struct.pack(">I", schema_id)) + out.getvalue()


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float | None = None) -> None:
    timeout_s = min(timeout_s or TIMEOUT_S, TIMEOUT_S)  # TIMEOUT_S is lowered for negative controls
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


class World:
    """See the module docstring. ``settings`` overrides are merged into the worker's settings."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        partitions: int = 2,
        registry: FlakyRegistry | None = None,
        **settings: Any,
    ) -> None:
        self.broker = InMemoryBroker()
        self.partitions = partitions
        for topic in ("in", "scores", "dlq"):
            self.broker.create_topic(topic, partitions)
        self.registry = registry
        (tmp_path / "event.avsc").write_text(json.dumps(EVENT))
        (tmp_path / "score.avsc").write_text(json.dumps(SCORE))
        (tmp_path / "graph.json").write_text(json.dumps(GRAPH))
        framing = "confluent" if registry is not None else "plain"
        values: dict[str, Any] = {
            "group_id": "g",
            "input": {"topics": ["in"], "reader_schema": tmp_path / "event.avsc", "framing": framing},
            "output": {"topic": "scores", "schema": tmp_path / "score.avsc", "framing": "plain"},
            "dead_letter": {"topic": "dlq"},
            "graph": tmp_path / "graph.json",
            "metrics_port": 0,
            "commit_interval_ms": 20,
            "transactional_id": "t-0",
        }
        for key, value in settings.items():
            values[key] = {**values[key], **value} if isinstance(value, dict) and key in values else value
        self.settings = Settings(**values)
        self.health = Health(self.settings.stall_after_s)
        self.metrics = Metrics()
        self.worker: Worker | None = None
        self.thread: threading.Thread | None = None
        self.exit_code: int | None = None
        self.raised: BaseException | None = None
        self.next_id = 0

    def pipeline(self, graph: dict[str, Any] = GRAPH) -> Pipeline:
        reader = AvroSchema.parse(EVENT)
        if self.registry is not None:
            decoder = BatchDecoder(reader, registry=self.registry)
        else:
            decoder = BatchDecoder(reader, writer=reader)
        compiled = compile_graph(load_graph(graph), InMemoryModels())
        return Pipeline(decoder, compiled, ScoreEncoder(AvroSchema.parse(SCORE)))

    # --- the worker -------------------------------------------------------------------------------------

    def start(self, worker_type: type[Worker] = Worker) -> Worker:
        self.worker = worker_type(
            self.settings, self.pipeline(), self.metrics, self.health, clients=self.broker.clients()
        )
        self.thread = threading.Thread(target=self._run, name="worker", daemon=True)
        self.thread.start()
        return self.worker

    def _run(self) -> None:
        assert self.worker is not None
        try:
            self.exit_code = self.worker.run()
        except BaseException as exc:  # handed to the test by stop()
            self.raised = exc

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """Ask the worker to drain and stop (as SIGTERM does); its exit code."""
        assert self.worker is not None and self.thread is not None
        self.broker.release()  # a worker stuck on held deliveries can then stop
        self.worker.stop()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the worker did not stop"
        if self.raised is not None:
            raise self.raised
        return self.exit_code

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def wait_ready(self) -> None:
        wait_until(lambda: self.health.readiness()[0], "the worker to be ready")

    # --- events in and out ------------------------------------------------------------------------------

    def produce(
        self,
        n: int,
        *,
        partition: int = 0,
        bad: Callable[[int], bool] = lambda _i: False,
        schema_id: int = SCHEMA_ID,
    ) -> list[str]:
        """Write ``n`` events to ``partition``; those for which ``bad(i)`` holds do not parse. Their ids.

        Framed with ``schema_id`` when the world has a registry (which knows every id)."""
        ids = []
        framing = schema_id if self.registry is not None else None
        for i in range(n):
            event_id = f"e{self.next_id}"
            self.next_id += 1
            event = {"id": event_id, "x": "nan-ish" if bad(i) else str(self.next_id)}
            value = encode(event, schema_id=framing)
            self.broker.produce("in", value, event_id.encode(), partition=partition)
            ids.append(event_id)
        return ids

    def scores(self) -> list[tuple[int, str, dict[str, str]]]:
        """(partition, score id, headers) of every visible score, in partition then offset order."""
        schema = fastavro.parse_schema(SCORE)
        read = fastavro.schemaless_reader
        return [
            (p, read(io.BytesIO(r.value or b""), schema, None)["id"], dict_of(r.headers))  # type: ignore[index,call-overload]
            for p, _, r in self.broker.visible("scores")
        ]

    def dead_letters(self) -> list[dict[str, str]]:
        dead = self.broker.visible("dlq")
        return [dict_of(r.headers) | {"key": (r.key or b"").decode()} for _, _, r in dead]

    def committed(self) -> dict[int, int]:
        return self.broker.committed("g", "in")

    def total_committed(self) -> int:
        return sum(self.committed().values())

    def answered(self) -> dict[str, int]:
        """How many outputs (score or dead letter) each event id got."""
        counts: dict[str, int] = {}
        for _, event_id, _ in self.scores():
            counts[event_id] = counts.get(event_id, 0) + 1
        for dead in self.dead_letters():
            counts[dead["key"]] = counts.get(dead["key"], 0) + 1
        return counts


def dict_of(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    return {k: v.decode() for k, v in headers or ()}


@contextmanager
def running(world: World, worker_type: type[Worker] = Worker) -> Iterator[Worker]:
    """The worker started, ready, and stopped (its exit code checked by the caller) after the block."""
    worker = world.start(worker_type)
    try:
        world.wait_ready()
        yield worker
    finally:
        if world.running:
            world.stop()


def kafka_error(code: int, **flags: bool) -> KafkaError:
    return KafkaError(code, **flags)
