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
from graph_helpers import linear, model_bytes, run, spec_of
from onnx import TensorProto, helper
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from worker.columns import Batch
from worker.errors import FatalError, InfrastructureError, NodeFailed
from worker.graph import InMemoryModels, compile_graph, onnx_node
from worker.graph.onnx_runtime import InferenceFailed, OrtSession, open_session
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


def running_fault(what: str) -> Exception:
    """ONNX Runtime's InvalidArgument as a kernel of the model raises it on a value of the batch."""
    return ort_errors.InvalidArgument(
        "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Non-zero status code returned while running Gather "
        f"node. Name:'' Status Message: {what}"
    )


def test_invalid_argument_while_running_the_model_isolates_the_row(monkeypatch: pytest.MonkeyPatch) -> None:
    graph = onnx_graph(monkeypatch, running_fault("indices element out of data bounds"))
    x = np.array([1.0, TRIGGER, 3.0, 4.0])

    result = graph.run({"x": x, "y": np.ones(4)})

    assert result.rows.tolist() == [0, 2, 3]
    np.testing.assert_allclose(result.columns["s"], x[[0, 2, 3]] + 2.0)
    assert list(result.errors) == [1]
    error = result.errors[1]
    assert error.node_id == "model" and error.model_id == "lin"
    assert error.reason.startswith("InferenceRejected: ") and "out of data bounds" in error.reason


FEED_MISMATCHES = [
    ort_errors.InvalidArgument(
        "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: X for the following "
        "indices\n index: 0 Got: 3 Expected: 1\n Please fix either the inputs/outputs or the model."
    ),
    ort_errors.InvalidArgument(
        "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Unexpected input data type. Actual: (tensor(double)) , "
        "expected: (tensor(float))"
    ),
    ValueError("Required inputs (['X']) are missing from input feed (['Z'])."),  # onnxruntime's own check
]


@pytest.mark.parametrize("exc", FEED_MISMATCHES, ids=["dimensions", "type", "missing"])
def test_feeds_that_do_not_fit_the_session_are_a_bug(monkeypatch: pytest.MonkeyPatch, exc: Exception) -> None:
    graph = onnx_graph(monkeypatch, exc)

    with pytest.raises(NodeFailed, match="InferenceFailed") as info:
        graph.run({"x": np.array([1.0, TRIGGER, 3.0]), "y": np.ones(3)})

    assert isinstance(info.value.__cause__, InferenceFailed) and info.value.__cause__.__cause__ is exc


def gather_model() -> bytes:
    """Y[n, 1] = T[I[n, 1]] with T = [10, 20, 30]: an index outside 0..2 (or -3..-1) makes ONNX Runtime
    refuse the batch."""
    i = helper.make_tensor_value_info("I", TensorProto.INT64, [None, 1])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 1])
    t = helper.make_tensor("T", TensorProto.FLOAT, [3], [10.0, 20.0, 30.0])
    return model_bytes([helper.make_node("Gather", ["T", "I"], ["Y"])], [i], [y], [t])


def test_a_real_out_of_range_index_is_isolated_to_its_row() -> None:
    spec = spec_of(
        [{"id": "model", "kind": "onnx", "model_id": "g", "features": ["i"], "outputs": {"Y": "s"}}],
        [{"name": "i", "dtype": "int64"}],
        [{"name": "s", "dtype": "float64"}],
    )
    graph = compile_graph(spec, InMemoryModels({"g": gather_model()}))

    result = graph.run({"i": np.array([0, 2, 7, 1, -1])})

    assert result.rows.tolist() == [0, 1, 3, 4]
    assert result.columns["s"].tolist() == [10.0, 30.0, 20.0, 30.0]
    assert list(result.errors) == [2] and "out of data bounds" in result.errors[2].reason


# Kernels mask the values they cannot handle: none relies on a raise (nor on a numpy warning) to reject a row.

INT64_MIN = -(2**63)


@pytest.mark.parametrize("on_invalid", ["reject", "null"])
def test_astype_masks_strings_outside_int64_instead_of_wrapping(on_invalid: str) -> None:
    values = ["1", "9" * 30, str(10**400), str(INT64_MIN), "-12"]
    node = {"id": "n", "kind": "astype", "columns": ["s"], "dtype": "int64", "on_invalid": on_invalid}
    nullable = on_invalid == "null"

    result = run(
        [node],
        [{"name": "s", "dtype": "string"}],
        [{"name": "s", "dtype": "int64", "nullable": nullable}],
        {"s": np.array(values, dtype=object)},
    )

    if nullable:
        assert result.errors == {}
        np.testing.assert_array_equal(result.columns["s"], [1, np.nan, np.nan, INT64_MIN, -12])
        return
    assert result.rows.tolist() == [0, 3, 4] and result.columns["s"].tolist() == [1, INT64_MIN, -12]
    assert sorted(result.errors) == [1, 2]
    assert all(e.reason == "column 's': value cannot become int64" for e in result.errors.values())


def test_astype_masks_floats_outside_int64_instead_of_wrapping() -> None:
    x = np.array([1.5, 1e300, -1e19, 2.0**63, -(2.0**63), np.inf, -7.9])
    node = {"id": "n", "kind": "astype", "columns": ["x"], "dtype": "int64"}

    result = run([node], [{"name": "x", "dtype": "float64"}], [{"name": "x", "dtype": "int64"}], {"x": x})

    assert result.rows.tolist() == [0, 4, 6] and result.columns["x"].tolist() == [1, INT64_MIN, -7]
    assert sorted(result.errors) == [1, 2, 3, 5]
    assert all(e.reason == "column 'x': value cannot become int64" for e in result.errors.values())


@pytest.mark.parametrize("flag", [{"dtype": "int64"}, {"dtype": "bool", "nullable": True}])
def test_a_feature_beyond_float32_is_rejected_as_not_finite(flag: dict[str, Any]) -> None:
    # With a nullable bool feature (an object column) the per-column feeder runs, else the whole-matrix one.
    node = {"id": "m", "kind": "onnx", "model_id": "lin", "features": ["x", "f"], "outputs": {"Y": "s"}}
    inputs = [{"name": "x", "dtype": "float64"}, {"name": "f", **flag}]
    f = np.array([1, 0, 1]) if flag["dtype"] == "int64" else np.array([True, False, True], dtype=object)

    result = run(
        [node],
        inputs,
        [{"name": "s", "dtype": "float64"}],
        {"x": np.array([1.0, 1e300, 2.0]), "f": f},
        InMemoryModels({"lin": linear([1.0, 2.0])}),
    )

    assert result.rows.tolist() == [0, 2] and result.columns["s"].tolist() == [3.0, 4.0]
    assert result.errors[1].reason == "feature 'x' is null or not finite (model 'lin')"


def test_an_execution_provider_failure_is_raised_not_retried_elsewhere(
    capsys: pytest.CaptureFixture[str],
) -> None:
    session = open_session(
        linear([1.0]), node_id="m", model_id="lin", providers=["CPUExecutionProvider"], intra_op_num_threads=1
    )
    calls: list[object] = []

    class FailingProvider:  # the pybind session under onnxruntime's Python wrapper, failing in its provider
        def __init__(self, real: Any) -> None:
            self.real = real

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

        def run(self, *args: Any) -> Any:
            calls.append(args)
            raise ort_errors.EPFail("[ONNXRuntimeError] : 11 : EP_FAIL : the provider failed")

    inner = session._session
    inner._sess = FailingProvider(inner._sess)

    with pytest.raises(ort_errors.EPFail):
        session.run(["Y"], {"X": np.ones((2, 1), dtype=np.float32)})

    assert len(calls) == 1 and "Falling back" not in capsys.readouterr().out
