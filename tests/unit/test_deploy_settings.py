"""The deploy commands read a replica's own settings file, taking what they need and ignoring the rest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.deploy.settings import load_deploy_settings
from worker.errors import ConfigError

REPLICA = """
group_id = "cars"
graph = "graph.json"
model_store = "s3://models/cars"
delivery = "exactly-once"
transactional_id = "cars-0"

[kafka]
bootstrap_servers = "broker:9092"
producer_extra = { "linger.ms" = 20 }

[deployments]
topic = "_cars_deployments"

[input]
topics = ["events"]
reader_schema = "in.avsc"

[output]
topic = "scores"
schema = "out.avsc"

[dead_letter]
topic = "dlq"

[batch]
max_records = 500
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.upper().startswith("RTML_")]:
        monkeypatch.delenv(name)


def test_a_replicas_file_serves_the_deploy_commands(tmp_path: Path) -> None:
    (tmp_path / "worker.toml").write_text(REPLICA)
    settings = load_deploy_settings(tmp_path / "worker.toml")
    control = settings.control()
    assert control.topic == "_cars_deployments"
    assert control.read["bootstrap.servers"] == control.write["bootstrap.servers"] == "broker:9092"
    assert control.write["linger.ms"] == "20" and "linger.ms" not in control.read
    assert (settings.input.reader_schema, settings.output.schema_path) == (Path("in.avsc"), Path("out.avsc"))
    assert settings.store().where == "s3://models/cars"


def test_defaults_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTML_KAFKA__BOOTSTRAP_SERVERS", "env:9092")
    monkeypatch.setenv("RTML_DEPLOYMENTS__TOPIC", "from-env")
    settings = load_deploy_settings(None)
    assert settings.control().topic == "from-env" and settings.kafka.bootstrap_servers == "env:9092"
    assert settings.model_store == ".models" and settings.input.reader_schema is None


def test_a_bad_value_is_named(tmp_path: Path) -> None:
    (tmp_path / "worker.toml").write_text('model_store = "ftp://x/y"\n')
    with pytest.raises(ConfigError, match="model_store:"):
        load_deploy_settings(tmp_path / "worker.toml")
