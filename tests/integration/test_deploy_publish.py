"""publish, rollback and delete against the real broker: versions, parents and the pointer as read back."""

from __future__ import annotations

from pathlib import Path

import pytest

from examples.iris.train import train as train_iris
from worker.deploy.publish import delete, prepare, publish, rollback
from worker.deploy.settings import Control
from worker.deploy.topic import read_table
from worker.errors import ConfigError
from worker.models import ModelStore

ROOT = Path(__file__).resolve().parents[2]
READER = ROOT / "schemas" / "iris_event.avsc"
OUTPUT = ROOT / "schemas" / "iris_score.avsc"


def test_publish_twice_roll_back_and_delete(
    bootstrap_servers: str, control_topic: str, tmp_path: Path
) -> None:
    config = {"bootstrap.servers": bootstrap_servers}
    control = Control(control_topic, config, config)
    store = ModelStore(tmp_path / "store")
    graph = train_iris(tmp_path, store).graph
    first = publish(control, prepare("iris", graph, READER, OUTPUT, store, message="v1"))
    second = publish(control, prepare("iris", graph, READER, OUTPUT, store, message="v2"))
    assert (first.number, first.parent) == (1, None)
    assert (second.number, second.parent) == (2, first.version_id)

    back = rollback(control, "iris")
    assert (back.version_id, back.number) == (first.version_id, 1)
    table, _ = read_table(config, control_topic)
    iris = table.get("iris")
    assert iris is not None and iris.active is not None and iris.active.reason == "rollback"
    active = iris.active_version()
    assert active is not None and active.message == "v1"

    forward = rollback(control, "iris", to=2)
    assert forward.version_id == second.version_id
    with pytest.raises(ConfigError, match="has no version 7"):
        rollback(control, "iris", to=7)

    assert delete(control, "iris") == 2
    table, _ = read_table(config, control_topic)
    assert table.get("iris") is None and table.refused == []
    with pytest.raises(ConfigError, match="no deployment named iris"):
        delete(control, "iris")
    with pytest.raises(ConfigError, match="no active version"):
        rollback(control, "iris")
