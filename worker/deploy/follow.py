"""A replica following a deployment: the active version at start, then every version made active later.

At start the replica reads the deployment topic to its end, like a table, and builds the active version
(``start``); without one it does not start, naming the deployment. Then a thread of its own (``follow``)
keeps reading the topic. When the deployment's pointer names a version the replica does not run, that
thread, off the loop: fetches the models (each verified against its sha256, through the store's cache),
compiles the graph, checks the whole contract (reader schema to graph inputs, graph outputs to the output
schema, the registry), and hands the pipeline to the loop, which swaps it in at its next batch boundary
(``Worker.swap_pipeline``; in exactly-once mode that is between transactions, and in at-least-once mode
nothing is rewound or scored twice). It waits for the loop to take it before it looks at the topic again.

A version that fails any of that is refused on this replica, with its reason in the log, and never tried
again; the replica keeps scoring with the version it has. A record the replica cannot read is refused the
same way (``records.parse``). A registry that does not answer is a moment, not a refusal: the build is
tried again after a backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future

from confluent_kafka import Consumer, TopicPartition

from worker.avro.schema import AvroSchema, SchemaParseError
from worker.deploy.records import Refused, Table, VersionRecord
from worker.deploy.status import HEARTBEAT_S, ReplicaStatus, StatusWriter, now, replica_id
from worker.deploy.topic import read_table
from worker.errors import ConfigError
from worker.runtime.backoff import Backoff
from worker.runtime.build import GraphSource, RegistryDown
from worker.runtime.config import Settings
from worker.runtime.metrics import Metrics
from worker.runtime.pipeline import Pipeline

log = logging.getLogger("worker.deploy")

POLL_S = 0.5
Build = Callable[[GraphSource], Pipeline]
Swap = Callable[[Pipeline], "Future[bool]"]


def source_of(record: VersionRecord, number: int) -> GraphSource:
    """The graph and schemas of a version, labelled ``<name>@<number>``; ``ConfigError`` naming the schema."""
    schemas = []
    for field, raw in (("reader_schema", record.reader_schema), ("output_schema", record.output_schema)):
        try:
            schemas.append(AvroSchema.parse(raw))
        except SchemaParseError as exc:
            raise ConfigError(f"version {number}: {field}: {exc}", field="deployment") from exc
    return GraphSource(record.graph, schemas[0], schemas[1], f"{record.deployment}@{number}")


def read_active(settings: Settings) -> tuple[Table, int, VersionRecord]:
    """The deployment topic read to its end, the offset after it, and ``settings.deployment``'s active
    version; ``ConfigError`` naming the deployment when it has none."""
    name, topic = settings.deployment, settings.deployments.topic
    table, offset = read_table(settings.kafka.client_config("consumer"), topic)
    deployment = table.get(name or "")
    version = deployment.active_version() if deployment is not None else None
    if version is None or deployment is None:
        raise ConfigError(f"{name} has no active version in {topic}: publish one with "
                          f"`rtml-worker deploy publish {name} GRAPH`", field="deployment")  # fmt: skip
    return table, offset, version


def version_source(table: Table, version: VersionRecord) -> GraphSource:
    deployment = table.get(version.deployment)
    return source_of(version, deployment.number(version.version_id) if deployment is not None else 0)


class Follower:
    """Follows ``settings.deployment`` in its topic; ``build`` makes the pipeline of a version."""

    def __init__(
        self,
        settings: Settings,
        build: Build,
        status: StatusWriter | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if settings.deployment is None:
            raise ConfigError("a follower needs a deployment name", field="deployment")
        self._settings = settings
        self._group_id = settings.group_id
        self.name = settings.deployment
        self.topic = settings.deployments.topic
        self._config = settings.kafka.client_config("consumer")
        self._build = build
        self.table = Table()
        self.offset = 0  # the next offset of the topic to read
        self.running: str | None = None  # the version id in use
        self.refused: dict[str, str] = {}  # version id -> why this replica refused it
        self._retry_at = 0.0
        self._backoff = Backoff(first_s=1.0, max_s=30.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._status = status
        self._metrics = metrics
        self._replica = replica_id(settings)
        self._member_id: Callable[[], str] = lambda: ""
        # (number, graph digest, since when) of the version in use, for the status
        self._in_use: tuple[int, str, str] | None = None
        self._reported = 0.0
        self._reported_member = ""
        self._reported_switched = 0
        self._switched: Callable[[], Mapping[tuple[str, int], int]] = dict
        self._suspend: Callable[[str], object] = lambda _reason: None

    def start(self) -> Pipeline:
        """Read the topic to its end and build the active version: the replica's first pipeline."""
        self.table, self.offset, version = read_active(self._settings)
        pipeline = self._build(self._source(version))
        self._use(version, pipeline)
        log.info("deployment version built", extra={"deployment": pipeline.deployment})
        return pipeline

    def follow(
        self,
        swap: Swap,
        on_crash: Callable[[str], None],
        member_id: Callable[[], str],
        suspend: Callable[[str], object] = lambda _reason: None,
        switched: Callable[[], Mapping[tuple[str, int], int]] = dict,
    ) -> None:
        """Keep following the topic on a thread of its own, handing every new active version to ``swap``;
        ``on_crash`` hears of a bug that ended the thread (the replica must not go on unfollowing),
        ``member_id`` tells the replica's group member id for its status, and ``suspend`` pauses scoring
        when the deployment is deleted (until a version is published again)."""
        self._member_id = member_id
        self._suspend = suspend
        self._switched = switched
        self._thread = threading.Thread(
            target=self._run, args=(swap, on_crash), name="deployment-follower", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # --- the follower's thread ----------------------------------------------------------------------------

    def _run(self, swap: Swap, on_crash: Callable[[str], None]) -> None:
        consumer = Consumer({**self._config, "group.id": f"rtml-follower-{self.name}",
                             "enable.auto.commit": False, "isolation.level": "read_committed"})  # fmt: skip
        try:
            consumer.assign([TopicPartition(self.topic, 0, self.offset)])
            while not self._stop.is_set():
                message = consumer.poll(POLL_S)
                if message is not None:
                    self._take(message.key(), message.value(), message.offset(), message.error())
                self.step(swap)
                joined = self._member_id() != self._reported_member
                first = len(self._switched()) != self._reported_switched  # a partition's first score
                if joined or first or time.monotonic() - self._reported > HEARTBEAT_S:
                    self.report()
        except Exception as exc:  # a bug: told to the replica, which must not go on without following
            log.exception("the deployment follower crashed", extra={"deployment": self.name})
            on_crash(f"deployment follower: {type(exc).__name__}: {exc}")
        finally:
            consumer.close()
            if self._status is not None:
                self._status.close()

    def _take(self, key: bytes | None, value: bytes | None, offset: int | None, error: object) -> None:
        if error is not None:
            log.warning("deployment topic read failed; retrying", extra={"error": str(error)})
            return
        if offset is None:
            return
        self.offset = offset + 1
        parsed = self.table.apply(key, value, offset)
        if isinstance(parsed, Refused) and parsed.key.startswith(f"{self.name}/"):
            if self._metrics is not None:
                self._metrics.deployment_refused()
            log.error(
                "deployment record refused",
                extra={"key": parsed.key, "offset": offset, "reason": parsed.reason},
            )

    def step(self, swap: Swap) -> bool:
        """Switch to the active version if it is new here and builds; True when a switch was made."""
        version = self._active()
        if version is None:
            deployment = self.table.get(self.name)
            if (deployment is None or deployment.active is None) and self.running is not None:
                log.warning("deployment deleted: this replica commits what is done and pauses until a "
                            "version is published", extra={"deployment": self.name})  # fmt: skip
                self.running, self._in_use = None, None
                if self._metrics is not None:
                    self._metrics.deployment_stopped()
                self._suspend(f"deployment {self.name} deleted; publish a version to resume")
                self.report()
            return False
        if version.version_id == self.running or version.version_id in self.refused:
            return False
        if time.monotonic() < self._retry_at:
            return False
        try:
            pipeline = self._build(self._source(version))
        except RegistryDown as exc:
            delay = self._backoff.next()
            self._retry_at = time.monotonic() + delay
            log.warning(
                "registry down while building a version: retrying",
                extra={"error": str(exc), "retry_in_s": delay},
            )
            return False
        except (
            ConfigError
        ) as exc:  # GraphError and ModelError too: the version is wrong here, not the replica
            self.refused[version.version_id] = str(exc)
            extra = {"deployment": self.name, "version_id": version.version_id, "reason": str(exc)}
            log.error("deployment version refused; scoring goes on with the version in use", extra=extra)
            if self._metrics is not None:
                self._metrics.deployment_refused()
            self.report()
            return False
        self._backoff.reset()
        taken = swap(pipeline)
        log.info("deployment version ready: the loop takes it at its next batch",
                 extra={"deployment": pipeline.deployment})  # fmt: skip
        while not taken.done():
            if self._stop.wait(POLL_S):
                return False
        if taken.result():
            self._use(version, pipeline)
            if self._metrics is not None:
                self._metrics.deployment_swapped()
            log.info("deployment version handed to the loop", extra={"deployment": pipeline.deployment})
            self.report()
        return bool(taken.result())

    def _use(self, version: VersionRecord, pipeline: Pipeline) -> None:
        self.running = version.version_id
        deployment = self.table.get(self.name)
        number = deployment.number(version.version_id) if deployment is not None else 0
        self._in_use = (number, pipeline.graph.digest, now())
        if self._metrics is not None and pipeline.deployment is not None:
            self._metrics.deployment_running(pipeline.deployment, pipeline.graph.digest)

    def report(self) -> None:
        """Write this replica's status (no-op without a status writer)."""
        self._reported, self._reported_member = time.monotonic(), self._member_id()
        switched = self._switched()
        self._reported_switched = len(switched)
        if self._status is None:
            return
        number, digest, since = self._in_use if self._in_use is not None else (None, None, None)
        status = ReplicaStatus(
            replica=self._replica,
            member_id=self._reported_member,
            group_id=self._group_id,
            deployment=self.name,
            version_id=self.running,
            version=number,
            graph_digest=digest,
            since=since,
            refused=dict(self.refused),
            switched={f"{t}:{p}": offset for (t, p), offset in switched.items()} if self.running else {},
            state="scoring" if self.running is not None else "paused",
            heartbeat_at=now(),
        )
        self._status.write(status)

    def _active(self) -> VersionRecord | None:
        deployment = self.table.get(self.name)
        return deployment.active_version() if deployment is not None else None

    def _source(self, version: VersionRecord) -> GraphSource:
        return version_source(self.table, version)
