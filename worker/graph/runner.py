"""The compiled, immutable plan of a graph and its per-batch run.

``CompiledGraph.run`` walks the plan: each step gets only the columns it reads, its kernel returns produced
columns for the rows it kept and the rows it rejected; rejected rows become ``ScoringError``s and leave the
rest of the run. A kernel that raises on a whole batch is re-run on halves (bisect) until the rows that make
it raise are isolated, so good rows still go through. Bad rows never make ``run`` raise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from worker.columns import Batch, StageResult, batch_len
from worker.errors import GraphError, ScoringError
from worker.graph.dsl import GraphSpec, InputField, OutputField
from worker.graph.plan import Kernel, NodeInfo
from worker.graph.types import BoolArray, ColType, accepts, physical

Key = tuple[str, str]  # (producer node id, or "" for a graph input; column name)
Convert = Literal["none", "float", "object"]
OnNode = Callable[[str, float], None]


@dataclass(frozen=True)
class Step:
    """One node in execution order: its kernel, the column versions it reads and produces, what to free."""

    node_id: str
    kernel: Kernel
    reads: tuple[tuple[str, Key], ...]
    produces: tuple[tuple[str, Key, ColType], ...]
    release: tuple[Key, ...]
    model_id: str | None = None


@dataclass(frozen=True)
class OutputPlan:
    field: OutputField
    key: Key
    convert: Convert


@dataclass(frozen=True)
class CompiledGraph:
    """A validated graph, ready to score batches. Build it with ``compile_graph``; it is immutable and a
    ``run`` may be called from several threads at once."""

    spec: GraphSpec
    digest: str
    model_ids: tuple[str, ...]
    steps: tuple[Step, ...] = field(repr=False)
    output_plan: tuple[OutputPlan, ...] = field(repr=False)
    infos: tuple[NodeInfo, ...] = field(repr=False)

    @property
    def inputs(self) -> tuple[InputField, ...]:
        return self.spec.inputs

    @property
    def outputs(self) -> tuple[OutputField, ...]:
        return self.spec.outputs

    def explain(self) -> list[NodeInfo]:
        """Every node in execution order with the typed columns it reads and produces."""
        return list(self.infos)

    def run(self, batch: Batch, *, on_node: OnNode | None = None) -> StageResult[ScoringError]:
        """Score one batch; return only the declared output columns, for the rows that went through.

        Called by the streaming runtime once per batch; CPU-bound (ONNX Runtime releases the GIL), never
        blocks on I/O. Raises ``GraphError`` only when the batch does not match the declared inputs (a wiring
        bug, not a bad row); every bad row becomes a ``ScoringError`` in ``errors``.
        """
        n = batch_len(batch)
        store: dict[Key, npt.NDArray[Any]] = {("", f.name): _input(f, batch) for f in self.spec.inputs}
        rows = np.arange(n, dtype=np.int64)
        errors: dict[int, ScoringError] = {}
        for step in self.steps:
            started = time.perf_counter()
            keep, produced, reasons, model_id = _apply_step(
                step, {n_: store[k] for n_, k in step.reads}, len(rows)
            )
            if reasons:
                for pos, reason in reasons.items():
                    row = int(rows[pos])
                    errors[row] = ScoringError(
                        reason, node_id=step.node_id, model_id=model_id or step.model_id
                    )
                rows = rows[keep]
                store = {k: col[keep] for k, col in store.items()}
            for name, key, ct in step.produces:
                store[key] = produced[name] if name in produced else _empty(ct)
            for key in step.release:
                store.pop(key, None)
            if on_node is not None:
                on_node(step.node_id, time.perf_counter() - started)
        columns = {o.field.name: _convert(store[o.key], o.convert) for o in self.output_plan}
        return StageResult(columns, rows, errors)


def _input(f: InputField, batch: Batch) -> npt.NDArray[Any]:
    if f.name not in batch:
        raise GraphError(f"the batch has no column {f.name!r}, a declared graph input")
    column = batch[f.name]
    ct = f.coltype
    if accepts(ct, column):
        return column
    if ct.nullable and accepts(ColType(ct.dtype), column):  # a nullable field that had no null in this batch
        return column.astype(physical(ct))
    raise GraphError(f"input column {f.name!r} has dtype {column.dtype}, expected {physical(ct)} for {ct}")


def _empty(ct: ColType) -> npt.NDArray[Any]:
    return np.empty((0,) if ct.width is None else (0, ct.width), dtype=physical(ct))


def _convert(column: npt.NDArray[Any], convert: Convert) -> npt.NDArray[Any]:
    if convert == "float":
        return column.astype(np.float64)
    if convert == "object":
        return column.astype(object)
    return column


Outcome = tuple[BoolArray, Batch, dict[int, str], str | None]


def _apply_step(step: Step, inputs: Batch, n: int) -> Outcome:
    """Run one kernel over ``n`` rows: (kept mask, produced columns of kept rows, reason per rejected
    position, model id). Bisects when the kernel raises."""
    if n == 0:
        return np.ones(0, dtype=np.bool_), {}, {}, None
    try:
        result = step.kernel(inputs)
    except Exception as exc:
        if n == 1:
            return np.zeros(1, dtype=np.bool_), {}, {0: f"{type(exc).__name__}: {exc}"}, None
        return _bisect(step, inputs, n)
    keep = np.ones(n, dtype=np.bool_)
    reasons: dict[int, str] = {}
    for rejection in reversed(result.rejected):  # the first rejection's reason wins
        keep &= ~rejection.mask
        for pos in np.flatnonzero(rejection.mask).tolist():
            reasons[pos] = rejection.reason
    return keep, result.columns, reasons, result.model_id


def _bisect(step: Step, inputs: Batch, n: int) -> Outcome:
    half = n // 2
    left = _apply_step(step, {k: c[:half] for k, c in inputs.items()}, half)
    right = _apply_step(step, {k: c[half:] for k, c in inputs.items()}, n - half)
    keep = np.concatenate([left[0], right[0]])
    parts = [side[1] for side in (left, right) if side[0].any()]
    names = {name for part in parts for name in part}
    produced = {name: np.concatenate([part[name] for part in parts]) for name in names}
    reasons = {**left[2], **{pos + half: reason for pos, reason in right[2].items()}}
    return keep, produced, reasons, left[3] or right[3]
