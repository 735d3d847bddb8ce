"""The registry checks of a publish, against the real registry: writer schemas of the input subject read
with the version's reader schema, and the output subject's compatibility with its output schema."""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from examples.iris.train import train as train_iris
from worker.avro.registry import RegistryConfig, SchemaRegistryClient
from worker.avro.schema import AvroSchema
from worker.deploy.publish import Prepared, check_registry, prepare
from worker.errors import ConfigError
from worker.models import ModelStore

ROOT = Path(__file__).resolve().parents[2]
READER = json.loads((ROOT / "schemas" / "iris_event.avsc").read_text())
OUTPUT = json.loads((ROOT / "schemas" / "iris_score.avsc").read_text())


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    root = tmp_path_factory.mktemp("iris")
    store = ModelStore(root / "store")
    return prepare("iris", train_iris(root, store).graph, READER, OUTPUT, store)


def with_fields(schema: dict[str, Any], fields: list[dict[str, Any]]) -> AvroSchema:
    return AvroSchema.parse({**schema, "fields": fields})


def set_compatibility(url: str, subject: str, level: str) -> None:
    """The subject's compatibility level (NONE lets a writer the reader cannot read be registered)."""
    request = urllib.request.Request(
        f"{url}/config/{subject}",
        data=json.dumps({"compatibility": level}).encode(),
        method="PUT",
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
    )
    urllib.request.urlopen(request, timeout=10).read()


def test_writers_that_resolve_and_a_new_output_subject_pass(
    schema_registry_url: str, prepared: Prepared
) -> None:
    registry = SchemaRegistryClient(RegistryConfig(url=schema_registry_url))
    topic = f"iris-{uuid.uuid4().hex[:8]}"
    registry.register(f"{topic}-value", AvroSchema.parse(READER))
    # A later writer without a field the reader has a default for: still readable.
    registry.register(f"{topic}-value", with_fields(READER, READER["fields"][:-1]))
    lines = check_registry(registry, prepared, input_topics=[topic], output_topic=f"{topic}-scores")
    assert lines == [f"{topic}-value (versions 1-2) resolves to the reader schema",
                     f"{topic}-scores-value takes the output schema"]  # fmt: skip


def test_a_writer_version_the_reader_cannot_read_is_named(
    schema_registry_url: str, prepared: Prepared
) -> None:
    registry = SchemaRegistryClient(RegistryConfig(url=schema_registry_url))
    topic = f"iris-{uuid.uuid4().hex[:8]}"
    set_compatibility(schema_registry_url, f"{topic}-value", "NONE")
    registry.register(f"{topic}-value", AvroSchema.parse(READER))
    retyped = [{"name": "id", "type": "long"}, *READER["fields"][1:]]  # a string field written as a long
    registry.register(f"{topic}-value", with_fields(READER, retyped))
    with pytest.raises(ConfigError, match=rf"{topic}-value version 2 cannot be read") as caught:
        check_registry(registry, prepared, input_topics=[topic], output_topic=None)
    assert caught.value.field == "input.reader_schema"


def test_an_output_schema_the_output_subject_refuses_is_named(
    schema_registry_url: str, prepared: Prepared
) -> None:
    registry = SchemaRegistryClient(RegistryConfig(url=schema_registry_url))
    topic = f"iris-{uuid.uuid4().hex[:8]}"
    # The subject's scores have a field "class_index" as a string: a long now cannot be read by old readers.
    retyped = [{"name": "id", "type": "string"}, {"name": "class_index", "type": "string"}]
    registry.register(f"{topic}-value", with_fields(OUTPUT, retyped))
    set_compatibility(schema_registry_url, f"{topic}-value", "BACKWARD")
    with pytest.raises(ConfigError, match=rf"not compatible with {topic}-value") as caught:
        check_registry(registry, prepared, input_topics=[], output_topic=topic)
    assert caught.value.field == "output.schema"
