"""``rtml-worker deploy publish | list | show | history | rollback | delete``.

Each reads the same settings file (``--config``) and ``RTML_*`` variables as ``run`` (see
``worker.deploy.settings``). Tables go to stdout; ``--json`` prints the same as JSON; a refusal is one
``rtml-worker: error: <field>: ...`` line and exit code 2 (``worker.cli``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from worker.deploy.publish import check_registry, check_sample, delete, prepare, publish, rollback
from worker.deploy.records import Deployment, Table, VersionRecord
from worker.deploy.settings import DeploySettings, load_deploy_settings
from worker.deploy.status import live, wait_running
from worker.deploy.topic import read_table
from worker.errors import ConfigError
from worker.runtime.build import client_of, registry_errors


def register(subparsers: Any) -> None:
    deploy = subparsers.add_parser(
        "deploy",
        help="publish, list, show, roll back and delete deployments (the graph every replica runs)",
        description="Deployments live in a compacted Kafka topic (deployments.topic) that replicas follow.",
    )
    actions = deploy.add_subparsers(dest="deploy_command", metavar="ACTION", required=True)

    def action(name: str, help_text: str, func: Any, *, named: bool = True) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
        parser.add_argument("--config", type=Path, help="the replicas' TOML settings file")
        if named:
            parser.add_argument("name", help="the deployment's name")
        parser.set_defaults(func=func)
        return parser

    pub = action(
        "publish", "check a graph with its models and schemas, then make it the active version", _publish
    )
    pub.add_argument("graph", type=Path, help="the graph's JSON DSL")
    pub.add_argument(
        "--reader-schema", type=Path, help="the graph's input schema (default: input.reader_schema)"
    )
    pub.add_argument("--output-schema", type=Path, help="the score schema (default: output.schema)")
    pub.add_argument("--message", default="", help="what changed, shown by `deploy history`")
    pub.add_argument(
        "--sample", type=Path, help="events (JSON Lines or Avro) that must all score before it is written"
    )
    _waiting(pub)
    listing = action("list", "every deployment and its active version", _list, named=False)
    listing.add_argument("--json", action="store_true")
    show = action("show", "a version whole: its graph, schemas and models (default: the active one)", _show)
    show.add_argument("--version", type=int, help="the version number (see `deploy history`)")
    history = action("history", "every version of a deployment, oldest first", _history)
    history.add_argument("--json", action="store_true")
    back = action(
        "rollback", "make an earlier version active again (default: the active one's parent)", _rollback
    )
    back.add_argument("--to", type=int, help="the version number to make active")
    _waiting(back)
    action("delete", "delete a deployment and every version of it", _delete)
    status = action("status", "every live replica of the group: the version it runs, since when", _status)
    status.add_argument("--json", action="store_true")


def _waiting(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        action="store_true",
        help="return once every live replica of group_id runs it (or fail naming the one that refused it)",
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="how long --wait waits, in seconds (120)"
    )


def _publish(args: argparse.Namespace) -> int:
    settings = load_deploy_settings(args.config)
    reader = args.reader_schema or settings.input.reader_schema
    output = args.output_schema or settings.output.schema_path
    if reader is None:
        raise ConfigError(
            "needed to publish: --reader-schema, or input.reader_schema", field="input.reader_schema"
        )
    if output is None:
        raise ConfigError("needed to publish: --output-schema, or output.schema", field="output.schema")
    prepared = prepare(args.name, args.graph, reader, output, settings.store(), message=args.message,
                       allow_custom_domains=settings.allow_custom_domains)  # fmt: skip
    print(f"ok: the graph compiles with its {len(prepared.record.models)} models and fits both schemas")
    if args.sample is not None:
        print(f"ok: {check_sample(prepared, args.sample)}")
    registry = client_of(settings.schema_registry)
    if registry is not None:
        inputs = settings.input.topics if settings.input.framing == "confluent" else []
        output_topic = settings.output.topic if settings.output.framing == "confluent" else None
        with registry_errors(settings.schema_registry):
            for line in check_registry(registry, prepared, input_topics=inputs, output_topic=output_topic):
                print(f"ok: {line}")
    done = publish(settings.control(), prepared)
    print(
        f"published {done.deployment} version {done.number} ({done.version_id[:12]}), now active", flush=True
    )
    return _wait(settings, args, done.deployment, done.version_id, done.number)


def _list(args: argparse.Namespace) -> int:
    table = _table(load_deploy_settings(args.config))
    rows = [_summary(d) for _, d in sorted(table.deployments.items())]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    _print_table(["name", "active", "versions", "created", "updated"], [
        [r["name"], str(r["active"] or "-"), str(r["versions"]), r["created"], r["updated"]] for r in rows
    ])  # fmt: skip
    _warn_refused(table)
    return 0


def _show(args: argparse.Namespace) -> int:
    deployment = _deployment(load_deploy_settings(args.config), args.name)
    version = _version(deployment, args.version)
    body = version.model_dump(mode="json") | {"number": deployment.number(version.version_id)}
    print(json.dumps(body, indent=2))
    return 0


def _history(args: argparse.Namespace) -> int:
    deployment = _deployment(load_deploy_settings(args.config), args.name)
    active = deployment.active.version_id if deployment.active is not None else None
    rows: list[dict[str, Any]] = []
    for record in deployment.ordered():
        parent = deployment.number(record.parent) if record.parent in deployment.versions else None
        rows.append({"number": deployment.number(record.version_id), "version_id": record.version_id,
                     "created": record.created_at, "parent": parent, "active": record.version_id == active,
                     "digest": record.graph_digest, "message": record.message})  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    _print_table(["version", "id", "created", "parent", "graph digest", "message"], [
        [f"{r['number']}{' *' if r['active'] else ''}", r["version_id"][:12], r["created"],
         str(r["parent"] or "-"), r["digest"][:12], r["message"]] for r in rows
    ])  # fmt: skip
    return 0


def _rollback(args: argparse.Namespace) -> int:
    settings = load_deploy_settings(args.config)
    done = rollback(settings.control(), args.name, args.to)
    print(
        f"rolled {done.deployment} back to version {done.number} ({done.version_id[:12]}), now active",
        flush=True,
    )
    return _wait(settings, args, done.deployment, done.version_id, done.number)


def _wait(settings: DeploySettings, args: argparse.Namespace, name: str, version_id: str, number: int) -> int:
    if not args.wait:
        return 0
    started = time.monotonic()
    members = wait_running(settings.kafka.client_config("consumer"), _group(settings),
                           settings.deployments.status_topic, version_id, label=f"{name}@{number}",
                           timeout_s=args.timeout)  # fmt: skip
    print(f"all {len(members)} live replicas run {name}@{number} ({time.monotonic() - started:.1f} s)")
    return 0


def _status(args: argparse.Namespace) -> int:
    settings = load_deploy_settings(args.config)
    deployment = _deployment(settings, args.name)
    config, group = settings.kafka.client_config("consumer"), _group(settings)
    members = live(config, group, settings.deployments.status_topic, with_lag=True)
    rows: list[dict[str, Any]] = []
    for member in members:
        status = member.status
        running = (
            status is not None and status.deployment == deployment.name and status.version_id is not None
        )
        rows.append({"replica": status.replica if status else None, "member_id": member.member_id,
                     "host": member.host, "version": status.version if running and status else None,
                     "since": status.since if status else None,
                     "refused": sorted(status.refused) if status else [], "lag": member.lag,
                     "heartbeat_at": status.heartbeat_at if status else None})  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    _print_table(["replica", "host", "version", "since", "lag", "refused", "heartbeat"], [
        [r["replica"] or f"({r['member_id'][:16]}: no status yet)", r["host"], str(r["version"] or "-"),
         r["since"] or "-", str(r["lag"]), str(len(r["refused"])), r["heartbeat_at"] or "-"] for r in rows
    ])  # fmt: skip
    return 0


def _group(settings: DeploySettings) -> str:
    if settings.group_id is None:
        raise ConfigError("the replicas' group is needed to know which are live", field="group_id")
    return settings.group_id


def _delete(args: argparse.Namespace) -> int:
    settings = load_deploy_settings(args.config)
    count = delete(settings.control(), args.name)
    print(f"deleted {args.name} and its {count} version{'s' if count != 1 else ''}")
    return 0


def _table(settings: DeploySettings) -> Table:
    control = settings.control()
    return read_table(control.read, control.topic)[0]


def _deployment(settings: DeploySettings, name: str) -> Deployment:
    deployment = _table(settings).get(name)
    if deployment is None:
        raise ConfigError(f"no deployment named {name}", field="deployment")
    return deployment


def _version(deployment: Deployment, number: int | None) -> VersionRecord:
    if number is not None:
        try:
            return deployment.by_number(number)
        except KeyError as exc:
            raise ConfigError(str(exc.args[0]), field="--version") from exc
    active = deployment.active_version()
    if active is None:
        raise ConfigError(
            f"{deployment.name} has no active version: name one with --version", field="--version"
        )
    return active


def _summary(deployment: Deployment) -> dict[str, Any]:
    ordered = deployment.ordered()
    active = deployment.active_version()
    return {
        "name": deployment.name,
        "active": deployment.number(active.version_id) if active is not None else None,
        "versions": len(ordered),
        "created": ordered[0].created_at if ordered else "-",
        "updated": deployment.active.updated_at if deployment.active is not None else "-",
    }


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    for line in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def _warn_refused(table: Table) -> None:
    for refused in table.refused:
        print(f"refused: offset {refused.offset} ({refused.key}): {refused.reason}")
