"""``rtml-worker run``: one replica of the streaming worker; ``run --check [--online]`` checks, exits."""

from __future__ import annotations

import argparse
import gc
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker.avro.registry import SchemaRegistryClient, display_url
from worker.errors import ConfigError
from worker.runtime.backoff import Backoff
from worker.runtime.build import GraphSource, RegistryDown, build_pipeline, registry_client, uses_registry
from worker.runtime.clients import KafkaClients
from worker.runtime.config import Settings, load_settings
from worker.runtime.health import Health, HealthServer
from worker.runtime.limits import fit_to_topics
from worker.runtime.logs import configure_logging
from worker.runtime.loop import Worker
from worker.runtime.metrics import Metrics
from worker.runtime.pipeline import Pipeline
from worker.runtime.preflight import admin_client, check_online, wait_for_broker

log = logging.getLogger("worker.runtime")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="consume, score and publish: one replica of the consumer group",
        description="Every setting may also come from RTML_* environment variables (see the README).",
    )
    parser.add_argument("--config", type=Path, help="a TOML settings file")
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate settings, graph, models, schemas and the registry, register nothing, then exit",
    )
    parser.add_argument(
        "--online",
        action="store_true",
        help="with --check: also the broker, the topics and the principal's permissions (describes only)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    configure_logging(settings.log_level)
    if args.online and not args.check:
        raise ConfigError("only with --check (run --check --online)", field="--online")
    if args.check:
        return check(settings, online=args.online)
    return serve(settings)


def serve(
    settings: Settings,
    *,
    clients: KafkaClients | None = None,
    prepare: Callable[[Pipeline], Pipeline] | None = None,
) -> int:
    """One replica until it stops: the body of ``rtml-worker run``, its exit code.

    ``clients`` (librdkafka's by default) and ``prepare`` (applied to the built pipeline) are for test
    harnesses that inject faults around the real worker (tests/chaos).
    """
    metrics = Metrics()
    registry = registry_client(settings)
    follower = None
    if settings.deployment is not None:
        # only a deployment's replica reads the deployment topic and reports its status
        from worker.deploy.follow import Follower
        from worker.deploy.status import StatusWriter

        build = _preparing(settings, registry, prepare)
        status = StatusWriter(settings)
        follower = Follower(
            settings, lambda source: _build_waiting(settings, lambda: build(source)), status, metrics
        )
        pipeline = follower.start()
    else:
        pipeline = _build_waiting(settings, lambda: build_pipeline(settings, registry))
        if prepare is not None:
            pipeline = prepare(pipeline)
    wait_for_broker(settings)  # bounded: a broker that never answers is one line, not a retry loop
    # No batch larger than the output topics take: the broker would refuse it whole.
    settings = fit_to_topics(settings, admin_client(settings, "producer", lambda _error: None))
    # Startup objects (models, schemas, the graph) live as long as the process: keep them out of the
    # collector's full passes, which otherwise stall a batch by tens of milliseconds.
    gc.collect()
    gc.freeze()
    health = Health(settings.stall_after_s)
    with HealthServer(health, metrics, settings.metrics_host, settings.metrics_port) as server:
        log.info("http server listening", extra={"port": server.port, "host": settings.metrics_host})
        started = {"group_id": settings.group_id, "topics": settings.input.topics,
                   "delivery": settings.delivery, "graph_digest": pipeline.graph.digest,
                   "deployment": pipeline.deployment}  # fmt: skip
        log.info("starting", extra=started)
        worker = Worker(settings, pipeline, metrics, health, clients)
        if follower is not None:
            follower.follow(
                worker.swap_pipeline,
                health.set_fatal,
                lambda: worker.ctx.member_id,
                worker.suspend,
                lambda: worker.switched,
            )
        try:
            return worker.run()
        finally:
            if follower is not None:
                follower.stop()


def _preparing(
    settings: Settings, registry: SchemaRegistryClient | None, prepare: Callable[[Pipeline], Pipeline] | None
) -> Callable[[GraphSource], Pipeline]:
    """How a deployment's replica builds a version (with the harness's ``prepare`` applied to each)."""

    def build(source: GraphSource) -> Pipeline:
        pipeline = build_pipeline(settings, registry, source=source)
        return prepare(pipeline) if prepare is not None else pipeline

    return build


def _build_waiting(
    settings: Settings, build: Callable[[], Pipeline], *, sleep: Callable[[float], None] = time.sleep
) -> Pipeline:
    """The pipeline; while no registry answers, tried again up to ``schema_registry.startup_timeout_s``, so
    a replica restarted during a registry outage waits for it instead of crash-looping."""
    deadline = time.monotonic() + settings.schema_registry.startup_timeout_s
    backoff = Backoff(first_s=0.5, max_s=5.0)
    while True:
        try:
            return build()
        except RegistryDown as exc:
            delay = backoff.next()
            if time.monotonic() + delay > deadline:
                raise
            extra = {"error": str(exc), "retry_in_s": delay}
            log.warning("schema registry unavailable at start: waiting", extra=extra)
            sleep(delay)


def check(settings: Settings, *, online: bool) -> int:
    """``run --check``: build everything a replica builds, registering nothing; one ``ok:`` line each.

    Kafka is contacted only when ``online``, and then only described (see ``preflight.check_online``).
    """
    registry = registry_client(settings)
    source = None
    if settings.deployment is not None:
        from worker.deploy.follow import read_active, version_source

        table, _, version = read_active(settings)
        source = version_source(table, version)
    pipeline = build_pipeline(settings, registry, source=source, dry_run=True)
    for line in _report(settings, pipeline):
        print(f"ok: {line}", flush=True)
    if not online:
        print("skipped: Kafka, not contacted (--online checks the broker, the topics and the permissions)")
        return 0
    for line in check_online(settings):
        print(f"ok: {line}", flush=True)
    return 0


def _report(settings: Settings, pipeline: Pipeline) -> list[str]:
    graph, output = pipeline.graph, settings.output
    where = f"of {pipeline.deployment}" if pipeline.deployment else str(output.schema_path)
    models = ", ".join(graph.model_ids) or "none"
    lines = [
        f"graph {graph.spec.name} ({graph.digest[:12]}), models {models}",
        f"output schema {where} fits the graph's {len(graph.outputs)} outputs",
    ]
    if uses_registry(settings):
        lines.append(f"schema_registry.url {display_url(settings.schema_registry.url or '')} answers")
    if output.framing == "confluent":
        subject, schema_id = f"{output.topic}-value", pipeline.encoder.schema_id
        if schema_id is None:
            lines.append(f"output schema not registered under {subject} yet; the registry accepts it: "
                         "run registers it (schema_registry.auto_register)")  # fmt: skip
        else:
            lines.append(f"output schema registered under {subject} as id {schema_id}")
    return lines
