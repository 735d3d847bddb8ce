"""``rtml-worker score | validate | explain``: offline scoring and graph checks from the command line.

* ``score GRAPH --input FILE [--models STORE] [--batch-size N]`` prints one JSON line per input event, in
  input order: the score record, or ``{"error": {...}}`` for a rejected event; a summary goes to stderr.
* ``validate GRAPH [--models STORE]`` compiles the graph (every node, every model) without scoring: prints
  ``ok`` and exits 0, or exits 2 with the ``GraphError``/``ModelError`` message.
* ``explain GRAPH [--models STORE] [--json]`` prints each node's input and output columns with their types.

Graph and model errors are ``ConfigError``s, which ``worker.cli.main`` prints and turns into exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from worker.graph import CompiledGraph, compile_graph, load_graph
from worker.models import ModelStore
from worker.models.cli import add_store_argument
from worker.scoring.reader import read_events
from worker.scoring.score import score_events


def register(subparsers: Any) -> None:
    """Add the ``score``, ``validate`` and ``explain`` commands."""
    score = subparsers.add_parser("score", help="score events from a file, one JSON line per event")
    _graph_arguments(score)
    score.add_argument("--input", required=True, metavar="FILE", help="JSON Lines or Avro container file")
    score.add_argument("--batch-size", type=_positive, default=1000, metavar="N", help="events per batch")
    score.set_defaults(func=_score)

    validate = subparsers.add_parser("validate", help="check a graph and its models without scoring")
    _graph_arguments(validate)
    validate.set_defaults(func=_validate)

    explain = subparsers.add_parser("explain", help="print each node's input and output columns")
    _graph_arguments(explain)
    explain.add_argument("--json", action="store_true", help="print JSON instead of text")
    explain.set_defaults(func=_explain)


def _graph_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", metavar="GRAPH", help="the graph's JSON file")
    add_store_argument(parser)
    parser.add_argument(
        "--allow-custom-domains", action="store_true", help="accept models with non-standard operator domains"
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def compile_from_args(args: argparse.Namespace) -> CompiledGraph:
    """Load and compile ``args.graph`` against the model store named by ``args.models``."""
    store = ModelStore(args.models, allow_custom_domains=args.allow_custom_domains)
    return compile_graph(load_graph(args.graph), store, allow_custom_domains=args.allow_custom_domains)


def _score(args: argparse.Namespace) -> int:
    graph = compile_from_args(args)
    scored = rejected = 0
    out = sys.stdout
    for result in score_events(graph, read_events(args.input), batch_size=args.batch_size):
        out.write(json.dumps(result) + "\n")
        rejected += "error" in result
        scored += 1
    print(f"{scored} events, {scored - rejected} scored, {rejected} rejected", file=sys.stderr)
    return 0


def _validate(args: argparse.Namespace) -> int:
    compile_from_args(args)
    print("ok")
    return 0


def _explain(args: argparse.Namespace) -> int:
    graph = compile_from_args(args)
    nodes = graph.explain()
    if args.json:
        described = {
            "name": graph.spec.name,
            "digest": graph.digest,
            "model_ids": list(graph.model_ids),
            "inputs": {f.name: str(f.coltype) for f in graph.inputs},
            "nodes": [
                {
                    "id": node.node_id,
                    "kind": node.kind,
                    "inputs": {name: str(ct) for name, ct in node.inputs.items()},
                    "outputs": {name: str(ct) for name, ct in node.outputs.items()},
                    "removes": list(node.removes),
                }
                for node in nodes
            ],
            "outputs": {f.name: str(f.coltype) for f in graph.outputs},
        }
        print(json.dumps(described, indent=2))
        return 0
    lines = [f"graph {graph.spec.name} (digest {graph.digest[:12]})", f"inputs: {_columns(graph.inputs)}"]
    for number, node in enumerate(nodes, 1):
        lines.append(f"{number:>3}. {node.node_id} ({node.kind})")
        lines.append(f"       in:  {_types(node.inputs)}")
        lines.append(f"       out: {_types(node.outputs)}")
        if node.removes:
            lines.append(f"       removes: {', '.join(node.removes)}")
    lines.append(f"outputs: {_columns(graph.outputs)}")
    print("\n".join(lines))
    return 0


def _types(columns: dict[str, Any]) -> str:
    return ", ".join(f"{name} {ct}" for name, ct in columns.items()) or "-"


def _columns(fields: Any) -> str:
    return ", ".join(f"{f.name} {f.coltype}" for f in fields)
