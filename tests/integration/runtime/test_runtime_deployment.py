"""Replicas that follow a deployment: the active version at start, a new one hot-swapped on every replica,
and versions a replica cannot use refused while it keeps scoring. Checked by the shared verifier."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from harness import EVENT_SCHEMA, SCORE_SCHEMA, plan_events, produce
from scenario import CarModels, Scenario
from test_runtime_delivery import finish
from verifier import collect_and_verify, describe, read_outputs

from worker.cli import main
from worker.deploy.publish import delete, prepare, publish, rollback
from worker.deploy.records import ActiveRecord
from worker.deploy.settings import Control
from worker.deploy.status import read_statuses, wait_running
from worker.deploy.topic import write
from worker.errors import ConfigError
from worker.models import ModelStore
from worker.models.blobs import open_blobs

EVENTS = 600
PARTITIONS = 4


@pytest.fixture
def topics(admin: AdminClient) -> Iterator[tuple[str, str]]:
    """Fresh names for the deployment topic and the status topic, deleted after the test if made."""
    names = (f"test-deployments-{uuid.uuid4().hex[:12]}", f"test-status-{uuid.uuid4().hex[:12]}")
    yield names
    made = [name for name in names if name in admin.list_topics(timeout=10).topics]
    for future in admin.delete_topics(made, operation_timeout=30).values() if made else []:
        future.result(timeout=30)


def renamed(graph: Path, folder: Path, name: str) -> Path:
    """The same graph under another name: the same scores, another digest."""
    spec = json.loads(graph.read_text())
    spec["name"] = name
    path = folder / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


def wait_all_ready(s: Scenario, timeout_s: float = 60.0) -> None:
    """Until every replica answers /readyz with 200 (Fleet.wait_ready returns at the first)."""
    deadline = time.monotonic() + timeout_s
    while len(s.fleet.ready()) < len(s.fleet.replicas):
        assert time.monotonic() < deadline, (
            f"not every replica ready after {timeout_s:.0f} s\n{s.fleet.logs()}"
        )
        s.fleet.check()
        time.sleep(0.2)


def wait_scored(s: Scenario, n: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(read_outputs(s.bootstrap_servers, s.score_topic, "score")) < n:
        assert time.monotonic() < deadline, f"fewer than {n} scores after {timeout_s:.0f} s"
        time.sleep(0.3)


def test_replicas_follow_a_deployment_and_swap_versions_without_loss(
    scenario: Callable[..., Scenario],
    car_models: CarModels,
    topics: tuple[str, str],
    s3_location: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = f"cars-{uuid.uuid4().hex[:8]}"
    control_topic, status_topic = topics
    # The models in the real S3Proxy; each replica starts with an empty cache of its own.
    folder, store = ModelStore(car_models.store), ModelStore(s3_location, cache=tmp_path / "publisher-cache")
    for info in folder.list_models():
        store.put(folder.load(info.model_id), name=info.name)
    s = scenario(
        partitions=PARTITIONS,
        replicas=2,
        settings={
            "graph": None,
            "deployment": name,
            "model_store": s3_location,
            "deployments": {"topic": control_topic, "status_topic": status_topic},
        },
    )
    control = Control(
        control_topic, {"bootstrap.servers": s.bootstrap_servers}, {"bootstrap.servers": s.bootstrap_servers}
    )
    v2_graph = renamed(car_models.graph_path, tmp_path, "cars-v2")
    v1 = publish(control, prepare(name, car_models.graph_path, EVENT_SCHEMA, SCORE_SCHEMA, store))

    check = subprocess.run([sys.executable, "-m", "worker", "run", "--check", "--config", str(s.config)],
                           capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert check.returncode == 0 and f"output schema of {name}@1 fits" in check.stdout, check.stderr

    caches = [tmp_path / f"cache-{i}" for i in range(len(s.fleet.replicas))]
    for replica, cache in zip(s.fleet.replicas, caches, strict=True):
        replica.env["RTML_MODEL_CACHE"] = str(cache)
    s.fleet.start()
    wait_all_ready(s)
    started = time.monotonic()
    wanted = {f"{m.sha256}.onnx" for m in prepare(name, car_models.graph_path, EVENT_SCHEMA, SCORE_SCHEMA,
                                                       store).record.models}  # fmt: skip
    assert all(wanted <= {p.name for p in cache.iterdir()} for cache in caches), "each fetched into its cache"
    sources = {
        p: dict(o)
        for p, o in produce(
            s.bootstrap_servers, s.input_topic, plan_events(s.graph, EVENTS, seed=31, schema_id=s.schema_id)
        ).items()
    }
    first_end = {p: max(o) for p, o in sources.items()}

    # A record written around the CLI, and a version whose model was tampered with: both refused.
    producer = Producer({"bootstrap.servers": s.bootstrap_servers})
    producer.produce(control_topic, key=f"{name}/active".encode(), value=b"{malformed")
    producer.flush(10)
    # A version whose model was tampered with in S3 after the check: the logistic regression, which no
    # replica has fetched yet, its object's bytes changed once the version was prepared.
    broken = prepare(
        name, car_models.graph_path.with_name("graph_lr.json"), EVENT_SCHEMA, SCORE_SCHEMA, store
    )
    [model] = broken.record.models
    open_blobs(s3_location).put(f"{model.sha256}.onnx", folder.load(model.model_id) + b"\0")
    broken = broken.record
    pointer = ActiveRecord(
        deployment=name, version_id=broken.version_id, updated_at="2026-12-04T00:00:00+00:00"
    )
    write(control.write, control_topic, [broken, pointer])
    client = {"bootstrap.servers": s.bootstrap_servers}
    with pytest.raises(ConfigError, match=rf"refused {name}@2: model sha256:[0-9a-f]+: content in s3://"):
        wait_running(client, s.group_id, status_topic, broken.version_id, label=f"{name}@2", timeout_s=60)

    v2 = publish(control, prepare(name, v2_graph, EVENT_SCHEMA, SCORE_SCHEMA, store, message="renamed"))
    # --wait: back only once both replicas run it (the tampered version is number 2, this one number 3)
    members = wait_running(client, s.group_id, status_topic, v2.version_id, label=f"{name}@3", timeout_s=60)
    assert len(members) == 2 and {m.status.version for m in members if m.status} == {3}
    assert main(["deploy", "status", name, "--json", "--config", str(s.config)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [(r["version"], len(r["refused"])) for r in shown] == [(3, 1), (3, 1)]
    assert all(isinstance(r["lag"], int) and r["lag"] >= 0 for r in shown)
    for p, o in produce(
        s.bootstrap_servers, s.input_topic, plan_events(s.graph, EVENTS, seed=32, schema_id=s.schema_id)
    ).items():
        sources.setdefault(p, {}).update(o)
    with pytest.raises(ConfigError, match="2 of 2 replicas do not run"):
        wait_running(client, s.group_id, status_topic, "f" * 32, label="nothing", timeout_s=1)
    wait_scored(s, sum(len(o) for o in sources.values()))
    second_end = {p: max(o) for p, o in sources.items()}

    # Deleted: the replicas pause (not ready) and score nothing; a new publish resumes them.
    delete(control, name)
    deadline = time.monotonic() + 30
    while any(r.readyz() == 200 for r in s.fleet.replicas):
        assert time.monotonic() < deadline, "replicas still ready after the deployment was deleted"
        time.sleep(0.2)
    for p, o in produce(
        s.bootstrap_servers, s.input_topic, plan_events(s.graph, EVENTS, seed=33, schema_id=s.schema_id)
    ).items():
        sources.setdefault(p, {}).update(o)
    time.sleep(2)
    assert len(read_outputs(s.bootstrap_servers, s.score_topic, "score")) == 2 * EVENTS, (
        "scored while deleted"
    )
    again = publish(control, prepare(name, car_models.graph_path, EVENT_SCHEMA, SCORE_SCHEMA, store))
    wait_running(client, s.group_id, status_topic, again.version_id, label=f"{name}@1", timeout_s=60)
    # The status names, per partition, the first offset scored with the version: where the third run began.
    deadline = time.monotonic() + 60
    while True:
        switched = {
            k: v for st in read_statuses(client, status_topic).values() for k, v in st.switched.items()
        }
        if len(switched) == PARTITIONS or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert switched == {f"{s.input_topic}:{p}": second_end[p] + 1 for p in range(PARTITIONS)}
    finish(s, sources, started)

    report, scores, _ = collect_and_verify(
        s.bootstrap_servers,
        s.registry_url,
        sources,
        input_topic=s.input_topic,
        score_topic=s.score_topic,
        dead_letter_topic=s.dead_letter_topic,
        score_partitions=PARTITIONS,
    )
    print(describe(sources, report))
    assert report.clean, report.render()
    assert (v1.number, v2.number) == (1, 3)
    by_source: dict[int, list[tuple[int, str | None]]] = {}
    for out in scores:
        where = out.source()
        assert where is not None
        by_source.setdefault(where[1], []).append((where[2], out.header("rtml.deployment")))
    for partition, labelled in by_source.items():
        labels = [label for _, label in sorted(labelled)]
        offsets = [offset for offset, _ in sorted(labelled)]
        # v1, then v2 (number 3), then after the delete the deployment's new first version (number 1)
        expected = [f"{name}@3" if first_end[partition] < o <= second_end[partition] else f"{name}@1"
                    for o in offsets]  # fmt: skip
        assert labels == expected, f"partition {partition}: versions switch exactly between the runs"


def test_a_rollback_recovers_replicas_whose_breaker_a_bad_version_tripped(
    scenario: Callable[..., Scenario], car_models: CarModels, topics: tuple[str, str], tmp_path: Path
) -> None:
    name = f"cars-{uuid.uuid4().hex[:8]}"
    control_topic, status_topic = topics
    breaker = {"max_consecutive_invalid": 20, "window_records": 100_000}
    deployments = {"topic": control_topic, "status_topic": status_topic}
    settings = {"graph": None, "deployment": name, "breaker": breaker, "deployments": deployments}
    s = scenario(partitions=PARTITIONS, replicas=2, settings=settings)
    client = {"bootstrap.servers": s.bootstrap_servers}
    control = Control(control_topic, client, client)
    store = ModelStore(car_models.store)
    publish(control, prepare(name, car_models.graph_path, EVENT_SCHEMA, SCORE_SCHEMA, store))
    # A version that passes every check but rejects every row: no event id is an int64.
    spec = json.loads(car_models.graph_path.read_text())
    strict = {"id": "strict", "kind": "astype", "columns": ["ecid"], "dtype": "int64"}
    back_to_string = {"id": "back", "kind": "astype", "columns": ["ecid"], "dtype": "string"}
    spec["nodes"] = [strict, back_to_string, *spec["nodes"]]
    (tmp_path / "rejects.json").write_text(json.dumps(spec))
    s.fleet.start()
    s.fleet.wait_ready()
    started = time.monotonic()
    bad = publish(control, prepare(name, tmp_path / "rejects.json", EVENT_SCHEMA, SCORE_SCHEMA, store))
    wait_running(client, s.group_id, status_topic, bad.version_id, label=f"{name}@2", timeout_s=60)
    sources = produce(
        s.bootstrap_servers, s.input_topic, plan_events(s.graph, EVENTS, seed=34, schema_id=s.schema_id)
    )
    deadline = time.monotonic() + 60
    while any(r.readyz() == 200 for r in s.fleet.replicas):  # each trips: not ready, nothing more committed
        assert time.monotonic() < deadline, "a replica stayed ready under a version that rejects every row"
        time.sleep(0.2)
    back = rollback(control, name)
    wait_running(client, s.group_id, status_topic, back.version_id, label=f"{name}@1", timeout_s=60)
    wait_all_ready(s)  # every one recovered, without a restart
    finish(s, sources, started)
    report, scores, dead = s.collect(sources)  # every score from v1, the scenario's own graph
    assert report.lost == report.wrong == report.unknown == 0, report.render()
    assert len(dead) <= 2 * PARTITIONS * 20, "no more dead-lettered in a row than each breaker allows"
    assert {out.header("rtml.deployment") for out in scores} == {f"{name}@1"}, (
        "the rest scored after the rollback"
    )
    assert all(r.starts == 1 for r in s.fleet.replicas), "no replica was restarted"
