"""The kernel contract: bad rows come back as rejections or row faults; a bug or a runtime failure surfaces.

A kernel that raises a row fault (ValueError, ArithmeticError) is bisected down to the rows that make it
raise; anything else it raises is a bug or a runtime failure: ``run`` raises ``NodeFailed`` naming the node,
without bisecting, so no record is dead-lettered for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from graph_helpers import linear, spec_of
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from worker.columns import Batch
from worker.errors import FatalError, InfrastructureError, NodeFailed
from worker.graph import InMemoryModels, compile_graph, onnx_node
from worker.graph.onnx_runtime import OrtSession
from worker.graph.plan import Applied
from worker.graph.runner import CompiledGraph

X = np.array([1.0, 2.0, -1.0, 3.0, 4.0, -5.0, 6.0])
BAD = [2, 5]  # the rows of X a fragile kernel refuses


def graph_with(kernel: Callable[[Batch], Applied]) -> CompiledGraph:
    """A one-node graph whose node "model" runs ``kernel``."""
    spec = spec_of(
        [{"id": "model", "kind": "log1p", "columns": ["x"]}],
        [{"name": "x", "dtype": "float64"}],
        [{"name": "x", "dtype": "float64", "nullable": True}],
    )
    graph = compile_graph(spec, InMemoryModels())
    return replace(graph, steps=(replace(graph.steps[0], kernel=kernel),))


def raising_on_negatives(exc: Exception, calls: list[int]) -> Callable[[Batch], Applied]:
    def kernel(batch: Batch) -> Applied:
        calls.append(len(batch["x"]))
        if (batch["x"] < 0).any():
            raise exc
        return Applied({"x": np.log1p(batch["x"])})

    return kernel


BUGS = [
    KeyError("x"),
    TypeError("unsupported operand"),
    AttributeError("'NoneType' object has no attribute 'dtype'"),
    IndexError("index 7 is out of bounds"),
    NameError("name 'colum' is not defined"),
    AssertionError("a broken invariant"),
    MemoryError(),
    RecursionError("maximum recursion depth exceeded"),
    np.exceptions.AxisError(1, 1),  # a ValueError, but also an IndexError: a wrong axis is a bug
    RuntimeError("a runtime failure"),
]


@pytest.mark.parametrize("exc", BUGS, ids=[type(e).__name__ for e in BUGS])
def test_a_kernel_bug_is_not_bisected_and_raises_node_failed(exc: Exception) -> None:
    calls: list[int] = []
    graph = graph_with(raising_on_negatives(exc, calls))

    with pytest.raises(NodeFailed) as info:
        graph.run({"x": X})

    assert calls == [len(X)]  # never bisected: no record is dead-lettered for a bug
    failed = info.value
    assert failed.node_id == "model" and failed.__cause__ is exc
    assert str(failed) == (
        f"node 'model' failed: {type(exc).__name__}: {exc} (a bug or a runtime failure, not a bad record)"
    )
    assert isinstance(failed, FatalError) and isinstance(failed, InfrastructureError)  # the loop stops


def test_a_bug_met_while_bisecting_row_faults_still_surfaces() -> None:
    def kernel(batch: Batch) -> Applied:
        if len(batch["x"]) == len(X):
            raise ValueError("negative input")
        raise KeyError("x")

    with pytest.raises(NodeFailed, match="KeyError"):
        graph_with(kernel).run({"x": X})


ROW_FAULTS = [
    ValueError("negative input"),
    UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
    ZeroDivisionError("division by zero"),
    OverflowError("int too large to convert to float"),
]


@pytest.mark.parametrize("exc", ROW_FAULTS, ids=[type(e).__name__ for e in ROW_FAULTS])
def test_a_row_fault_still_isolates_the_rows_that_raise(exc: Exception) -> None:
    calls: list[int] = []

    result = graph_with(raising_on_negatives(exc, calls)).run({"x": X})

    good = [i for i in range(len(X)) if i not in BAD]
    assert result.rows.tolist() == good
    np.testing.assert_allclose(result.columns["x"], np.log1p(X[good]))
    assert sorted(result.errors) == BAD
    assert all(e.node_id == "model" and type(exc).__name__ in e.reason for e in result.errors.values())
    assert calls[0] == len(X) and len(calls) < 2 * len(X)


TRIGGER = 666.0  # a feature value on which the fake session raises


class FaultySession:
    """Stands in for ``onnxruntime.InferenceSession``: the real model's metadata and results, except that
    ``run`` raises ``exc`` for any batch with a row whose first feature is ``TRIGGER``."""

    def __init__(self, model: bytes, exc: Exception) -> None:
        self.real = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        self.exc = exc

    def get_inputs(self) -> Any:
        return self.real.get_inputs()

    def get_outputs(self) -> Any:
        return self.real.get_outputs()

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> Any:
        if (feeds["X"][:, 0] == TRIGGER).any():
            raise self.exc
        return self.real.run(names, feeds)


def onnx_graph(monkeypatch: pytest.MonkeyPatch, exc: Exception) -> CompiledGraph:
    """A graph of one ONNX node "model" on the linear model, its session a ``FaultySession``."""
    monkeypatch.setattr(onnx_node, "open_session", lambda model, **_: OrtSession(FaultySession(model, exc)))
    spec = spec_of(
        [{"id": "model", "kind": "onnx", "model_id": "lin", "features": ["x", "y"], "outputs": {"Y": "s"}}],
        [{"name": "x", "dtype": "float64"}, {"name": "y", "dtype": "float64"}],
        [{"name": "s", "dtype": "float64"}],
    )
    return compile_graph(spec, InMemoryModels({"lin": linear([1.0, 2.0])}))


ORT_FAILURES = [
    ort_errors.Fail("[ONNXRuntimeError] : 1 : FAIL : a kernel failed"),
    ort_errors.RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : out of memory"),
    ort_errors.EPFail("[ONNXRuntimeError] : 11 : EP_FAIL : the provider failed"),
    ort_errors.EngineError("[ONNXRuntimeError] : 10 : ENGINE_ERROR : engine error"),
]


@pytest.mark.parametrize("exc", ORT_FAILURES, ids=[type(e).__name__ for e in ORT_FAILURES])
def test_an_onnx_runtime_failure_surfaces_as_node_failed(
    monkeypatch: pytest.MonkeyPatch, exc: Exception
) -> None:
    graph = onnx_graph(monkeypatch, exc)
    x = np.array([1.0, TRIGGER, 3.0])

    with pytest.raises(NodeFailed) as info:
        graph.run({"x": x, "y": np.ones(3)})

    assert info.value.node_id == "model" and info.value.model_id == "lin"
    assert info.value.__cause__ is exc and type(exc).__name__ in str(info.value)
