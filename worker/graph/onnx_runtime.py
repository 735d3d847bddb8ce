"""ONNX Runtime behind a small protocol, and the static facts the ONNX node reads from a model.

``open_session`` is the one place ONNX Runtime and onnx exceptions are translated at load (into ``GraphError``
naming the node). It refuses custom op domains unless allowed, passes ``providers=`` explicitly and refuses a
provider that is not available rather than falling back.

``OrtSession.run`` is the one place they are translated per batch, for the kernel contract of
worker/graph/plan.py: ``InvalidArgument`` raised while running a node of the model (an index out of range
in the data, say) becomes ``InferenceRejected``, a row fault the runner isolates by bisecting; feeds the
session refuses before running (a missing input, a wrong type or shape) become ``InferenceFailed``, a bug.
Every other ONNX Runtime error (Fail, RuntimeException, EPFail, ...) passes unchanged: not a row fault.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from worker.errors import GraphError

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
_LABEL_ATTRS = ("classlabels_strings", "classlabels_int64s", "classlabels_ints")

Dim = int | str | None
# How ONNX Runtime's executor prefixes the status of a kernel that failed on the values it was given; feed
# checks made before running (names, types, shapes) lack it.
_WHILE_RUNNING = "Non-zero status code returned while running"


class InferenceRejected(ValueError):
    """ONNX Runtime refused a value of the batch while running the model: a row fault (see plan.py)."""


class InferenceFailed(RuntimeError):
    """ONNX Runtime refused the feeds before running the model (an input missing, a type or a shape it does
    not take): the node built them wrong, whatever the rows hold."""


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output: name, ONNX type string (``tensor(float)``, ``seq(map(int64,tensor(float)))``)
    and shape (ints, symbolic names or None)."""

    name: str
    type: str
    shape: tuple[Dim, ...]


class Session(Protocol):
    """What the ONNX node needs from an inference session. ``run`` may be called from several threads."""

    @property
    def inputs(self) -> tuple[TensorInfo, ...]: ...

    @property
    def outputs(self) -> tuple[TensorInfo, ...]: ...

    def run(self, output_names: Sequence[str], feeds: Mapping[str, npt.NDArray[Any]]) -> list[Any]: ...


@dataclass(frozen=True)
class ModelFacts:
    """What compile reads from the model proto: class labels per ZipMap output, and the classifier's
    labels."""

    zipmap_labels: dict[str, tuple[str, ...]]
    classifier_labels: tuple[str, ...] | None


class OrtSession:
    """An ``onnxruntime.InferenceSession`` seen through ``Session``."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self._inputs = tuple(_info(i) for i in session.get_inputs())
        self._outputs = tuple(_info(o) for o in session.get_outputs())

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        return self._outputs

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self._inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self._outputs)

    def run(self, output_names: Sequence[str], feeds: Mapping[str, npt.NDArray[Any]]) -> list[Any]:
        """The outputs; raises ``InferenceRejected`` (a row fault), ``InferenceFailed`` or ONNX Runtime's own
        errors (see the module docstring)."""
        try:
            result: list[Any] = self._session.run(list(output_names), dict(feeds))
        except InvalidArgument as exc:
            if _WHILE_RUNNING in str(exc):
                raise InferenceRejected(str(exc)) from exc
            raise InferenceFailed(str(exc)) from exc
        except ValueError as exc:  # onnxruntime's Python layer checks the feed names with a ValueError
            raise InferenceFailed(str(exc)) from exc
        return result


def _info(arg: Any) -> TensorInfo:
    return TensorInfo(str(arg.name), str(arg.type), tuple(arg.shape or ()))


def inspect_model(model: bytes, *, node_id: str, model_id: str, allow_custom_domains: bool) -> ModelFacts:
    """Parse the model proto, refuse non-standard op domains, and collect class labels."""
    try:
        proto = onnx.load_model_from_string(model)
    except Exception as exc:  # onnx raises DecodeError and friends without a common base
        raise GraphError(f"model {model_id!r} is not a valid ONNX model: {exc}", node_id=node_id) from exc
    domains = {op.domain for op in proto.opset_import} | {n.domain for n in proto.graph.node}
    domains |= {n.domain for f in proto.functions for n in f.node}
    custom = sorted(domains - STANDARD_DOMAINS - {f.domain for f in proto.functions})
    if custom and not allow_custom_domains:
        raise GraphError(
            f"model {model_id!r} uses non-standard op domain(s) {custom}; "
            "pass allow_custom_domains to accept",
            node_id=node_id,
        )
    zipmaps: dict[str, tuple[str, ...]] = {}
    classifier: set[tuple[str, ...]] = set()
    for n in proto.graph.node:
        labels = next((_labels(a) for a in n.attribute if a.name in _LABEL_ATTRS), None)
        if labels is None:
            continue
        if n.op_type == "ZipMap":
            zipmaps.update({out: labels for out in n.output})
        else:
            classifier.add(labels)
    return ModelFacts(zipmaps, classifier.pop() if len(classifier) == 1 else None)


def _labels(attr: onnx.AttributeProto) -> tuple[str, ...]:
    if attr.strings:
        return tuple(s.decode() for s in attr.strings)
    return tuple(str(i) for i in attr.ints)


def open_session(
    model: bytes, *, node_id: str, model_id: str, providers: Sequence[str], intra_op_num_threads: int
) -> OrtSession:
    """An inference session on exactly ``providers``, never falling back to another (an EPFail at run is
    raised); a GraphError if one is missing or the model fails."""
    available = set(ort.get_available_providers())
    missing = [p for p in providers if p not in available]
    if missing or not providers:
        raise GraphError(f"execution provider(s) {missing or '[]'} not available here", node_id=node_id)
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_num_threads
    options.inter_op_num_threads = 1
    try:
        # enable_fallback=0: on a provider error onnxruntime would print and retry on the CPU provider
        session = ort.InferenceSession(
            model, sess_options=options, providers=list(providers), enable_fallback=0
        )
    except Exception as exc:  # onnxruntime's errors share no public base class
        raise GraphError(f"ONNX Runtime cannot load model {model_id!r}: {exc}", node_id=node_id) from exc
    return OrtSession(session)


SessionKey = tuple[str, tuple[str, ...], int, bool]  # model id, providers, intra-op threads, custom domains


class SessionCache:
    """Open sessions by model id and options, shared by every graph compiled with the cache.

    A new version of a deployment that keeps a model reuses its session (and the facts read from its proto)
    instead of loading and opening it again: the id is the sha256 of the bytes, so the same id is the same
    model. A session lives as long as some compiled graph's kernel holds it (weak references), so the
    sessions of a version swapped out are freed with it.
    """

    def __init__(self) -> None:
        self._sessions: weakref.WeakValueDictionary[SessionKey, OrtSession] = weakref.WeakValueDictionary()
        self._facts: dict[SessionKey, ModelFacts] = {}
        self.opened = 0  # sessions opened through the cache (tests and logs)

    def get(self, key: SessionKey) -> tuple[ModelFacts, OrtSession] | None:
        session = self._sessions.get(key)
        if session is None:
            self._facts.pop(key, None)
            return None
        return self._facts[key], session

    def put(self, key: SessionKey, facts: ModelFacts, session: OrtSession) -> None:
        self._sessions[key] = session
        self._facts[key] = facts
        self.opened += 1
        for gone in [k for k in self._facts if k not in self._sessions]:
            del self._facts[gone]
