"""What the ``deploy`` commands read: the replicas' own settings file and ``RTML_*`` variables.

Only the parts a deploy command needs are taken (the broker and its security, the registry, the model
store, the deployment topic, the schemas); the rest of a replica's file (group, topics, batch, ...) is
ignored rather than required, so one file serves the replicas and the person who deploys to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from worker.models import ModelStore
from worker.runtime.config import (
    DeploymentsSettings,
    EnvFirst,
    KafkaSettings,
    RegistrySettings,
    check_store_location,
    load_as,
    split_csv,
)


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class _Input(_Loose):
    topics: Annotated[list[str], NoDecode] = []
    reader_schema: Path | None = None
    framing: Literal["confluent", "plain"] = "confluent"

    _csv = field_validator("topics", mode="before")(split_csv)


class _Output(_Loose):
    topic: str | None = None
    schema_path: Path | None = Field(None, alias="schema")
    framing: Literal["confluent", "plain"] = "confluent"


class DeploySettings(EnvFirst):
    model_config = SettingsConfigDict(
        env_prefix="RTML_", env_nested_delimiter="__", extra="ignore", frozen=True, populate_by_name=True
    )

    group_id: str | None = None  # the replicas' group: who is live, for `deploy status` and `--wait`
    kafka: KafkaSettings = KafkaSettings()
    schema_registry: RegistrySettings = RegistrySettings()
    model_store: str = Field(".models", min_length=1)
    model_cache: Path | None = None
    allow_custom_domains: bool = False
    deployments: DeploymentsSettings = DeploymentsSettings()
    input: _Input = _Input()
    output: _Output = _Output()

    _store = field_validator("model_store")(check_store_location)

    def store(self) -> ModelStore:
        return ModelStore(
            self.model_store, cache=self.model_cache, allow_custom_domains=self.allow_custom_domains
        )

    def control(self) -> Control:
        return Control(
            self.deployments.topic,
            self.kafka.client_config("consumer"),
            self.kafka.client_config("producer"),
        )


@dataclass(frozen=True)
class Control:
    """The deployment topic and the client settings to read and to write it."""

    topic: str
    read: dict[str, Any]
    write: dict[str, Any]


def load_deploy_settings(path: Path | None) -> DeploySettings:
    return load_as(DeploySettings, path)
