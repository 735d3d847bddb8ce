"""The services script's own parts: broker configs, cluster ids, env lines, broker control on stand-ins."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import IO, ClassVar

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "services.py"


@pytest.fixture(scope="module")
def services() -> ModuleType:
    spec = importlib.util.spec_from_file_location("services_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["services_script"] = module
    spec.loader.exec_module(module)
    return module


def props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_three_broker_cluster_has_distinct_nodes_ports_and_replication_three(services: ModuleType) -> None:
    stack = services.Stack(brokers=3, kafka_port=19092, registry_port=18081)
    configs = [props(services.broker_properties(stack, i)) for i in range(3)]
    assert [c["node.id"] for c in configs] == ["1", "2", "3"]
    assert len({c["listeners"] for c in configs}) == 3
    assert {c["controller.quorum.voters"] for c in configs} == {
        "1@127.0.0.1:19192,2@127.0.0.1:19193,3@127.0.0.1:19194"
    }
    assert all(c["default.replication.factor"] == "3" for c in configs)
    assert all(c["transaction.state.log.min.isr"] == "2" for c in configs)
    assert all(c["min.insync.replicas"] == "2" for c in configs)
    assert stack.bootstrap == "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094"


def test_single_broker_uses_replication_one(services: ModuleType) -> None:
    stack = services.Stack(brokers=1, kafka_port=9092, registry_port=8081)
    config = props(services.broker_properties(stack, 0))
    assert config["offsets.topic.replication.factor"] == "1"
    assert config["min.insync.replicas"] == "1"
    assert config["advertised.listeners"].split(",")[0] == "PLAINTEXT://127.0.0.1:9092"


def test_two_brokers_keep_min_insync_replicas_one(services: ModuleType) -> None:
    stack = services.Stack(brokers=2, kafka_port=19092, registry_port=18081)
    assert props(services.broker_properties(stack, 0))["min.insync.replicas"] == "1"


def test_each_broker_binds_a_proxied_listener_and_advertises_the_proxy_port(services: ModuleType) -> None:
    stack = services.Stack(brokers=3, kafka_port=19092, registry_port=18081)
    configs = [props(services.broker_properties(stack, i)) for i in range(3)]
    assert [c["listeners"].split(",") for c in configs] == [
        [
            f"PLAINTEXT://127.0.0.1:{19092 + i}",
            f"CONTROLLER://127.0.0.1:{19192 + i}",
            f"PROXIED://127.0.0.1:{19292 + i}",
        ]
        for i in range(3)
    ]
    assert [c["advertised.listeners"] for c in configs] == [
        f"PLAINTEXT://127.0.0.1:{19092 + i},PROXIED://127.0.0.1:{19392 + i}" for i in range(3)
    ]
    protocols = dict(pair.split(":") for pair in configs[0]["listener.security.protocol.map"].split(","))
    assert protocols == {"PLAINTEXT": "PLAINTEXT", "CONTROLLER": "PLAINTEXT", "PROXIED": "PLAINTEXT"}
    assert all(c["inter.broker.listener.name"] == "PLAINTEXT" for c in configs)
    assert all(c["controller.listener.names"] == "CONTROLLER" for c in configs)


def test_proxied_bootstrap_names_the_proxy_ports_and_routes_them_to_the_listeners(
    services: ModuleType,
) -> None:
    stack = services.Stack(brokers=3, kafka_port=19092, registry_port=18081)
    assert stack.proxied_bootstrap == "127.0.0.1:19392,127.0.0.1:19393,127.0.0.1:19394"
    assert stack.proxy_routes() == [(19392, 19292), (19393, 19293), (19394, 19294)]
    assert services.Stack(1, 9092, 8081).proxied_bootstrap == "127.0.0.1:9392"


def test_env_lines_are_sourceable(services: ModuleType) -> None:
    stack = services.Stack(brokers=1, kafka_port=9092, registry_port=8081)
    assert stack.env_lines().splitlines() == [
        "export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092",
        "export SCHEMA_REGISTRY_URL=http://127.0.0.1:8081/apis/ccompat/v7",
        "export AWS_ENDPOINT_URL=http://127.0.0.1:8083",
        "export AWS_ACCESS_KEY_ID=rtml",
        "export AWS_SECRET_ACCESS_KEY=rtml-local-secret",
        "export AWS_REGION=us-east-1",
        "export AWS_ALLOW_HTTP=true",
        "export RTML_S3_BUCKET=rtml",
    ]


def test_s3proxy_serves_a_bucket_folder_on_its_own_port(services: ModuleType, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(services, "run_folder", lambda port: tmp_path)
    stack = services.Stack(brokers=1, kafka_port=9092, registry_port=8081, s3_port=39000)
    props = dict(line.split("=", 1) for line in services.s3_properties(stack).splitlines())
    assert props["s3proxy.endpoint"] == "http://127.0.0.1:39000"
    assert props["jclouds.provider"] == "filesystem"
    assert (Path(props["jclouds.filesystem.basedir"]) / "rtml").is_dir()
    assert (props["s3proxy.identity"], props["s3proxy.credential"]) == ("rtml", "rtml-local-secret")
    assert "s3" in services.process_names(1)


def test_cluster_id_never_reads_as_an_option(services: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    # A first byte of 0xF8 encodes to a leading '-', which StorageTool's `-t` took for an option.
    dashed = uuid.UUID(bytes=b"\xf8" + bytes(15))
    plain = uuid.UUID(bytes=b"\x12" + bytes(15))
    drawn = iter([dashed, plain])
    monkeypatch.setattr(services.uuid, "uuid4", lambda: next(drawn))
    cluster_id = services.new_cluster_id()
    assert not cluster_id.startswith("-")
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id)
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_format_command_joins_the_cluster_id_to_its_option(services: ModuleType) -> None:
    # Even an id with a leading '-' must reach StorageTool as the option's value, not as an option.
    argv = services.format_command(["java"], "-DomHG-lSV2BuMMkhyVlnQ", Path("/x/server.properties"))
    assert "--cluster-id=-DomHG-lSV2BuMMkhyVlnQ" in argv
    assert "-DomHG-lSV2BuMMkhyVlnQ" not in argv


class FakePopen:
    """Records what spawn started; stands for a process that is still running."""

    started: ClassVar[list[list[str]]] = []

    def __init__(self, cmd: list[str], *, stdout: IO[bytes], cwd: Path, **_: object) -> None:
        self.started.append(list(cmd))
        stdout.write(b"new start\n")
        self.pid = 4242


@pytest.fixture
def fake_popen(services: ModuleType, monkeypatch: pytest.MonkeyPatch) -> type[FakePopen]:
    FakePopen.started = []
    monkeypatch.setattr(services.subprocess, "Popen", FakePopen)
    return FakePopen


def test_spawn_records_the_command_line_and_restart_reuses_it(
    services: ModuleType, fake_popen: type[FakePopen], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cmd = ["java", "-cp", "libs/*", "kafka.Kafka", str(tmp_path / "kafka-1" / "server.properties")]
    assert services.spawn(tmp_path, "kafka-1", cmd) == 4242
    assert json.loads((tmp_path / "kafka-1.cmd").read_text()) == cmd
    monkeypatch.setattr(services, "our_pid", lambda run, name: None)  # the broker was killed
    assert services.restart_broker(tmp_path, 2) == 4242
    assert fake_popen.started == [cmd, cmd]
    assert (tmp_path / "kafka-1.log").read_bytes() == b"new start\nnew start\n"  # appended, not truncated
    assert (tmp_path / "kafka-1.pid").read_text() == "4242"


def test_restart_refuses_a_broker_that_still_runs(
    services: ModuleType, fake_popen: type[FakePopen], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    services.spawn(tmp_path, "kafka-0", ["java", "kafka.Kafka"])
    monkeypatch.setattr(services, "our_pid", lambda run, name: 4242)
    with pytest.raises(RuntimeError, match="still running"):
        services.restart_broker(tmp_path, 1)
    assert len(fake_popen.started) == 1


@pytest.fixture
def stand_in_broker(services: ModuleType, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A sleeping child recorded as kafka-0 of ``tmp_path``; its argv names ROOT, as our_pid demands."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(services.ROOT)])
    (tmp_path / "kafka-0.pid").write_text(str(proc.pid))
    # Until the child has exec'd, its /proc cmdline is still pytest's.
    services.wait_for(lambda: services.our_pid(tmp_path, "kafka-0") is not None, 10, "stand-in not started")
    yield proc
    proc.kill()
    proc.wait(timeout=10)


def test_pause_resume_and_kill_a_broker_by_node_id(
    services: ModuleType, stand_in_broker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    assert services.broker_pid(tmp_path, 1) == stand_in_broker.pid
    services.pause_broker(tmp_path, 1)
    assert services.process_state(stand_in_broker.pid) == "T"
    services.resume_broker(tmp_path, 1)
    services.wait_for(lambda: services.process_state(stand_in_broker.pid) != "T", 5, "still stopped")
    services.kill_broker(tmp_path, 1)
    assert stand_in_broker.wait(timeout=10) == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        services.broker_pid(tmp_path, 1)


def test_broker_pid_ignores_a_recycled_pid_that_is_not_ours(services: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "kafka-2.pid").write_text(str(os.getpid()))  # alive, but not started from .services
    with pytest.raises(ProcessLookupError, match="kafka-2"):
        services.broker_pid(tmp_path, 3)


@pytest.fixture
def chaos_session(services: ModuleType, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the stack's chaos lock, as a chaos test session on that stack does."""
    holder = (
        "import fcntl, os, sys, time\n"
        "lock = open(sys.argv[1], 'a+'); fcntl.flock(lock, fcntl.LOCK_EX)\n"
        "lock.truncate(0); lock.write(str(os.getpid())); lock.flush(); print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder, str(services.chaos_lock_file(tmp_path))],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    yield proc
    proc.kill()
    proc.wait(timeout=10)
    proc.stdout.close()


def test_up_does_not_restart_a_stack_a_chaos_session_holds(
    services: ModuleType,
    chaos_session: subprocess.Popen[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A chaos test has one broker down on purpose: the stack is not healthy, but is not to be restarted.
    monkeypatch.setattr(services, "run_folder", lambda port: tmp_path)
    monkeypatch.setattr(services, "healthy", lambda stack: False)
    (tmp_path / "kafka-0.pid").write_text("1")
    called: list[str] = []
    steps = ("down", "kafka_libs", "apicurio_app", "s3proxy_jar", "registry_runtime", "start_kafka",
             "start_registry", "start_s3")  # fmt: skip
    for step in steps:
        # Never a real process from a unit test, whatever up() decides.
        monkeypatch.setattr(services, step, lambda *_, step=step: called.append(step) or ("java", "3"))
    monkeypatch.setattr(services, "wait_until_ready", lambda stack: called.append("wait_until_ready"))
    with pytest.raises(SystemExit, match=f"chaos test session \\(pid {chaos_session.pid}\\)"):
        services.up(services.Stack(brokers=3, kafka_port=19092, registry_port=18081))
    assert called == []


def test_chaos_lock_holder_is_none_when_free_or_held_by_our_parent(
    services: ModuleType, tmp_path: Path
) -> None:
    assert services.chaos_lock_holder(tmp_path) is None  # no lock file at all
    services.chaos_lock_file(tmp_path).write_text("12345")
    assert services.chaos_lock_holder(tmp_path) is None  # a file nobody holds
