"""``rtml-worker dsl-schema`` (the JSON Schema of the graph DSL) and ``rtml-worker nodes`` (every node kind
with its params), both generated from the pydantic models that validate graphs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from worker.graph.dsl import NODE_KINDS, GraphSpec


def register(subparsers: Any) -> None:
    """Add the ``dsl-schema`` and ``nodes`` subcommands (called by worker/cli.py)."""
    schema = subparsers.add_parser("dsl-schema", help="print the JSON Schema of the graph DSL")
    schema.set_defaults(func=dsl_schema)
    nodes = subparsers.add_parser("nodes", help="list the node kinds with their params")
    nodes.add_argument("--json", action="store_true", help="machine-readable output")
    nodes.set_defaults(func=list_nodes)


def dsl_schema(args: argparse.Namespace) -> int:
    print(json.dumps(GraphSpec.model_json_schema(by_alias=True), indent=2))
    return 0


def node_catalog() -> list[dict[str, Any]]:
    """One entry per node kind: kind, class, summary and params (type, required, default), read from the
    same pydantic models that validate graphs."""
    catalog = []
    for cls in NODE_KINDS:
        schema = cls.model_json_schema()
        required = set(schema.get("required", ()))
        params = {
            name: {
                "type": _type_name(prop),
                "required": name in required,
                "default": prop.get("default"),
            }
            for name, prop in schema["properties"].items()
            if name != "kind"
        }
        kind = cls.model_fields["kind"].default
        catalog.append({"kind": kind, "class": cls.__name__, "summary": cls.summary, "params": params})
    return catalog


def list_nodes(args: argparse.Namespace) -> int:
    catalog = node_catalog()
    if args.json:
        print(json.dumps(catalog, indent=2, default=str))
        return 0
    for entry in catalog:
        print(f"{entry['kind']} ({entry['class']}): {entry['summary']}")
        for name, p in entry["params"].items():
            default = "required" if p["required"] else f"default {p['default']!r}"
            print(f"    {name}: {p['type']}  [{default}]")
    return 0


def _type_name(prop: dict[str, Any]) -> str:
    """A short type for a JSON Schema property: ``list[string]``, ``'a' | 'b'``, ``number | null``."""
    if "anyOf" in prop:
        return " | ".join(_type_name(p) for p in prop["anyOf"])
    if "enum" in prop:
        return " | ".join(repr(v) for v in prop["enum"])
    if "const" in prop:
        return repr(prop["const"])
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list[{_type_name(prop.get('items', {}))}]"
    if kind == "object":
        return f"map[string, {_type_name(prop.get('additionalProperties', {}))}]"
    return str(kind)
