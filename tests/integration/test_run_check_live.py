"""``rtml-worker run --check [--online]`` and the start of ``run`` against the real registry and broker."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from worker.cli import main
from worker.runtime.build import build_pipeline, registry_client
from worker.runtime.config import load_settings

pytestmark = pytest.mark.integration
EVENT = {"type": "record", "name": "Event", "namespace": "test.check", "fields": [
    {"name": "id", "type": "string"}, {"name": "x", "type": "double"}]}  # fmt: skip
SCORE = {"type": "record", "name": "Score", "namespace": "test.check", "fields": [
    {"name": "id", "type": "string"}, {"name": "x", "type": "double"}]}  # fmt: skip
GRAPH = {
    "name": "passthrough",
    "inputs": [{"name": "id", "dtype": "string"}, {"name": "x", "dtype": "float64"}],
    "outputs": [{"name": "id", "dtype": "string"}, {"name": "x", "dtype": "float64"}],
}


def write_config(
    tmp_path: Path, bootstrap: str, registry_url: str, topics: dict[str, str], *, kafka: str = ""
) -> Path:
    """A TOML config for ``topics``; ``kafka`` adds lines to its [kafka] table."""
    (tmp_path / "event.avsc").write_text(json.dumps(EVENT))
    (tmp_path / "score.avsc").write_text(json.dumps(SCORE))
    (tmp_path / "graph.json").write_text(json.dumps(GRAPH))
    config = f"""
group_id = "{topics["group"]}"
graph = "{tmp_path / "graph.json"}"
model_store = "{tmp_path / "models"}"
metrics_port = 0

[kafka]
bootstrap_servers = "{bootstrap}"
{kafka}

[schema_registry]
url = "{registry_url}"

[input]
topics = ["{topics["input"]}"]
reader_schema = "{tmp_path / "event.avsc"}"

[output]
topic = "{topics["output"]}"
schema = "{tmp_path / "score.avsc"}"

[dead_letter]
topic = "{topics["dead_letter"]}"
"""
    path = tmp_path / "worker.toml"
    path.write_text(config)
    return path


def check(config: Path, *extra: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", "--config", str(config), "--check", *extra])
    return code, out.getvalue(), err.getvalue()


def subject_versions(registry_url: str, subject: str) -> list[int] | None:
    """The versions under ``subject``; None when the registry does not know it."""
    try:
        with urllib.request.urlopen(f"{registry_url}/subjects/{subject}/versions", timeout=10) as answer:
            versions: list[int] = json.loads(answer.read())
            return versions
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


@pytest.fixture
def topics(new_topic: Callable[..., str]) -> dict[str, str]:
    output = new_topic(2, prefix="check-scores")
    return {"input": new_topic(3, prefix="check-events"), "output": output,
            "dead_letter": new_topic(1, prefix="check-dlq"), "group": f"{output}-group"}  # fmt: skip


def test_check_registers_nothing_and_run_registers(
    tmp_path: Path, bootstrap_servers: str, schema_registry_url: str, topics: dict[str, str]
) -> None:
    config = write_config(tmp_path, bootstrap_servers, schema_registry_url, topics)
    subject = f"{topics['output']}-value"

    code, out, err = check(config)

    assert (code, err) == (0, "")
    assert f"ok: output schema not registered under {subject} yet; the registry accepts it" in out
    assert subject_versions(schema_registry_url, subject) is None  # before: --check registered it

    settings = load_settings(config)  # what `run` builds at start: it registers
    schema_id = build_pipeline(settings, registry_client(settings)).encoder.schema_id
    assert schema_id is not None and subject_versions(schema_registry_url, subject) == [1]

    code, out, err = check(config)

    assert (code, err) == (0, "")
    assert f"ok: output schema registered under {subject} as id {schema_id}" in out
    assert subject_versions(schema_registry_url, subject) == [1]


def test_check_refuses_a_schema_the_subject_would_refuse(
    tmp_path: Path, bootstrap_servers: str, schema_registry_url: str, topics: dict[str, str]
) -> None:
    config = write_config(tmp_path, bootstrap_servers, schema_registry_url, topics)
    subject = f"{topics['output']}-value"
    settings = load_settings(config)
    build_pipeline(settings, registry_client(settings))  # version 1: id, x
    set_compatibility(schema_registry_url, subject, "BACKWARD")
    renamed = {**SCORE, "fields": [{"name": "id", "type": "string"}, {"name": "y", "type": "double"}]}
    (tmp_path / "score.avsc").write_text(json.dumps(renamed))  # no default for y: not BACKWARD compatible
    (tmp_path / "graph.json").write_text(json.dumps({**GRAPH, "outputs": [
        {"name": "id", "dtype": "string"}, {"name": "y", "dtype": "float64", "from": "x"}]}))  # fmt: skip

    code, out, err = check(config)

    assert (code, out) == (2, "")
    assert err == (
        f"rtml-worker: error: output.schema: the registry would refuse it under {subject}: not compatible "
        "with the subject's latest version (compatibility BACKWARD)\n"
    )
    assert subject_versions(schema_registry_url, subject) == [1]


def set_compatibility(registry_url: str, subject: str, level: str) -> None:
    request = urllib.request.Request(
        f"{registry_url}/config/{subject}",
        data=json.dumps({"compatibility": level}).encode(),
        method="PUT",
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_run_with_an_unreachable_broker_fails_within_the_startup_timeout(
    tmp_path: Path, bootstrap_servers: str, schema_registry_url: str, topics: dict[str, str]
) -> None:
    port = closed_port()
    # The registry is there; only the broker is missing.
    config = write_config(
        tmp_path, f"127.0.0.1:{port}", schema_registry_url, topics, kafka="startup_timeout_s = 3"
    )
    started = time.monotonic()
    # Before: the worker retried forever (about 40 log lines a second, /healthz 200).
    done = subprocess.run([sys.executable, "-m", "worker", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    elapsed = time.monotonic() - started

    assert done.returncode == 2 and done.stdout == ""
    *logs, last = done.stderr.splitlines()
    assert last == (
        f"rtml-worker: error: kafka.bootstrap_servers: no broker answered at 127.0.0.1:{port} within 3 s "
        f"(kafka.startup_timeout_s); last error: Connect to ipv4#127.0.0.1:{port} failed: Connection refused"
    )
    assert all(json.loads(line)["logger"] for line in logs)  # librdkafka's lines as JSON logs, no raw ones
    assert 3 <= elapsed < 3 + 20  # the timeout, plus start-up (imports, the registry) on a loaded machine


def test_check_online_gives_the_broker_topics_and_permissions(
    tmp_path: Path, bootstrap_servers: str, schema_registry_url: str, topics: dict[str, str]
) -> None:
    config = write_config(tmp_path, bootstrap_servers, schema_registry_url, topics)

    code, out, err = check(config, "--online")

    assert (code, err) == (0, "")
    every = "(the broker allows every operation: no authorizer, or a super user)"  # the test broker has none
    assert f"ok: kafka.bootstrap_servers {bootstrap_servers} answers: " in out
    assert f"ok: input.topics {topics['input']}: 3 partitions; may read it {every}\n" in out
    assert f"ok: output.topic {topics['output']}: 2 partitions; may write it {every}\n" in out
    assert f"ok: dead_letter.topic {topics['dead_letter']}: 1 partition; may write it {every}\n" in out
    assert f"ok: group_id {topics['group']}: may commit offsets for it {every}\n" in out
    assert (
        subject_versions(schema_registry_url, f"{topics['output']}-value") is None
    )  # still nothing registered


@pytest.mark.parametrize("missing", ["output", "input", "dead_letter"])
def test_check_online_refuses_a_missing_topic_naming_its_setting(
    tmp_path: Path, bootstrap_servers: str, schema_registry_url: str, topics: dict[str, str], missing: str
) -> None:
    absent = f"{topics[missing]}-absent"
    config = write_config(tmp_path, bootstrap_servers, schema_registry_url, {**topics, missing: absent})

    code, out, err = check(config, "--online")

    setting = {"output": "output.topic", "input": "input.topics", "dead_letter": "dead_letter.topic"}[missing]
    assert code == 2  # before: --online was not an option, and --check never contacted Kafka
    assert (
        err
        == f"rtml-worker: error: {setting}: topic '{absent}' does not exist (the worker creates no topic)\n"
    )
    assert out.startswith("ok: graph passthrough")  # what passed before it, as ok lines


def test_check_without_online_stays_off_kafka(
    tmp_path: Path, schema_registry_url: str, topics: dict[str, str]
) -> None:
    config = write_config(tmp_path, f"127.0.0.1:{closed_port()}", schema_registry_url, topics)

    code, out, err = check(config)

    assert (code, err) == (0, "")
    assert out.endswith(
        "skipped: Kafka, not contacted (--online checks the broker, the topics and the permissions)\n"
    )
