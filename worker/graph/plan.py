"""The contract between node kinds and the graph runner: what a node compiles to, and what its kernel returns.

At compile time each node kind turns its params and the columns it can see into a ``NodeCompiled``: the
columns its kernel reads, the columns it produces (new or changed, with their types), the columns it removes,
and the ``kernel``. At run time the runner calls ``kernel(batch)`` once per batch with only the ``reads``
columns; the kernel returns an ``Applied``: the produced columns for the rows it kept, and the rows it
rejected with a reason. A kernel never drops a row silently.

Bad rows are reported through ``Rejection`` masks: a kernel checks what it can per batch (nulls, non-finite
values, unparseable strings, out-of-range numbers) and rejects those rows. Where a vectorised call refuses a
whole batch because of some value in it, the kernel may raise a *row fault* (``is_row_fault``: a ValueError or
an ArithmeticError, e.g. a parser refusing a string, or ONNX Runtime refusing a value while running the model,
which worker/graph/onnx_runtime.py translates into ``InferenceRejected``); the runner then isolates the rows
that make it raise by bisecting. Anything else a kernel raises (KeyError, TypeError, AttributeError,
IndexError, AssertionError, MemoryError, RecursionError, ONNX Runtime's Fail or RuntimeException, a warning
turned into an error) is a bug or a runtime failure: the runner raises ``NodeFailed`` and the worker stops,
since no record is to blame. See worker/graph/runner.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from worker.columns import Batch
from worker.graph.types import BoolArray, ColType

if TYPE_CHECKING:
    from worker.graph.onnx_node import ModelLoader
    from worker.graph.onnx_runtime import SessionCache


@dataclass(frozen=True)
class Rejection:
    """Rows of the kernel's input (``mask`` True) that this node refuses, and why."""

    mask: BoolArray
    reason: str


@dataclass(frozen=True)
class Applied:
    """A kernel's answer: ``columns`` hold the produced columns for the rows not rejected, in order."""

    columns: Batch
    rejected: tuple[Rejection, ...] = ()
    model_id: str | None = None


Kernel = Callable[[Batch], Applied]
ROW_FAULTS: tuple[type[Exception], ...] = (ValueError, ArithmeticError)


def is_row_fault(exc: BaseException) -> bool:
    """Whether a kernel's exception may come from the values of some rows (bisect to them) rather than from a
    bug. A LookupError never is, even when it is also a ValueError (numpy's AxisError: a wrong axis)."""
    return isinstance(exc, ROW_FAULTS) and not isinstance(exc, LookupError)


@dataclass(frozen=True)
class NodeCompiled:
    """What one node compiles to. ``produces`` are the columns the kernel returns (new or replaced)."""

    reads: tuple[str, ...]
    produces: Mapping[str, ColType]
    kernel: Kernel
    removes: frozenset[str] = frozenset()
    model_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class CompileContext:
    """What compiling a node may use besides its params; only the ONNX node needs the model loader."""

    models: ModelLoader | None = None
    providers: Sequence[str] = ("CPUExecutionProvider",)
    intra_op_num_threads: int = 1
    allow_custom_domains: bool = False
    sessions: SessionCache | None = None  # ONNX sessions kept across compiles (a deployment's versions)


@dataclass(frozen=True)
class NodeInfo:
    """One node of a compiled graph, as ``CompiledGraph.explain()`` reports it."""

    node_id: str
    kind: str
    inputs: dict[str, ColType] = field(default_factory=dict)
    outputs: dict[str, ColType] = field(default_factory=dict)
    removes: tuple[str, ...] = ()


def applied(columns: Batch, rejected: Sequence[Rejection] = (), model_id: str | None = None) -> Applied:
    """Build an ``Applied`` from produced columns for *all* input rows, dropping the rejected rows from
    them."""
    if not rejected:
        return Applied(columns, (), model_id)
    real = tuple(r for r in rejected if r.mask.any())
    if not real:
        return Applied(columns, (), model_id)
    bad = np.logical_or.reduce([r.mask for r in real])
    keep = ~bad
    return Applied({name: col[keep] for name, col in columns.items()}, real, model_id)
