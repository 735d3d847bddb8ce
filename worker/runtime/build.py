"""Build a ``Pipeline`` from settings: schemas, registry, models, graph. Runs once at start (and per deploy).

Everything that can be wrong with the config, the graph, a model or a schema fails here, before the worker
joins its consumer group, with a ``ConfigError`` naming the field or node.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.avro.decoder import BatchDecoder
from worker.avro.encoder import ScoreEncoder
from worker.avro.guards import Limits
from worker.avro.registry import (
    NotARegistry,
    RegistryConfig,
    RegistryDenied,
    SchemaNotFound,
    SchemaRegistryClient,
    display_url,
)
from worker.avro.schema import AvroSchema, SchemaParseError
from worker.errors import ConfigError, RegistryUnavailable
from worker.graph import compile_graph, load_graph
from worker.graph.onnx_runtime import SessionCache
from worker.models.store import ModelStore
from worker.runtime.config import RegistrySettings, Settings
from worker.runtime.contract import check_outputs
from worker.runtime.pipeline import Pipeline

# One per process: a deployment's next version reuses the open sessions of the models it keeps.
SESSIONS = SessionCache()


def registry_client(settings: Settings) -> SchemaRegistryClient | None:
    return client_of(settings.schema_registry)


def client_of(registry: RegistrySettings) -> SchemaRegistryClient | None:
    """A client for these registry settings; None without a URL (plain Avro)."""
    if registry.url is None:
        return None
    config = RegistryConfig(url=registry.url, basic_auth_user_info=registry.user_info(),
                            bearer_token=registry.token(), timeout_s=registry.timeout_s,
                            call_budget_s=registry.call_budget_s)  # fmt: skip
    return SchemaRegistryClient(config)


def _schema(path: object, field: str) -> AvroSchema:
    try:
        return AvroSchema.load(str(path))
    except (OSError, SchemaParseError) as exc:
        raise ConfigError(f"cannot load Avro schema {path}: {exc}", field=field) from exc


@dataclass(frozen=True)
class GraphSource:
    """Where a pipeline's graph and its schemas come from: the settings' files, or a deployment's version."""

    graph: Path | Mapping[str, Any]
    reader: AvroSchema
    output: AvroSchema
    deployment: str | None = None  # "<name>@<version>" for a deployment's version, None for a file

    @staticmethod
    def of_settings(settings: Settings) -> GraphSource:
        if settings.graph is None:
            raise ConfigError("no graph file: a deployment's replica builds from its version", field="graph")
        reader = _schema(settings.input.reader_schema, "input.reader_schema")
        output = _schema(settings.output.schema_path, "output.schema")
        return GraphSource(settings.graph, reader, output)


def build_pipeline(
    settings: Settings,
    registry: SchemaRegistryClient | None,
    *,
    source: GraphSource | None = None,
    dry_run: bool = False,
) -> Pipeline:
    """Decoder, compiled graph and encoder for ``settings``; may block on the registry and model loading.

    ``source`` is the graph and schemas (the settings' files by default). ``dry_run`` (``run --check``)
    registers nothing: the encoder of an output schema not registered yet has no id (see
    ``ScoreEncoder.for_topic``), and such a pipeline is for checking only.
    """
    source = source or GraphSource.of_settings(settings)
    reader = source.reader
    limits = Limits()
    if settings.input.framing == "confluent":
        if registry is None:
            raise ConfigError("Confluent framing needs a registry url", field="schema_registry.url")
        decoder = BatchDecoder(reader, registry=registry, limits=limits)
    else:
        writer = (
            _schema(settings.input.writer_schema, "input.writer_schema")
            if settings.input.writer_schema
            else reader
        )
        decoder = BatchDecoder(reader, writer=writer, limits=limits)
    store = ModelStore(
        settings.model_store, cache=settings.model_cache, allow_custom_domains=settings.allow_custom_domains
    )
    graph = compile_graph(
        load_graph(source.graph),
        store,
        intra_op_num_threads=settings.intra_op_num_threads,
        allow_custom_domains=settings.allow_custom_domains,
        sessions=SESSIONS,
    )
    score_schema = source.output
    check_outputs(score_schema, graph.outputs)  # before the schema is registered anywhere
    if registry is not None and uses_registry(settings):
        with registry_errors(settings):
            registry.subjects()  # a wrong URL is named here, not as a missing schema later
    if settings.output.framing == "confluent":
        if registry is None:
            raise ConfigError("Confluent framing needs a registry url", field="schema_registry.url")
        auto_register = settings.schema_registry.auto_register
        with registry_errors(settings):
            encoder = ScoreEncoder.for_topic(score_schema, settings.output.topic, registry,
                                             auto_register=auto_register, dry_run=dry_run)  # fmt: skip
    else:
        encoder = ScoreEncoder(score_schema)
    return Pipeline(decoder, graph, encoder, source.deployment)


def uses_registry(settings: Settings) -> bool:
    return "confluent" in (settings.input.framing, settings.output.framing)


@contextmanager
def registry_errors(settings: Settings | RegistrySettings) -> Iterator[None]:
    """Registry failures at start as one ConfigError naming the setting to fix (the client has retried)."""
    registry = settings.schema_registry if isinstance(settings, Settings) else settings
    url = display_url(registry.url or "")
    try:
        yield
    except RegistryDenied as exc:
        if registry.basic_auth_user_info or registry.basic_auth_user_info_file:
            field = "schema_registry.basic_auth_user_info"
        elif registry.bearer_token or registry.bearer_token_file:
            field = "schema_registry.bearer_token"
        else:
            raise ConfigError(f"the registry at {url} wants credentials ({exc}); set schema_registry."
                              "basic_auth_user_info or schema_registry.bearer_token",
                              field="schema_registry.url") from None  # fmt: skip
        raise ConfigError(f"the registry at {url} refused the credentials ({exc})", field=field) from None
    except (NotARegistry, SchemaNotFound) as exc:  # SchemaNotFound: a 404 where the API has a path
        raise ConfigError(f"no Confluent-compatible registry answers at {url} ({exc}); does the URL end in "
                          "/apis/ccompat/v7?", field="schema_registry.url") from None  # fmt: skip
    except RegistryUnavailable as exc:
        raise RegistryDown(f"no registry answers at {url} ({exc})", field="schema_registry.url") from None


class RegistryDown(ConfigError):
    """No registry answered at start (unreachable, timing out, 5xx): a moment, unlike a wrong URL or
    refused credentials, so ``run`` waits for it a while before it gives up."""
