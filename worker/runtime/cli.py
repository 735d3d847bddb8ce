"""``rtml-worker run``: one replica of the streaming worker; ``run --check [--online]`` checks, exits."""

from __future__ import annotations

import argparse
import gc
import logging
from pathlib import Path
from typing import Any

from worker.avro.registry import display_url
from worker.errors import ConfigError
from worker.runtime.build import build_pipeline, registry_client, uses_registry
from worker.runtime.config import Settings, load_settings
from worker.runtime.health import Health, HealthServer
from worker.runtime.logs import configure_logging
from worker.runtime.loop import Worker
from worker.runtime.metrics import Metrics
from worker.runtime.pipeline import Pipeline
from worker.runtime.preflight import check_online, wait_for_broker

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
    metrics = Metrics()
    pipeline = build_pipeline(settings, registry_client(settings))
    wait_for_broker(settings)  # bounded: a broker that never answers is one line, not a retry loop
    # Startup objects (models, schemas, the graph) live as long as the process: keep them out of the
    # collector's full passes, which otherwise stall a batch by tens of milliseconds.
    gc.collect()
    gc.freeze()
    health = Health(settings.stall_after_s)
    with HealthServer(health, metrics, settings.metrics_host, settings.metrics_port) as server:
        log.info("http server listening", extra={"port": server.port, "host": settings.metrics_host})
        started = {"group_id": settings.group_id, "topics": settings.input.topics,
                   "delivery": settings.delivery, "graph_digest": pipeline.graph.digest}  # fmt: skip
        log.info("starting", extra=started)
        return Worker(settings, pipeline, metrics, health).run()


def check(settings: Settings, *, online: bool) -> int:
    """``run --check``: build everything a replica builds, registering nothing; one ``ok:`` line each.

    Kafka is contacted only when ``online``, and then only described (see ``preflight.check_online``).
    """
    pipeline = build_pipeline(settings, registry_client(settings), dry_run=True)
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
    models = ", ".join(graph.model_ids) or "none"
    lines = [
        f"graph {graph.spec.name} ({graph.digest[:12]}), models {models}",
        f"output schema {output.schema_path} fits the graph's {len(graph.outputs)} outputs",
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
