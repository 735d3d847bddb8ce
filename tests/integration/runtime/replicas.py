"""The process side of the streaming tests: worker replicas as real processes, and waiting on their group.

``write_config`` writes the TOML a replica reads; ``Replica`` runs ``python -m worker run --config FILE`` (a
``worker.testing.WorkerProcess`` per start) with its own environment and one log file per start (stdout and
stderr), and can be SIGKILLed, SIGTERMed, waited for and restarted, failing the test when it does not comply;
``Fleet`` holds the replicas of one consumer group, gives each a stable transactional id (so a restarted
replica fences its previous self, as a pod name would), and notices a replica that exits on its own.
``wait_committed`` polls the group's committed offsets until they reach the targets, and fails the test
loudly, with the offsets and the replicas' logs, when the timeout passes or a replica dies.
Blocking; called by the runtime tests only.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from worker.testing import WorkerProcess, WorkerProcessError

ROOT = Path(__file__).resolve().parents[3]
LOG_TAIL_LINES = 40


def write_config(path: Path, settings: Mapping[str, Any]) -> Path:
    """Write ``settings`` (nested dicts of str, int, float, bool and lists) as TOML to ``path``; a key whose
    value is None is left out (its default applies)."""
    lines: list[str] = []
    _toml_table(lines, [], settings)
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml_table(lines: list[str], prefix: list[str], table: Mapping[str, Any]) -> None:
    tables = {k: v for k, v in table.items() if isinstance(v, Mapping)}
    for key, value in table.items():
        if key not in tables and value is not None:
            lines.append(f"{json.dumps(key)} = {_toml_value(value)}")
    for key, value in tables.items():
        lines.append(f"\n[{'.'.join(json.dumps(p) for p in [*prefix, key])}]")
        _toml_table(lines, [*prefix, key], value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


class Replica:
    """One worker process; ``start`` may be called again after it ended (a restart, new log file).

    ``command`` runs instead of ``python -m worker run`` (``--config FILE`` is appended): a wrapper that
    injects faults around the real worker (tests/chaos/faulty_worker.py).
    """

    def __init__(
        self,
        name: str,
        config: Path,
        log_dir: Path,
        env: Mapping[str, str],
        command: Sequence[str] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.log_dir = log_dir
        self.env = dict(env)
        self.command = list(command) if command is not None else None
        self.starts = 0
        self.process: WorkerProcess | None = None  # the current (or last) start
        self.expected_exit = False  # set when the test stops it, so an exit of its own can be noticed

    def start(self) -> None:
        if self.alive:
            raise RuntimeError(f"{self.name} is already running")
        self.starts += 1
        self.expected_exit = False
        log_path = self.log_dir / f"{self.name}.{self.starts}.log"
        if self.command is None:
            self.process = WorkerProcess.start(self.config, log_path, env=self.env, cwd=ROOT)
        else:
            args = [*self.command, "--config", str(self.config)]
            self.process = WorkerProcess(args, log_path, env=self.env, cwd=ROOT)

    @property
    def log_path(self) -> Path | None:
        return None if self.process is None else self.process.log_path

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.alive

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    def sigkill(self) -> None:
        self._signal(signal.SIGKILL)
        self.wait(30)

    def sigterm(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, signum: int) -> None:
        self.expected_exit = True
        if self.process is not None:
            self.process.signal(signum)

    def wait(self, timeout_s: float) -> int:
        """The exit code; fails the test (with the log) when the process still runs after ``timeout_s``."""
        assert self.process is not None
        try:
            return self.process.wait(timeout_s)
        except WorkerProcessError:
            pytest.fail(f"{self.name} did not exit within {timeout_s} s\n{self.tail()}", pytrace=False)

    def restart(self) -> None:
        if self.alive:
            self.sigkill()
        self.start()

    def log_lines(self) -> list[str]:
        return [] if self.process is None else self.process.log_lines()

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        if self.process is None:
            return f"--- {self.name}: never started ---"
        return self.process.tail(lines)

    def has_port(self) -> bool:
        return self.process is not None and self.process.logged_port() is not None

    def port(self, timeout_s: float = 60.0) -> int:
        """The metrics/health port this start bound (from its "http server listening" log line)."""
        assert self.process is not None
        try:
            return self.process.port(timeout_s)
        except WorkerProcessError:
            pytest.fail(f"{self.name} never logged its http port\n{self.tail()}", pytrace=False)

    def readyz(self) -> int:
        """The HTTP status of ``/readyz`` (200 or 503)."""
        assert self.process is not None
        self.port()
        return self.process.get("/readyz")[0]

    def stop(self) -> None:
        """Teardown: SIGKILL if still running."""
        if self.alive:
            self.sigkill()


class Fleet:
    """The replicas of one group; ``replicas[i]`` has transactional id ``<group>-<i>`` across restarts."""

    def __init__(
        self,
        config: Path,
        log_dir: Path,
        size: int,
        group_id: str,
        *,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        ids = [{**(env or {}), "RTML_TRANSACTIONAL_ID": f"{group_id}-{i}"} for i in range(size)]
        self.replicas = [Replica(f"replica-{i}", config, log_dir, ids[i], command) for i in range(size)]

    def start(self) -> None:
        for replica in self.replicas:
            replica.start()

    def ready(self, among: list[Replica] | None = None) -> list[Replica]:
        """Those of ``among`` (or all) whose ``/readyz`` answers 200: running, partitions assigned."""
        return [r for r in among or self.replicas if r.alive and r.has_port() and r.readyz() == 200]

    def wait_ready(self, among: list[Replica] | None = None, timeout_s: float = 60.0) -> list[Replica]:
        """The ready replicas of ``among`` (or all), once there is one; fails the test past ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not (ready := self.ready(among)):
            self.check()
            if time.monotonic() > deadline:
                pytest.fail(f"no replica became ready within {timeout_s} s\n{self.logs()}", pytrace=False)
            time.sleep(0.2)
        return ready

    def kill_random(self, rng: random.Random, *, timeout_s: float = 60.0) -> Replica:
        """SIGKILL a ready replica, chosen at random (so the kill hits one that owns partitions), and start
        it again."""
        replica = rng.choice(self.wait_ready(timeout_s=timeout_s))
        replica.sigkill()
        replica.start()
        return replica

    def sigterm_all(self, timeout_s: float = 60.0) -> dict[str, int]:
        for replica in self.replicas:
            replica.sigterm()
        return {replica.name: replica.wait(timeout_s) for replica in self.replicas}

    def check(self) -> None:
        """Fail the test when a replica exited without being told to."""
        dead = [r for r in self.replicas if not r.alive and not r.expected_exit]
        if dead:
            pytest.fail("replica exited on its own\n" + self.logs(dead), pytrace=False)

    def logs(self, replicas: list[Replica] | None = None) -> str:
        return "\n".join(r.tail() for r in replicas or self.replicas if r.log_path is not None)

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()


def committed(admin: AdminClient, group_id: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offset per partition of ``topic`` (-1 when none)."""
    request = ConsumerGroupTopicPartitions(group_id, [TopicPartition(topic, p) for p in range(partitions)])
    answer = admin.list_consumer_group_offsets([request])[group_id].result(timeout=30)
    return {tp.partition: max(tp.offset, -1) for tp in answer.topic_partitions}


def wait_committed(
    admin: AdminClient,
    group_id: str,
    topic: str,
    targets: Mapping[int, int],
    fleet: Fleet,
    *,
    timeout_s: float,
) -> float:
    """Poll until every partition's committed offset reaches its target; the seconds it took.

    Fails the test with the offsets and the replicas' logs on timeout or when a replica dies on its own.
    """
    started = time.monotonic()
    offsets: dict[int, int] = {}
    while time.monotonic() - started < timeout_s:
        fleet.check()
        offsets = committed(admin, group_id, topic, len(targets))
        if all(offsets.get(p, -1) >= target for p, target in targets.items() if target > 0):
            return time.monotonic() - started
        time.sleep(0.5)
    behind = {p: (offsets.get(p), t) for p, t in targets.items() if offsets.get(p, -1) < t}
    pytest.fail(
        f"group {group_id} did not commit {topic} up to the end within {timeout_s} s; "
        f"(committed, target) behind: {behind}\n{fleet.logs()}",
        pytrace=False,
    )
