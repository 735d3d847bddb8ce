"""What the ``deploy`` commands do: check a version completely, then write it; roll back; delete.

``prepare`` is the deploy-time contract check, before anything is written: the graph compiles with its
models fetched from the store (each verified against its sha256), the reader schema gives every graph input
with its dtype, and the graph's outputs and the output schema match both ways. Every refusal is a
``ConfigError`` naming the node, field or setting; with a registry, ``check_registry`` then reads the reader
schema against the input subject's latest writer schemas and the output schema against the output subject.
``publish`` then writes the version and the pointer to it
(its parent is the version active before); ``rollback`` points at an earlier version, the active one's
parent by default; ``delete`` writes tombstones for the pointer and every version.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.avro.registry import SchemaRegistryClient
from worker.avro.resolve import incompatibility
from worker.avro.schema import AvroSchema, SchemaParseError, layout
from worker.deploy.records import (
    ActiveRecord,
    ModelRef,
    VersionRecord,
    active_key,
    check_name,
    new_version_id,
    version_key,
)
from worker.deploy.settings import Control
from worker.deploy.topic import ensure_topic, read_table, write
from worker.errors import ConfigError
from worker.graph.compile import compile_graph, load_graph
from worker.graph.runner import CompiledGraph
from worker.models import ModelStore
from worker.runtime.contract import check_inputs, check_outputs
from worker.scoring.reader import read_events
from worker.scoring.score import score_events


@dataclass(frozen=True)
class Prepared:
    """A checked version, not written yet, and its graph compiled with its models."""

    record: VersionRecord
    compiled: CompiledGraph


@dataclass(frozen=True)
class Published:
    deployment: str
    version_id: str
    number: int  # the version's number in the deployment, from 1
    parent: str | None


def prepare(
    name: str,
    graph: Path | Mapping[str, Any],
    reader_schema: Path | Mapping[str, Any],
    output_schema: Path | Mapping[str, Any],
    store: ModelStore,
    *,
    message: str = "",
    allow_custom_domains: bool = False,
) -> Prepared:
    """Check everything a replica will check (see the module docstring); ``ConfigError`` names what fails."""
    try:
        check_name(name)
    except ValueError as exc:
        raise ConfigError(str(exc), field="deployment") from exc
    raw_graph = _json(graph, "graph")
    spec = load_graph(raw_graph)
    compiled = compile_graph(spec, store, allow_custom_domains=allow_custom_domains)
    reader_raw, reader = _schema(reader_schema, "input.reader_schema")
    output_raw, output = _schema(output_schema, "output.schema")
    try:
        leaves = layout(reader)
    except SchemaParseError as exc:
        raise ConfigError(str(exc), field="input.reader_schema") from exc
    check_inputs(leaves, spec.inputs)
    check_outputs(output, spec.outputs)
    infos = [store.info(model_id) for model_id in compiled.model_ids]
    record = VersionRecord(
        deployment=name,
        version_id=new_version_id(),
        graph=dict(raw_graph),
        graph_digest=compiled.digest,
        reader_schema=reader_raw,
        output_schema=output_raw,
        models=tuple(ModelRef(model_id=i.model_id, size=i.size, name=i.name) for i in infos),
        created_at=_now(),
        message=message,
    )
    return Prepared(record, compiled)


def check_sample(prepared: Prepared, sample: Path) -> str:
    """Score the events of ``sample`` (JSON Lines or Avro, as ``rtml-worker score`` reads them) with the
    version's graph: every one must score. The line to print, or ``ConfigError`` naming the first that did
    not."""
    count = 0
    for result in score_events(prepared.compiled, read_events(sample)):
        if "error" in result:
            why = f"sample event {count} of {sample} was not scored: {json.dumps(result['error'])}"
            raise ConfigError(why, field="--sample")
        count += 1
    if count == 0:
        raise ConfigError(f"{sample} holds no event", field="--sample")
    return f"{count} sample events scored"


LATEST_WRITERS = 5  # the input subject's latest versions a publish reads the reader schema against


def check_registry(
    registry: SchemaRegistryClient,
    prepared: Prepared,
    *,
    input_topics: Sequence[str],
    output_topic: str | None,
    latest: int = LATEST_WRITERS,
) -> list[str]:
    """What the registry says of a version, before it is written: every one of the latest ``latest``
    writer schemas of each input topic's subject resolves to the version's reader schema, and the output
    subject would take its output schema. One line per check passed; ``ConfigError`` naming the subject and
    version that fails."""
    record = prepared.record
    reader, output = AvroSchema.parse(record.reader_schema), AvroSchema.parse(record.output_schema)
    lines = []
    for topic in input_topics:
        subject = f"{topic}-value"
        versions = registry.versions(subject)[-latest:]
        for version in versions:
            problem = incompatibility(registry.version(subject, version), reader)
            if problem is not None:
                why = f"{subject} version {version} cannot be read with the reader schema: {problem}"
                raise ConfigError(why, field="input.reader_schema")
        shown = f"versions {versions[0]}-{versions[-1]}" if versions else "no version yet"
        lines.append(f"{subject} ({shown}) resolves to the reader schema")
    if output_topic is not None:
        subject = f"{output_topic}-value"
        if not registry.compatible(subject, output):
            level = registry.compatibility(subject)
            raise ConfigError(f"the output schema is not compatible with {subject} (compatibility {level})",
                              field="output.schema")  # fmt: skip
        lines.append(f"{subject} takes the output schema")
    return lines


def publish(control: Control, prepared: Prepared) -> Published:
    """Write the version, then point the deployment at it; the version active before is its parent."""
    ensure_topic(control.write, control.topic)
    table, _ = read_table(control.read, control.topic)
    existing = table.get(prepared.record.deployment)
    before = existing.active_version() if existing is not None else None
    parent = before.version_id if before is not None else None
    record = prepared.record.model_copy(update={"parent": parent})
    pointer = ActiveRecord(deployment=record.deployment, version_id=record.version_id, updated_at=_now())
    write(control.write, control.topic, [record, pointer])
    table, _ = read_table(control.read, control.topic)
    deployment = table.get(record.deployment)
    number = deployment.number(record.version_id) if deployment is not None else 0
    return Published(record.deployment, record.version_id, number, parent)


def rollback(control: Control, name: str, to: int | None = None) -> Published:
    """Point ``name`` at version number ``to``, or at the active version's parent."""
    table, _ = read_table(control.read, control.topic)
    deployment = table.get(name)
    active = deployment.active_version() if deployment is not None else None
    if deployment is None or active is None:
        raise ConfigError(f"{name} has no active version to roll back from", field="deployment")
    if to is not None:
        try:
            target = deployment.by_number(to)
        except KeyError as exc:
            raise ConfigError(str(exc.args[0]), field="--to") from exc
    elif active.parent is None or active.parent not in deployment.versions:
        raise ConfigError(f"{name}'s active version has no earlier version to roll back to", field="--to")
    else:
        target = deployment.versions[active.parent][1]
    pointer = ActiveRecord(
        deployment=name, version_id=target.version_id, updated_at=_now(), reason="rollback"
    )
    write(control.write, control.topic, [pointer])
    return Published(name, target.version_id, deployment.number(target.version_id), active.version_id)


def delete(control: Control, name: str) -> int:
    """Tombstones for ``name``'s pointer and every version; returns how many versions it had."""
    table, _ = read_table(control.read, control.topic)
    deployment = table.get(name)
    if deployment is None:
        raise ConfigError(f"no deployment named {name}", field="deployment")
    keys = [active_key(name), *(version_key(name, vid) for vid in deployment.versions)]
    write(control.write, control.topic, [(key, None) for key in keys])
    return len(deployment.versions)


def _json(source: Path | Mapping[str, Any], field: str) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    try:
        raw = json.loads(Path(source).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror}", field=field) from exc
    except ValueError as exc:
        raise ConfigError(f"{source} is not JSON: {exc}", field=field) from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} is not a JSON object", field=field)
    return raw


def _schema(source: Path | Mapping[str, Any], field: str) -> tuple[Any, AvroSchema]:
    raw = source if isinstance(source, Mapping) else _json(source, field)
    try:
        return dict(raw), AvroSchema.parse(dict(raw))
    except SchemaParseError as exc:
        raise ConfigError(str(exc), field=field) from exc


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
