"""Load and compile a graph once, at start: parse, sort, type every column, build the immutable plan.

``load_graph`` parses the DSL (pydantic's errors are rewritten to name the node); ``compile_graph`` checks the
structure (duplicate ids, dangling edges, cycles, unconnected nodes), propagates column names and types
through every node in topological order (each node kind checks its own inputs), loads and checks the ONNX
models, and checks that every declared output is produced with its declared type. Every problem raises
``GraphError``.
"""

from __future__ import annotations

import graphlib
import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from worker.errors import GraphError
from worker.graph.dsl import GraphSpec, OutputField, auto_id
from worker.graph.onnx_node import ModelLoader
from worker.graph.onnx_runtime import SessionCache
from worker.graph.plan import CompileContext, Kernel, NodeInfo
from worker.graph.runner import CompiledGraph, Convert, Key, OutputPlan, Step
from worker.graph.types import ColType

View = dict[str, tuple[ColType, Key]]


def load_graph(source: str | Path | Mapping[str, Any]) -> GraphSpec:
    """Parse a graph from a JSON file path, a JSON string or an already-parsed mapping.

    A ``str`` that starts with ``{`` is JSON text, any other ``str`` a path. Raises ``GraphError`` (naming the
    node for a node's problem) for unreadable files, bad JSON and every schema violation.
    """
    if isinstance(source, Path) or (isinstance(source, str) and not source.lstrip().startswith("{")):
        try:
            source = Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise GraphError(f"cannot read graph file {source}: {exc}") from exc
    if isinstance(source, str):
        try:
            source = json.loads(source)
        except json.JSONDecodeError as exc:
            raise GraphError(f"graph is not valid JSON: {exc}") from exc
    if not isinstance(source, Mapping):
        raise GraphError("a graph must be a JSON object")
    try:
        return GraphSpec.model_validate(dict(source))
    except ValidationError as exc:
        raise _rewrite(exc, source) from exc


def _rewrite(exc: ValidationError, raw: Mapping[str, Any]) -> GraphError:
    """The first validation error as a GraphError that names the node id and the param."""
    err = exc.errors()[0]
    loc = err["loc"]
    nodes = raw.get("nodes")
    if len(loc) >= 2 and loc[0] == "nodes" and isinstance(loc[1], int) and isinstance(nodes, list | tuple):
        node = auto_id(nodes[loc[1]], loc[1])
        node_id = node.get("id") if isinstance(node, dict) else None
        rest = [str(part) for part in loc[3:]]
        where = ".".join(rest)
        if err["type"] == "union_tag_invalid":
            kind = node.get("kind") if isinstance(node, dict) else None
            return GraphError(f"unknown kind {kind!r}", node_id=str(node_id or f"nodes[{loc[1]}]"))
        if err["type"] == "union_tag_not_found":
            return GraphError("missing 'kind'", node_id=str(node_id or f"nodes[{loc[1]}]"))
        if err["type"] == "extra_forbidden":
            return GraphError(f"unknown param {where!r}", node_id=str(node_id))
        return GraphError(f"param {where!r}: {err['msg']}", node_id=str(node_id))
    where = ".".join(str(part) for part in loc)
    return GraphError(f"{where}: {err['msg']}" if where else err["msg"])


def compile_graph(
    spec: GraphSpec,
    models: ModelLoader,
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    intra_op_num_threads: int = 1,
    allow_custom_domains: bool = False,
    sessions: SessionCache | None = None,
) -> CompiledGraph:
    """Validate ``spec`` completely and build its plan. Called once at start; may block while models load.

    Raises ``GraphError`` naming the node for every structural, type or model-fit problem; the model
    loader's own ``ModelError`` passes through. With ``sessions``, a model already open there is reused.
    """
    ctx = CompileContext(models, tuple(providers), intra_op_num_threads, allow_custom_domains, sessions)
    nodes = {}
    for node in spec.nodes:
        if node.node_id in nodes:
            raise GraphError("duplicate node id", node_id=node.node_id)
        nodes[node.node_id] = node
    preds = _predecessors(spec, list(nodes))
    order = _order(preds)
    views: dict[str, View] = {}
    inputs: View = {f.name: (f.coltype, ("", f.name)) for f in spec.inputs}
    drafts: list[
        tuple[str, tuple[tuple[str, Key], ...], tuple[tuple[str, Key, ColType], ...], str | None]
    ] = []
    kernels: dict[str, Kernel] = {}
    infos: list[NodeInfo] = []
    model_ids: list[str] = []
    for node_id in order:
        node = nodes[node_id]
        view = _merge([views[p] for p in preds[node_id]], node_id) if preds[node_id] else inputs
        compiled = node.compile({name: ct for name, (ct, _) in view.items()}, ctx)
        out = {name: v for name, v in view.items() if name not in compiled.removes}
        produced = tuple((name, (node_id, name), ct) for name, ct in compiled.produces.items())
        out.update({name: (ct, key) for name, key, ct in produced})
        views[node_id] = out
        reads = tuple((name, view[name][1]) for name in compiled.reads)
        drafts.append((node_id, reads, produced, compiled.model_ids[0] if compiled.model_ids else None))
        kernels[node_id] = compiled.kernel
        model_ids.extend(m for m in compiled.model_ids if m not in model_ids)
        infos.append(NodeInfo(node_id, node.node_kind, {n: view[n][0] for n in compiled.reads},
                              dict(compiled.produces), tuple(sorted(compiled.removes))))  # fmt: skip
    sinks = [n for n in order if not any(n in preds[m] for m in order)]
    final = _merge([views[s] for s in sinks], None) if sinks else inputs
    output_plan = tuple(_output(f, final) for f in spec.outputs)
    if len({f.name for f in spec.outputs}) != len(spec.outputs):
        raise GraphError("two declared outputs have the same name")
    steps = _steps(drafts, kernels, {o.key for o in output_plan}, [key for _, key in inputs.values()])
    digest = hashlib.sha256(spec.canonical_json().encode()).hexdigest()
    return CompiledGraph(spec, digest, tuple(model_ids), steps, output_plan, tuple(infos))


def _predecessors(spec: GraphSpec, ids: list[str]) -> dict[str, list[str]]:
    preds: dict[str, list[str]] = {node_id: [] for node_id in ids}
    if spec.edges is None:
        for before, after in itertools.pairwise(ids):
            preds[after].append(before)
        return preds
    touched: set[str] = set()
    for src, dst in spec.edges:
        for end in (src, dst):
            if end not in preds:
                raise GraphError(f"dangling edge {src!r} -> {dst!r}: no node {end!r}", node_id=end)
        if src == dst:
            raise GraphError(f"cycle: edge {src!r} -> {dst!r} points to itself", node_id=src)
        if src not in preds[dst]:
            preds[dst].append(src)
        touched.update((src, dst))
    for node_id in ids:
        if len(ids) > 1 and node_id not in touched:
            raise GraphError("unreachable: no edge connects this node to the graph", node_id=node_id)
    return preds


def _order(preds: dict[str, list[str]]) -> list[str]:
    try:
        return list(graphlib.TopologicalSorter(preds).static_order())
    except graphlib.CycleError as exc:
        cycle = [str(n) for n in exc.args[1]]
        raise GraphError(f"cycle: {' -> '.join(cycle)}", node_id=cycle[0]) from exc


def _merge(views: list[View], node_id: str | None) -> View:
    merged: View = {}
    for view in views:
        for name, (ct, key) in view.items():
            if name in merged and merged[name][1] != key:
                first, second = merged[name][1][0] or "inputs", key[0] or "inputs"
                raise GraphError(
                    f"column {name!r} comes from both {first!r} and {second!r}; rename or drop one",
                    node_id=node_id,
                )
            merged[name] = (ct, key)
    return merged


def _output(f: OutputField, final: View) -> OutputPlan:
    if f.source not in final:
        known = ", ".join(sorted(final)) or "none"
        raise GraphError(
            f"declared output {f.name!r} not produced: no column {f.source!r} (available: {known})"
        )
    ct, key = final[f.source]
    want = f.coltype
    problem = None
    if ct.width is not None:
        problem = f"is a 2-D column ({ct}); pick a class or split it first"
    elif ct.dtype != want.dtype:
        problem = f"has dtype {ct.dtype}, declared {want.dtype}"
    elif ct.nullable and not want.nullable:
        problem = "may be null but the output is not nullable"
    if problem:
        raise GraphError(f"declared output {f.name!r}: column {f.source!r} {problem}")
    convert: Convert = "none"
    if want.nullable and not ct.nullable:
        convert = "float" if ct.dtype == "int64" else "object" if ct.dtype == "bool" else "none"
    return OutputPlan(f, key, convert)


def _steps(drafts: list[Any], kernels: dict[str, Any], keep: set[Key], inputs: list[Key]) -> tuple[Step, ...]:
    """Attach to each step the column versions no later step (nor the outputs) needs, to free them early:
    fewer columns to filter when rows are rejected. Inputs nobody reads go after the first step."""
    last: dict[Key, int] = dict.fromkeys(inputs, 0)
    for i, (_, reads, produced, _) in enumerate(drafts):
        for _, key, _ in produced:
            last.setdefault(key, i)
        for _, key in reads:
            last[key] = i
    release: dict[int, list[Key]] = {}
    for key, i in last.items():
        if key not in keep:
            release.setdefault(i, []).append(key)
    return tuple(
        Step(node_id, kernels[node_id], reads, produced, tuple(release.get(i, ())), model_id)
        for i, (node_id, reads, produced, model_id) in enumerate(drafts)
    )
