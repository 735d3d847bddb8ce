"""Fixtures of the chaos tests: a three-broker stack of scripts/services.py on its own ports, topics on it.

``chaos_stack`` (session) reuses the stack at RTML_CHAOS_KAFKA_PORT (19092; registry RTML_CHAOS_REGISTRY_PORT,
18081) when it answers with every broker and its PROXIED listeners, else starts it with ``services.py up
--brokers 3 ...``. It fails, never skips, when it cannot (as tests/integration/conftest.py does), leaves the
stack running for later tests, and stops it at session end only if it started it. It holds the stack's chaos
lock meanwhile, so a second session on the same stack waits for it (RTML_CHAOS_LOCK_WAIT_S, 240 s) rather
than restarting or healing brokers under the first one's faults. ``cluster`` hands a test
the ``Cluster`` and heals every broker after it, so a failed test never leaves one killed or paused for the
next; ``chaos_topic`` creates uuid-named topics with replication factor 3 and deletes them after the test.
Only modules named test_chaos_* are marked integration: the fault proxy's own tests run with the unit tests.
The measured times a chaos test keeps in its user properties (names ending in ``_s``) close the report.
The full profile's rows are stored in the ledger (``ledger.py``), from which ``make chaos`` prints the table.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The streaming tests' harness, replicas and verifier serve the chaos runs too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration" / "runtime"))

import pandas as pd
from chaos_profile import EVERY, FULL, PROFILE
from chaos_run import ROWS, ChaosEnv, render
from cluster import SCRIPT, Cluster, holding_stack, load_services
from confluent_kafka.admin import AdminClient
from ledger import store, worker_digest
from scenario import CarModels

from examples.car_insurance.generate import generate
from examples.car_insurance.train import train
from worker.graph import compile_graph, load_graph
from worker.models import ModelStore

KAFKA_PORT = int(os.environ.get("RTML_CHAOS_KAFKA_PORT", "19092"))
REGISTRY_PORT = int(os.environ.get("RTML_CHAOS_REGISTRY_PORT", "18081"))
START_TIMEOUT_S = 300  # three JVM brokers and the registry on two cores take about a minute


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here) and os.path.basename(item.fspath).startswith("test_chaos_"):
            item.add_marker(pytest.mark.integration)
    if not EVERY:  # make test: only the scenarios of the short profile (make chaos runs them all)
        left_out = [
            i for i in items if i.get_closest_marker("chaos") and not i.get_closest_marker("chaos_short")
        ]
        if left_out:
            config.hook.pytest_deselected(items=left_out)
            items[:] = [i for i in items if i not in left_out]


STARTED_ON = worker_digest()  # the sources the session's replicas run, stamped on its rows


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if ROWS:
        terminalreporter.write_sep("-", f"chaos ({PROFILE} profile)")
        for line in render(list(ROWS.values())):
            terminalreporter.write_line(line)
        if FULL and (refused := store(list(ROWS.values()), STARTED_ON)):  # the ledger: make chaos in parts
            terminalreporter.write_line(refused)
    _timings(terminalreporter)


def _timings(terminalreporter: pytest.TerminalReporter) -> None:
    timings = [
        f"{report.nodeid.rsplit('::', 1)[-1]}: {name}={value}"
        for report in terminalreporter.getreports("passed") + terminalreporter.getreports("failed")
        for name, value in report.user_properties
        if name.endswith("_s") and report.when == "call"
    ]
    if timings:
        terminalreporter.write_sep("-", "chaos timings")
        for line in timings:
            terminalreporter.write_line(line)


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def services_cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(SCRIPT), *args, "--kafka-port", str(KAFKA_PORT)]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=START_TIMEOUT_S)


@pytest.fixture(scope="session")
def chaos_stack() -> Iterator[Any]:
    services = load_services()
    stack = services.Stack(brokers=3, kafka_port=KAFKA_PORT, registry_port=REGISTRY_PORT)
    with contextlib.ExitStack() as session:
        try:
            session.enter_context(holding_stack(stack.run))  # one chaos session per stack at a time
        except TimeoutError as exc:
            pytest.fail(str(exc), pytrace=False)
        yield from _started_or_reused(services, stack)


def _started_or_reused(services: Any, stack: Any) -> Iterator[Any]:
    started = not services.healthy(stack)
    if started:
        done = services_cli("up", "--brokers", "3", "--registry-port", str(REGISTRY_PORT))
        if done.returncode != 0:
            pytest.fail(
                f"could not start the chaos stack on {KAFKA_PORT}:\n{done.stderr[-3000:]}", pytrace=False
            )
    missing = [proxied for _, proxied in stack.proxy_routes() if not listening(proxied)]
    if missing:
        pytest.fail(
            f"the stack on {KAFKA_PORT} has no PROXIED listener on {missing}: it predates them; restart it "
            f"with `scripts/services.py down --kafka-port {KAFKA_PORT}` and run again",
            pytrace=False,
        )
    yield stack
    if started:
        services_cli("down")


@pytest.fixture
def cluster(chaos_stack: Any) -> Iterator[Cluster]:
    cluster = Cluster(chaos_stack)
    yield cluster
    cluster.heal()


@pytest.fixture
def chaos_topic(cluster: Cluster) -> Iterator[Callable[..., str]]:
    created: list[str] = []

    def create(partitions: int = 1, *, prefix: str = "chaos") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        cluster.create_topic(name, partitions, replication=3)
        created.append(name)
        return name

    yield create
    if created:
        cluster.heal()  # before the cluster fixture's own heal: a paused broker would stall the deletion
        cluster.delete_topics(created)


@pytest.fixture(scope="session")
def chaos_models(tmp_path_factory: pytest.TempPathFactory) -> CarModels:
    """The car-insurance models, trained once per session on a few thousand events (as the runtime tests)."""
    folder = tmp_path_factory.mktemp("chaos-models")
    store = folder / "store"
    trained = train(pd.DataFrame(generate(4000, 11)), folder / "out", ModelStore(store), seed=11)
    path = trained.graphs["gbt"]
    return CarModels(store, path, compile_graph(load_graph(path), ModelStore(store)))


@pytest.fixture
def chaos_env(
    chaos_stack: Any, cluster: Cluster, chaos_models: CarModels, tmp_path: Path
) -> Iterator[ChaosEnv]:
    admin = AdminClient({"bootstrap.servers": chaos_stack.bootstrap, "socket.timeout.ms": 2000})
    env = ChaosEnv(chaos_stack.bootstrap, chaos_stack.registry_url, admin, chaos_models, tmp_path, cluster)
    yield env
    cluster.heal()  # a paused broker would stall the deletion
    existing = set(cluster.metadata().topics) if cluster.metadata() is not None else set(env.created)
    cluster.delete_topics([t for t in env.created if t in existing])
