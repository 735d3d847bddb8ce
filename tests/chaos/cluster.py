"""Broker control for the chaos tests: process faults by KRaft node id, and what the cluster says about them.

``Cluster(stack)`` acts on one stack of scripts/services.py, at any ports (its run folder is
``.services/run-<first broker port>``). ``pid``, ``sigkill``, ``sigstop`` and ``sigcont`` call the services
script's broker-control functions; ``restart`` runs ``services.py restart-broker``, which starts the broker
again from its recorded command line on its existing data, so that the broker is not a child of the test
process (it outlives the session as the rest of the stack does, and never becomes pytest's zombie).
``wait_broker_registered``, ``leader_of``, ``wait_new_leader`` and ``wait_in_sync`` read metadata through an
AdminClient on the main listener; ``heal`` resumes or restarts every broker, for a test's teardown.
Every wait is bounded and raises TimeoutError with what it saw last. Blocking; called from the test thread.
``holding_stack(run)`` holds the stack's chaos lock for a test session: engineers share the chaos stack,
and another session's ``services.py up`` would otherwise restart it as half-dead while a broker is down on
purpose, or its teardown heal a broker this session killed.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Protocol, TypeVar

from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "services.py"
LOCK_WAIT_S = float(os.environ.get("RTML_CHAOS_LOCK_WAIT_S", "240"))
METADATA_TIMEOUT_S = 3.0  # per answer: a paused broker must not hold a wait for longer
T = TypeVar("T")


class StackLike(Protocol):
    """What this module uses of scripts/services.py's ``Stack``."""

    brokers: int
    kafka_port: int

    @property
    def run(self) -> Path: ...

    @property
    def bootstrap(self) -> str: ...


def load_services() -> ModuleType:
    """scripts/services.py as a module (it is a script, not a package), loaded once per process."""
    if (loaded := sys.modules.get("services_script")) is not None:
        return loaded
    spec = importlib.util.spec_from_file_location("services_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["services_script"] = module  # the dataclasses resolve their module while executing
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def holding_stack(run: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the stack's chaos lock while the block runs. Another session on the same stack waits for it (at
    most ``wait_s``, then TimeoutError naming the holder), and ``services.py up`` refuses to restart a stack
    held by another process. The lock is the process's: a killed session leaves none behind."""
    run.mkdir(parents=True, exist_ok=True)
    with open(load_services().chaos_lock_file(run), "a+") as lock:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    lock.seek(0)
                    holder = lock.read().strip() or "?"
                    raise TimeoutError(
                        f"a chaos session (pid {holder}) still holds {run} after {wait_s:.0f}s"
                    ) from None
                time.sleep(1)
        lock.truncate(0)
        lock.write(str(os.getpid()))  # for the message of whoever waits, and for services.py up
        lock.flush()
        try:
            yield
        finally:
            lock.truncate(0)
            fcntl.flock(lock, fcntl.LOCK_UN)


def poll(read: Callable[[], T | None], timeout_s: float, what: str, last: Callable[[], object]) -> T:
    """The first non-None answer of ``read`` within ``timeout_s``; TimeoutError naming ``last()`` if none."""
    deadline = time.monotonic() + timeout_s
    while (answer := read()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout_s:.0f}s; last seen: {last()}")
        time.sleep(0.1)
    return answer


class Cluster:
    def __init__(self, stack: StackLike) -> None:
        self.stack = stack
        self.services = load_services()
        # A request unanswered for 2 s drops its connection, so a paused broker is not asked again and again.
        admin = {"bootstrap.servers": stack.bootstrap, "socket.timeout.ms": 2000, "logger": _librdkafka_log}
        self.admin = AdminClient(admin)
        self._last: object = None

    @property
    def node_ids(self) -> list[int]:
        return list(range(1, self.stack.brokers + 1))

    # --- processes ---

    def pid(self, node_id: int) -> int:
        return int(self.services.broker_pid(self.stack.run, node_id))

    def running(self, node_id: int) -> bool:
        return self.services.our_pid(self.stack.run, self.services.broker_name(node_id)) is not None

    def sigkill(self, node_id: int) -> None:
        self.services.kill_broker(self.stack.run, node_id)

    def sigstop(self, node_id: int) -> None:
        self.services.pause_broker(self.stack.run, node_id)

    def sigcont(self, node_id: int) -> None:
        self.services.resume_broker(self.stack.run, node_id)

    def restart(self, node_id: int) -> None:
        cmd = [sys.executable, str(SCRIPT), "restart-broker", "--kafka-port", str(self.stack.kafka_port)]
        cmd += ["--node", str(node_id)]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"restarting node {node_id} failed: {done.stderr.strip()}")

    def heal(self, timeout_s: float = 90.0) -> None:
        """Resume every paused broker and restart every dead one, then wait until all are registered."""
        for node in self.node_ids:
            if self.running(node):
                self.sigcont(node)
            else:
                self.restart(node)
        for node in self.node_ids:
            self.wait_broker_registered(node, timeout_s)

    # --- metadata ---

    def metadata(self, topic: str | None = None) -> ClusterMetadata | None:
        """One metadata answer, or None when no broker answered in time (one may be paused)."""
        try:
            return self.admin.list_topics(topic, timeout=METADATA_TIMEOUT_S)
        except Exception as exc:  # KafkaException of every kind: the caller polls again
            self._last = exc
            return None

    def wait_broker_registered(self, node_id: int, timeout_s: float = 60.0) -> None:
        """Until metadata lists the broker. A broker just killed stays listed until the controller fences
        it (broker.session.timeout.ms, 9 s by default), so call this after it was seen gone or replaced."""

        def listed() -> bool | None:
            found = self.metadata()
            if found is not None:
                self._last = sorted(found.brokers)
            return True if found is not None and node_id in found.brokers else None

        poll(listed, timeout_s, f"node {node_id} not registered", lambda: self._last)

    def leader_of(self, topic: str, partition: int) -> int:
        """The partition's leader as metadata names it now: a node id, or -1 while there is none."""
        found = poll(lambda: self.metadata(topic), 30.0, "no metadata", lambda: self._last)
        return int(found.topics[topic].partitions[partition].leader)

    def wait_new_leader(self, topic: str, partition: int, old: int, timeout_s: float = 60.0) -> int:
        """Until the partition is led by a node other than ``old``; returns that node."""

        def new_leader() -> int | None:
            self._last = leader = self.leader_of(topic, partition)
            return leader if leader not in (old, -1) else None

        return poll(new_leader, timeout_s, f"{topic}[{partition}] still led by {old}", lambda: self._last)

    def wait_in_sync(self, topic: str, timeout_s: float = 60.0) -> None:
        """Until every partition's in-sync replicas are all its replicas again."""

        def in_sync() -> bool | None:
            found = self.metadata(topic)
            if found is None:
                return None
            partitions = found.topics[topic].partitions.values()
            self._last = {p.id: (sorted(p.replicas), sorted(p.isrs)) for p in partitions}
            return True if partitions and all(set(p.isrs) == set(p.replicas) for p in partitions) else None

        poll(in_sync, timeout_s, f"{topic} not in sync", lambda: self._last)

    # --- topics ---

    def create_topic(
        self, name: str, partitions: int = 1, replication: int = 3, config: dict[str, str] | None = None
    ) -> None:
        futures = self.admin.create_topics([NewTopic(name, partitions, replication, config=config or {})])
        futures[name].result(timeout=30)
        self.wait_in_sync(name, 30)

    def delete_topics(self, names: list[str], settle_s: float = 2.0) -> None:
        """Delete ``names`` and wait until metadata no longer lists them, then ``settle_s`` more, so that
        every broker has applied the deletion before the scenario goes on.

        A CI run once lost 2 scores (input 4:152 and 4:153, the first events of their partition after the
        deletion), blamed then on leaders acknowledging writes the deletion erased. Debug runs showed another
        cause: librdkafka's implicit ack of batches the recreated topic never wrote (all 15 losses of 3 runs),
        fixed in the worker (``worker.runtime.tracker.IMPLICIT_ACK``)."""
        for future in self.admin.delete_topics(names, operation_timeout=30).values():
            future.result(timeout=30)

        def gone() -> bool | None:
            found = self.metadata()
            self._last = None if found is None else sorted(set(names) & set(found.topics))
            return True if found is not None and not set(names) & set(found.topics) else None

        poll(gone, 30.0, f"{names} still listed", lambda: self._last)
        time.sleep(settle_s)


_librdkafka_log = logging.getLogger("chaos.librdkafka")  # captured by pytest: shown when a test fails
