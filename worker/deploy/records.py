"""The deployment topic's records: immutable versions, one active pointer per deployment, tombstones.

The topic is compacted and keyed, the way Kafka Connect keeps connector configs and Schema Registry its
schemas. Two kinds of key, both ``<name>/...`` so a deployment's records share a prefix:

    <name>/version/<32 hex>   a VersionRecord: the graph DSL, both schemas, the models, the digest, the parent
    <name>/active             an ActiveRecord: which version the replicas run

A version is immutable: the first record under its key stands and a later one with other content is refused
(compaction would keep the later one, so a reader that ever saw the first keeps it). A delete writes
tombstones (null values) for the pointer and every version. ``parse`` never raises: what a reader cannot
read or does not understand (a newer ``format``) is ``Refused`` with its reason, for the log and the status.

``Table`` is the topic read like a table, in offset order. Versions are numbered 1, 2, ... by offset among
the deployment's live versions, which compaction keeps in order, so a number is stable while the deployment
lives; the id stays the identity.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FORMAT: Literal[1] = 1
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_NAME = re.compile(NAME_PATTERN)
_VERSION_ID = r"^[0-9a-f]{32}$"
_KEY = re.compile(r"^(?P<name>[^/]+)/(?:(?P<active>active)|version/(?P<version>[0-9a-f]{32}))$")


def check_name(name: str) -> str:
    """``name`` if it is a deployment name (lowercase letters, digits, ``.``, ``_``, ``-``; 1-63), else
    ``ValueError`` saying so."""
    if not _NAME.match(name):
        raise ValueError(f"deployment name {name!r}: 1-63 of a-z 0-9 . _ - starting with a letter or digit")
    return name


def new_version_id() -> str:
    return uuid.uuid4().hex


def version_key(name: str, version_id: str) -> str:
    return f"{name}/version/{version_id}"


def active_key(name: str) -> str:
    return f"{name}/active"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = FORMAT
    deployment: str = Field(pattern=NAME_PATTERN)


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model_id: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    size: int = Field(ge=0)
    name: str = ""

    @property
    def sha256(self) -> str:
        return self.model_id.removeprefix("sha256:")


class VersionRecord(_Record):
    kind: Literal["version"] = "version"
    version_id: str = Field(pattern=_VERSION_ID)
    graph: dict[str, Any]  # the DSL, as published
    graph_digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    reader_schema: Any  # Avro JSON: the graph's input contract
    output_schema: Any  # Avro JSON of the score records
    models: tuple[ModelRef, ...]
    created_at: str
    message: str = ""
    parent: str | None = Field(None, pattern=_VERSION_ID)  # the version active when this one was published


class ActiveRecord(_Record):
    kind: Literal["active"] = "active"
    version_id: str = Field(pattern=_VERSION_ID)
    updated_at: str
    reason: Literal["publish", "rollback"] = "publish"


@dataclass(frozen=True)
class Tombstone:
    """A null value: the key's record is deleted."""

    deployment: str
    version_id: str | None  # None: the active pointer


@dataclass(frozen=True)
class Refused:
    """A record that could not be used, and why."""

    key: str
    offset: int
    reason: str


Parsed = VersionRecord | ActiveRecord | Tombstone | Refused


def encode(record: VersionRecord | ActiveRecord) -> tuple[bytes, bytes]:
    """The (key, value) bytes of ``record``."""
    if isinstance(record, VersionRecord):
        key = version_key(record.deployment, record.version_id)
    else:
        key = active_key(record.deployment)
    return key.encode(), record.model_dump_json().encode()


def parse(key: bytes | None, value: bytes | None, offset: int) -> Parsed:
    """What the record at ``offset`` says; never raises."""
    try:
        text = (key or b"").decode()
    except UnicodeDecodeError:
        return Refused(repr(key), offset, "the key is not UTF-8")
    match = _KEY.match(text)
    if match is None:
        return Refused(text, offset, "the key is neither <name>/active nor <name>/version/<32 hex>")
    name, version_id = match["name"], match["version"]
    if not _NAME.match(name):
        return Refused(text, offset, f"{name!r} is not a deployment name")
    if value is None:
        return Tombstone(name, version_id)
    try:
        raw = json.loads(value)
    except (ValueError, RecursionError) as exc:
        return Refused(text, offset, f"the value is not JSON ({type(exc).__name__}: {exc})"[:300])
    if not isinstance(raw, dict):
        return Refused(text, offset, "the value is not a JSON object")
    if raw.get("format") != FORMAT:
        return Refused(text, offset, f"format {raw.get('format')!r}: this worker reads format {FORMAT}")
    expected = "active" if match["active"] else "version"
    if raw.get("kind") != expected:
        return Refused(text, offset, f"kind {raw.get('kind')!r} under a key of kind {expected!r}")
    try:
        record: VersionRecord | ActiveRecord = (
            ActiveRecord.model_validate(raw) if expected == "active" else VersionRecord.model_validate(raw)
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "value"
        return Refused(text, offset, f"{where}: {first['msg']}")
    if record.deployment != name or (version_id is not None and version_id != record.version_id):
        return Refused(text, offset, "the record names another deployment or version than its key")
    return record


@dataclass
class Deployment:
    """One deployment as the table holds it: its live versions in offset order, and the active one."""

    name: str
    versions: dict[str, tuple[int, VersionRecord]] = field(default_factory=dict)  # id -> (offset, record)
    active: ActiveRecord | None = None
    active_offset: int = -1

    def ordered(self) -> list[VersionRecord]:
        return [record for _, record in sorted(self.versions.values(), key=lambda pair: pair[0])]

    def number(self, version_id: str) -> int:
        """The version's number: its place (from 1) among the live versions by offset."""
        ids = [record.version_id for record in self.ordered()]
        return ids.index(version_id) + 1

    def by_number(self, number: int) -> VersionRecord:
        ordered = self.ordered()
        if not 1 <= number <= len(ordered):
            raise KeyError(f"{self.name} has no version {number} (it has 1..{len(ordered)})")
        return ordered[number - 1]

    def active_version(self) -> VersionRecord | None:
        """The version the pointer names, if both are there."""
        if self.active is None or self.active.version_id not in self.versions:
            return None
        return self.versions[self.active.version_id][1]


@dataclass
class Table:
    """The deployment topic read in offset order: the deployments and what was refused on the way."""

    deployments: dict[str, Deployment] = field(default_factory=dict)
    refused: list[Refused] = field(default_factory=list)

    def apply(self, key: bytes | None, value: bytes | None, offset: int) -> Parsed:
        """Take the record at ``offset`` in; returns what it was taken as (possibly Refused)."""
        parsed = parse(key, value, offset)
        if isinstance(parsed, Refused):
            self.refused.append(parsed)
            return parsed
        name = parsed.deployment
        deployment = self.deployments.setdefault(name, Deployment(name))
        if isinstance(parsed, Tombstone):
            if parsed.version_id is None:
                deployment.active, deployment.active_offset = None, offset
            else:
                deployment.versions.pop(parsed.version_id, None)
            if not deployment.versions and deployment.active is None:
                del self.deployments[name]
        elif isinstance(parsed, VersionRecord):
            known = deployment.versions.get(parsed.version_id)
            if known is not None and known[1] != parsed:
                why = "a version is immutable: a second record with other content is ignored"
                refused = Refused(version_key(name, parsed.version_id), offset, why)
                self.refused.append(refused)
                return refused
            if known is None:
                deployment.versions[parsed.version_id] = (offset, parsed)
        else:
            deployment.active, deployment.active_offset = parsed, offset
        return parsed

    def get(self, name: str) -> Deployment | None:
        return self.deployments.get(name)
