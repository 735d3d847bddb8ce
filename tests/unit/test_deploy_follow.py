"""The follower's decisions without Kafka: what it builds, hands over, refuses, retries or pauses on."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest

from worker.deploy.follow import Follower
from worker.deploy.records import ActiveRecord, ModelRef, VersionRecord, active_key, encode, new_version_id
from worker.errors import ConfigError
from worker.runtime.build import GraphSource, RegistryDown
from worker.runtime.config import Settings
from worker.runtime.metrics import Metrics

SCHEMA = {"type": "record", "name": "E", "fields": [{"name": "id", "type": "string"}]}
SETTINGS: dict[str, Any] = {
    "group_id": "g",
    "deployment": "cars",
    "input": {"topics": ["in"]},
    "output": {"topic": "out"},
    "dead_letter": {"topic": "dlq"},
}


def version(message: str) -> VersionRecord:
    return VersionRecord(
        deployment="cars",
        version_id=new_version_id(),
        graph={"name": message},
        graph_digest="0" * 64,
        reader_schema=SCHEMA,
        output_schema=SCHEMA,
        models=(ModelRef(model_id="sha256:" + "1" * 64, size=1),),
        created_at="2026-12-04T00:00:00+00:00",
        message=message,
    )


class Pipeline:
    def __init__(self, source: GraphSource) -> None:
        self.deployment = source.deployment
        self.graph = type("G", (), {"digest": "d"})()


class World:
    """A follower whose builds and swaps are recorded; ``fail`` makes the next build raise."""

    def __init__(self) -> None:
        self.built: list[str | None] = []
        self.swapped: list[str | None] = []
        self.suspended: list[str] = []
        self.fail: list[Exception] = []
        self.metrics = Metrics()
        self.follower = Follower(Settings(**SETTINGS), self.build, metrics=self.metrics)
        self.follower._suspend = self.suspended.append  # what follow() hands it
        self.offset = 0

    def build(self, source: GraphSource) -> Any:
        if self.fail:
            raise self.fail.pop(0)
        self.built.append(source.deployment)
        return Pipeline(source)

    def swap(self, pipeline: Any) -> Future[bool]:
        self.swapped.append(pipeline.deployment)
        done: Future[bool] = Future()
        done.set_result(True)
        return done

    def write(self, *records: VersionRecord | ActiveRecord) -> None:
        for record in records:
            self.follower.table.apply(*encode(record), self.offset)
            self.offset += 1

    def tombstone(self) -> None:
        self.follower.table.apply(active_key("cars").encode(), None, self.offset)
        self.offset += 1


def pointer(v: VersionRecord) -> ActiveRecord:
    return ActiveRecord(deployment="cars", version_id=v.version_id, updated_at="2026-12-04T00:00:01+00:00")


def test_a_new_active_version_is_built_and_handed_over_once() -> None:
    world = World()
    v1 = version("one")
    world.write(v1, pointer(v1))
    assert world.follower.step(world.swap) is True
    assert world.follower.step(world.swap) is False  # the same version: nothing to do
    assert (world.built, world.swapped, world.follower.running) == (["cars@1"], ["cars@1"], v1.version_id)


def test_a_version_that_does_not_build_is_refused_once_and_never_retried() -> None:
    world = World()
    bad, good = version("bad"), version("good")
    world.write(bad, pointer(bad))
    world.fail.append(ConfigError("model missing", field="graph"))
    assert world.follower.step(world.swap) is False
    assert world.follower.refused == {bad.version_id: "graph: model missing"}
    assert world.follower.step(world.swap) is False and world.built == []  # not tried again
    world.write(good, pointer(good))
    assert world.follower.step(world.swap) is True and world.swapped == ["cars@2"]


def test_a_registry_down_while_building_is_retried_after_a_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World()
    v1 = version("one")
    world.write(v1, pointer(v1))
    world.fail.append(RegistryDown("no registry answers", field="schema_registry.url"))
    clock = [100.0]
    monkeypatch.setattr("worker.deploy.follow.time.monotonic", lambda: clock[0])
    assert world.follower.step(world.swap) is False and world.follower.refused == {}
    assert world.follower.step(world.swap) is False and world.built == []  # still backing off
    clock[0] += 1.5
    assert world.follower.step(world.swap) is True and world.swapped == ["cars@1"]


def test_a_deleted_deployment_suspends_the_replica_and_a_new_version_resumes_it() -> None:
    world = World()
    v1 = version("one")
    world.write(v1, pointer(v1))
    world.follower.step(world.swap)
    world.tombstone()
    assert world.follower.step(world.swap) is False
    assert world.suspended == ["deployment cars deleted; publish a version to resume"]
    assert world.follower.step(world.swap) is False and len(world.suspended) == 1  # said once
    v2 = version("two")
    world.write(v2, pointer(v2))
    assert world.follower.step(world.swap) is True and world.swapped == ["cars@1", "cars@2"]


def test_a_pointer_to_a_version_not_seen_yet_waits_for_it() -> None:
    world = World()
    v1 = version("one")
    world.write(pointer(v1))
    assert world.follower.step(world.swap) is False and world.suspended == [] and world.built == []
    world.write(v1)
    assert world.follower.step(world.swap) is True


def test_the_version_running_swaps_and_refusals_are_exported() -> None:
    world = World()
    bad, good = version("bad"), version("good")
    world.write(bad, pointer(bad))
    world.fail.append(ConfigError("model missing", field="graph"))
    world.follower.step(world.swap)
    world.write(good, pointer(good))
    world.follower.step(world.swap)
    text = world.metrics.render().decode()
    assert 'rtml_deployment_info{deployment="cars",digest="d",version="2"} 1.0' in text
    assert "rtml_deployment_swaps_total 1.0" in text and "rtml_deployment_refusals_total 1.0" in text
    world.tombstone()
    world.follower.step(world.swap)
    assert "rtml_deployment_info{" not in world.metrics.render().decode()
