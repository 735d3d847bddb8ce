"""``rtml-worker deploy publish | list | show | history | rollback | delete``.

Each reads the same settings file (``--config``) and ``RTML_*`` variables as ``run`` (see
``worker.deploy.settings``) and prints what ``worker.deploy.api.Deployments`` returns. Tables go to stdout;
``--json`` prints the same as JSON; a refusal is one ``rtml-worker: error: <field>: ...`` line and exit code
2 (``worker.cli``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from worker.deploy.api import Deployments
from worker.deploy.settings import load_deploy_settings


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


def _fleet(args: argparse.Namespace) -> Deployments:
    """The API over the settings of ``--config``, printing each check and step as it passes."""
    return Deployments(load_deploy_settings(args.config), say=lambda line: print(line, flush=True))


def _publish(args: argparse.Namespace) -> int:
    started = time.monotonic()
    _fleet(args).publish(
        args.name,
        args.graph,
        reader_schema=args.reader_schema,
        output_schema=args.output_schema,
        message=args.message,
        sample=args.sample,
        wait=args.wait,
        timeout_s=args.timeout,
    )
    if args.wait:
        print(f"({time.monotonic() - started:.1f} s in all)")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    _fleet(args).rollback(args.name, args.to, wait=args.wait, timeout_s=args.timeout)
    return 0


def _delete(args: argparse.Namespace) -> int:
    count = _fleet(args).delete(args.name)
    print(f"deleted {args.name} and its {count} version{'s' if count != 1 else ''}")
    return 0


def _list(args: argparse.Namespace) -> int:
    fleet = _fleet(args)
    table = fleet.table()
    rows = fleet.list_deployments()
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return 0
    _print_table(["name", "active", "versions", "created", "updated"], [
        [r.name, str(r.active or "-"), str(r.versions), r.created, r.updated] for r in rows
    ])  # fmt: skip
    for refused in table.refused:
        print(f"refused: offset {refused.offset} ({refused.key}): {refused.reason}")
    return 0


def _show(args: argparse.Namespace) -> int:
    number, record = _fleet(args).show(args.name, args.version)
    print(json.dumps(record.model_dump(mode="json") | {"number": number}, indent=2))
    return 0


def _history(args: argparse.Namespace) -> int:
    rows = _fleet(args).history(args.name)
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return 0
    _print_table(["version", "id", "created", "parent", "graph digest", "message"], [
        [f"{r.number}{' *' if r.active else ''}", r.version_id[:12], r.created, str(r.parent or "-"),
         r.digest[:12], r.message] for r in rows
    ])  # fmt: skip
    return 0


def _status(args: argparse.Namespace) -> int:
    rows = _fleet(args).status(args.name)
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return 0
    _print_table(["replica", "host", "version", "since", "lag", "refused", "heartbeat"], [
        [r.replica or f"({r.member_id[:16]}: no status yet)", r.host, str(r.version or "-"), r.since or "-",
         str(r.lag), str(len(r.refused)), r.heartbeat_at or "-"] for r in rows
    ])  # fmt: skip
    return 0


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    for line in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
