"""The deploy commands from Python (notebooks, pipelines): ``Deployments``, returning plain dataclasses.

    from worker.deploy import Deployments
    fleet = Deployments.from_config("worker.toml")        # the replicas' own settings file
    fleet.publish("cars", "graph_gbt.json", message="gbt", wait=True)   # back once every replica runs it
    fleet.list_deployments(); fleet.history("cars"); fleet.status("cars")
    fleet.rollback("cars", wait=True); fleet.delete("cars")

Every refusal is a ``ConfigError`` naming the field, node, model or subject version, as on the command line
(``worker.deploy.cli`` prints what these return).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from worker.deploy.publish import Published, check_registry, check_sample, delete, prepare, publish, rollback
from worker.deploy.records import Deployment, Table, VersionRecord
from worker.deploy.settings import DeploySettings, load_deploy_settings
from worker.deploy.status import live, wait_running
from worker.deploy.topic import read_table
from worker.errors import ConfigError
from worker.runtime.build import client_of, registry_errors

WAIT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class DeploymentSummary:
    name: str
    active: int | None  # the active version's number, None without one
    versions: int
    created: str  # the first version's
    updated: str  # when the pointer last moved


@dataclass(frozen=True)
class VersionSummary:
    number: int
    version_id: str
    created: str
    parent: int | None
    active: bool
    digest: str
    message: str


@dataclass(frozen=True)
class ReplicaView:
    """A live member of the replicas' group, and what it reports (None: no status written yet)."""

    member_id: str
    host: str
    replica: str | None
    version: int | None
    since: str | None
    lag: int | None
    refused: list[str] = field(default_factory=list)
    heartbeat_at: str | None = None


class Deployments:
    """The deployment topic of one fleet of replicas, from their settings (``DeploySettings``)."""

    def __init__(self, settings: DeploySettings, *, say: Callable[[str], None] = lambda _line: None) -> None:
        self.settings = settings
        self._say = say  # each check passed and each step, as a line (the CLI prints them)

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | None = None) -> Deployments:
        return cls(load_deploy_settings(Path(path) if path is not None else None))

    def publish(
        self,
        name: str,
        graph: str | os.PathLike[str],
        *,
        reader_schema: str | os.PathLike[str] | None = None,
        output_schema: str | os.PathLike[str] | None = None,
        message: str = "",
        sample: str | os.PathLike[str] | None = None,
        wait: bool = False,
        timeout_s: float = WAIT_TIMEOUT_S,
    ) -> Published:
        """Check the version whole (models, both schemas, the registry, the sample), then make it active."""
        settings = self.settings
        reader = Path(reader_schema) if reader_schema is not None else settings.input.reader_schema
        output = Path(output_schema) if output_schema is not None else settings.output.schema_path
        if reader is None:
            raise ConfigError(
                "needed to publish: a reader schema, or input.reader_schema", field="input.reader_schema"
            )
        if output is None:
            raise ConfigError("needed to publish: an output schema, or output.schema", field="output.schema")
        prepared = prepare(name, Path(graph), reader, output, settings.store(), message=message,
                           allow_custom_domains=settings.allow_custom_domains)  # fmt: skip
        self._say(
            f"ok: the graph compiles with its {len(prepared.record.models)} models and fits both schemas"
        )
        if sample is not None:
            self._say(f"ok: {check_sample(prepared, Path(sample))}")
        registry = client_of(settings.schema_registry)
        if registry is not None:
            inputs = settings.input.topics if settings.input.framing == "confluent" else []
            output_topic = settings.output.topic if settings.output.framing == "confluent" else None
            with registry_errors(settings.schema_registry):
                for line in check_registry(
                    registry, prepared, input_topics=inputs, output_topic=output_topic
                ):
                    self._say(f"ok: {line}")
        done = publish(settings.control(), prepared)
        self._say(f"published {done.deployment} version {done.number} ({done.version_id[:12]}), now active")
        return self._waited(done, wait, timeout_s)

    def rollback(
        self, name: str, to: int | None = None, *, wait: bool = False, timeout_s: float = WAIT_TIMEOUT_S
    ) -> Published:
        """Make version ``to`` active again, or the active version's parent."""
        done = rollback(self.settings.control(), name, to)
        self._say(
            f"rolled {done.deployment} back to version {done.number} ({done.version_id[:12]}), now active"
        )
        return self._waited(done, wait, timeout_s)

    def delete(self, name: str) -> int:
        """Delete ``name`` and every version of it; how many versions it had."""
        return delete(self.settings.control(), name)

    def list_deployments(self) -> list[DeploymentSummary]:
        return [_summary(d) for _, d in sorted(self.table().deployments.items())]

    def history(self, name: str) -> list[VersionSummary]:
        deployment = self.deployment(name)
        active = deployment.active.version_id if deployment.active is not None else None
        rows = []
        for record in deployment.ordered():
            parent = deployment.number(record.parent) if record.parent in deployment.versions else None
            number = deployment.number(record.version_id)
            rows.append(
                VersionSummary(
                    number,
                    record.version_id,
                    record.created_at,
                    parent,
                    record.version_id == active,
                    record.graph_digest,
                    record.message,
                )
            )
        return rows

    def show(self, name: str, version: int | None = None) -> tuple[int, VersionRecord]:
        """(number, record) of version ``version`` of ``name``, the active one by default."""
        deployment = self.deployment(name)
        if version is not None:
            try:
                record = deployment.by_number(version)
            except KeyError as exc:
                raise ConfigError(str(exc.args[0]), field="--version") from exc
        elif (active := deployment.active_version()) is not None:
            record = active
        else:
            raise ConfigError(f"{name} has no active version: name one with --version", field="--version")
        return deployment.number(record.version_id), record

    def status(self, name: str) -> list[ReplicaView]:
        """Every live member of the replicas' group, with what it runs of ``name`` and its lag."""
        deployment = self.deployment(name)
        members = live(self.settings.kafka.client_config("consumer"), self._group(),
                       self.settings.deployments.status_topic, with_lag=True)  # fmt: skip
        views = []
        for member in members:
            status = member.status
            if status is None:
                views.append(ReplicaView(member.member_id, member.host, None, None, None, member.lag))
                continue
            runs = status.deployment == deployment.name and status.version_id is not None
            version = status.version if runs else None
            views.append(
                ReplicaView(
                    member.member_id,
                    member.host,
                    status.replica,
                    version,
                    status.since,
                    member.lag,
                    sorted(status.refused),
                    status.heartbeat_at,
                )
            )
        return views

    def table(self) -> Table:
        control = self.settings.control()
        return read_table(control.read, control.topic)[0]

    def deployment(self, name: str) -> Deployment:
        deployment = self.table().get(name)
        if deployment is None:
            raise ConfigError(f"no deployment named {name}", field="deployment")
        return deployment

    def _waited(self, done: Published, wait: bool, timeout_s: float) -> Published:
        if wait:
            label = f"{done.deployment}@{done.number}"
            members = wait_running(self.settings.kafka.client_config("consumer"), self._group(),
                                   self.settings.deployments.status_topic, done.version_id, label=label,
                                   timeout_s=timeout_s)  # fmt: skip
            self._say(f"all {len(members)} live replicas run {label}")
        return done

    def _group(self) -> str:
        if self.settings.group_id is None:
            raise ConfigError("the replicas' group is needed to know which are live", field="group_id")
        return self.settings.group_id


def _summary(deployment: Deployment) -> DeploymentSummary:
    ordered = deployment.ordered()
    active = deployment.active_version()
    return DeploymentSummary(
        deployment.name,
        deployment.number(active.version_id) if active is not None else None,
        len(ordered),
        ordered[0].created_at if ordered else "-",
        deployment.active.updated_at if deployment.active is not None else "-",
    )
