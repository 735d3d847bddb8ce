"""The compiled, immutable plan of a graph and its per-batch run.

``CompiledGraph.run`` walks the plan: each step gets only the columns it reads, its kernel returns produced
columns for the rows it kept and the rows it rejected; rejected rows become ``ScoringError``s and leave the
rest of the run. What a kernel raises is sorted by the contract of worker/graph/plan.py:

- a row fault (``is_row_fault``: ValueError, ArithmeticError) says some value of the batch made a vectorised
  call fail as a whole: the kernel is re-run on halves (bisect) until the rows that make it raise are
  isolated, each rejected with the exception as its reason, so good rows still go through;
- anything else is a bug or a runtime failure (KeyError, TypeError, MemoryError, ONNX Runtime's Fail, ...),
  never a bad record: ``run`` raises ``NodeFailed`` naming the node, at once, without bisecting, so no record
  is dead-lettered for it and the worker stops.

Bad rows never make ``run`` raise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from worker.columns import Batch, StageResult, batch_len
from worker.errors import GraphError, NodeFailed, ScoringError
from worker.graph.dsl import GraphSpec, InputField, OutputField
from worker.graph.plan import Applied, Kernel, NodeInfo, is_row_fault
from worker.graph.types import BoolArray, ColType, physical

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
    _slots: _Slots = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_slots", _Slots.of(self))

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
        blocks on I/O. Every bad row becomes a ``ScoringError`` in ``errors``. Raises ``GraphError`` when the
        batch does not match the declared inputs (a wiring bug), and ``NodeFailed`` (a ``FatalError``) when a
        kernel raises anything but a row fault: a bug or a runtime failure, which no record is blamed for.
        """
        slots = self._slots
        n = batch_len(batch)
        store: list[Any] = [None] * slots.size  # a column per slot; None once released
        for i, source in enumerate(slots.inputs):
            store[i] = source.column(batch)
        rows = np.arange(n, dtype=np.int64)
        errors: dict[int, ScoringError] = {}
        # The fixed cost per step is what small streaming batches pay: one clock read per step boundary, and
        # no keep mask nor reason dict unless the kernel rejected a row.
        started = time.perf_counter() if on_node is not None else 0.0
        for step, reads, produces, release in slots.steps:
            produced: Batch = {}
            if n:
                inputs = {name: store[slot] for name, slot in reads}
                keep, produced, reasons, model_id = _apply_step(step, inputs, n)
                if reasons and keep is not None:
                    for pos, reason in reasons.items():
                        errors[int(rows[pos])] = ScoringError(
                            reason, node_id=step.node_id, model_id=model_id or step.model_id
                        )
                    rows = rows[keep]
                    n = len(rows)
                    store = [None if col is None else col[keep] for col in store]
            for name, slot, ct in produces:
                store[slot] = produced[name] if name in produced else _empty(ct)
            for slot in release:
                store[slot] = None
            if on_node is not None:
                now = time.perf_counter()
                on_node(step.node_id, now - started)
                started = now
        columns = {o.field.name: _convert(store[slot], o.convert) for o, slot in slots.outputs}
        return StageResult(columns, rows, errors)


@dataclass(frozen=True)
class _Slots:
    """The plan with every column version (``Key``) numbered: ``run`` keeps columns in a list indexed by
    slot, which saves hashing a tuple key per read, write and release."""

    size: int
    inputs: tuple[_Input, ...]  # the input of slot i, for i < len(inputs)
    steps: tuple[
        tuple[Step, tuple[tuple[str, int], ...], tuple[tuple[str, int, ColType], ...], tuple[int, ...]], ...
    ]
    outputs: tuple[tuple[OutputPlan, int], ...]

    @classmethod
    def of(cls, graph: CompiledGraph) -> _Slots:
        slot: dict[Key, int] = {("", f.name): i for i, f in enumerate(graph.spec.inputs)}
        for step in graph.steps:
            for _, key, _ in step.produces:
                slot.setdefault(key, len(slot))
        steps = tuple(
            (
                step,
                tuple((name, slot[key]) for name, key in step.reads),
                tuple((name, slot[key], ct) for name, key, ct in step.produces),
                tuple(slot[key] for key in step.release if key in slot),
            )
            for step in graph.steps
        )
        outputs = tuple((o, slot[o.key]) for o in graph.output_plan)
        return cls(len(slot), tuple(_Input.of(f) for f in graph.spec.inputs), steps, outputs)


@dataclass(frozen=True)
class _Input:
    """A declared input with the physical dtypes it accepts, resolved once rather than per batch."""

    name: str
    coltype: ColType
    dtype: np.dtype[Any]
    widened: np.dtype[Any] | None  # the dtype of a nullable field's column that had no null in the batch

    @classmethod
    def of(cls, f: InputField) -> _Input:
        ct = f.coltype
        return cls(f.name, ct, physical(ct), physical(ColType(ct.dtype)) if ct.nullable else None)

    def column(self, batch: Batch) -> npt.NDArray[Any]:
        if self.name not in batch:
            raise GraphError(f"the batch has no column {self.name!r}, a declared graph input")
        column = batch[self.name]
        if column.ndim == 1:  # inputs are never 2-D
            if column.dtype == self.dtype:
                return column
            if column.dtype == self.widened:
                return column.astype(self.dtype)
        raise GraphError(
            f"input column {self.name!r} has dtype {column.dtype}, expected {self.dtype} for {self.coltype}"
        )


def _empty(ct: ColType) -> npt.NDArray[Any]:
    return np.empty((0,) if ct.width is None else (0, ct.width), dtype=physical(ct))


def _convert(column: npt.NDArray[Any], convert: Convert) -> npt.NDArray[Any]:
    if convert == "float":
        return column.astype(np.float64)
    if convert == "object":
        return column.astype(object)
    return column


Outcome = tuple[BoolArray | None, Batch, dict[int, str], str | None]


def _apply_step(step: Step, inputs: Batch, n: int) -> Outcome:
    """Run one kernel over ``n`` (> 0) rows: (kept mask, None when every row is kept; produced columns of
    kept rows; reason per rejected position; model id). Bisects on a row fault; raises ``NodeFailed`` on
    anything else the kernel raises."""
    result: Applied | None = None
    try:
        result = step.kernel(inputs)
    except Exception as exc:
        if not is_row_fault(exc):
            raise NodeFailed(step.node_id, exc, model_id=step.model_id) from exc
        if n == 1:
            return np.zeros(1, dtype=np.bool_), {}, {0: f"{type(exc).__name__}: {exc}"}, None
    if result is None:  # bisect outside the handler: a NodeFailed from a half has no row fault as context
        return _bisect(step, inputs, n)
    if not result.rejected:  # the common case: no mask, no reasons
        return None, result.columns, {}, result.model_id
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
    keeps = [np.ones(size, dtype=np.bool_) if side[0] is None else side[0]
             for side, size in ((left, half), (right, n - half))]  # fmt: skip
    keep = np.concatenate(keeps)
    parts = [side[1] for side, kept in zip((left, right), keeps, strict=True) if kept.any()]
    names = {name for part in parts for name in part}
    produced = {name: np.concatenate([part[name] for part in parts]) for name in names}
    reasons = {**left[2], **{pos + half: reason for pos, reason in right[2].items()}}
    return keep, produced, reasons, left[3] or right[3]
