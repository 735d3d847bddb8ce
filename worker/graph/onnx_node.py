"""The ONNX node: named feature columns in, ONNX Runtime inference, named output columns out.

Inputs bind by column *name* in a declared order (``features`` for a single-input model: one 2-D tensor
stacked in that order, cast to the model's element type; ``inputs`` for several model inputs). Names, element
types and shapes are checked against the session at compile. Rows with a null or non-finite feature are
rejected by default (``on_invalid="reject"``) so one bad event cannot poison a batch.

Outputs become columns (``outputs`` maps ONNX output name -> column; default: every output under its own
name). Floats become float64; a 2-D probability tensor becomes a 2-D column (``split`` gives
``{column}_{i}``); skl2onnx's ZipMap output (a sequence of maps) becomes a 2-D column in class-label order.
ZipMap costs a Python step per row: export classifiers with ``options={'zipmap': False}`` for the fast path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import chain
from typing import Any, ClassVar, Literal, Protocol, Self

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from worker.columns import Batch
from worker.graph.nodes.base import ColumnName, NodeBase
from worker.graph.onnx_runtime import ModelFacts, TensorInfo, inspect_model, open_session
from worker.graph.plan import Applied, CompileContext, NodeCompiled, Rejection
from worker.graph.types import ColType, null_mask, physical


class ModelLoader(Protocol):
    """Where models come from (the content-addressed model store implements it; tests use InMemoryModels)."""

    def load(self, model_id: str) -> bytes:
        """The verified ONNX bytes of ``model_id``. May block on I/O; raises ``ModelError`` when
        unavailable."""
        ...


_FLOAT = {"tensor(float)": np.float32, "tensor(double)": np.float64}
_INT = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
_OUT: dict[str, ColType] = {
    "tensor(float)": ColType("float64"),
    "tensor(double)": ColType("float64"),
    "tensor(int64)": ColType("int64"),
    "tensor(int32)": ColType("int64"),
    "tensor(bool)": ColType("bool"),
    "tensor(string)": ColType("string"),
}
Feeder = Callable[[Batch, int], tuple[npt.NDArray[Any], list[Rejection]]]
Reader = Callable[[Any], npt.NDArray[Any]]


class ONNXNode(NodeBase):
    """Run an ONNX model on named feature columns."""

    summary: ClassVar[str] = "ONNX Runtime inference on named feature columns"
    kind: Literal["onnx"] = "onnx"
    model_id: str = Field(min_length=1)
    features: tuple[ColumnName, ...] | None = None
    inputs: dict[str, tuple[ColumnName, ...]] | None = None
    outputs: dict[str, ColumnName] | None = None
    split: bool = False
    on_invalid: Literal["reject", "pass"] = "reject"

    @model_validator(mode="after")
    def _one_binding(self) -> Self:
        if (self.features is None) == (self.inputs is None):
            raise ValueError("give exactly one of 'features' (single-input model) or 'inputs'")
        return self

    def compile(self, view: Mapping[str, ColType], ctx: CompileContext) -> NodeCompiled:
        if ctx.models is None:
            raise self.error("no model loader to load the model from")
        key = (self.model_id, tuple(ctx.providers), ctx.intra_op_num_threads, ctx.allow_custom_domains)
        cached = ctx.sessions.get(key) if ctx.sessions is not None else None
        if cached is not None:
            facts, session = cached  # the same id is the same bytes: nothing to load or check again
        else:
            model = ctx.models.load(self.model_id)
            ids = {"node_id": self.node_id, "model_id": self.model_id}
            facts = inspect_model(model, **ids, allow_custom_domains=ctx.allow_custom_domains)
            session = open_session(
                model, **ids, providers=ctx.providers, intra_op_num_threads=ctx.intra_op_num_threads
            )
            if ctx.sessions is not None:
                ctx.sessions.put(key, facts, session)
        bindings = self._bindings(session.inputs)
        feeders = {info.name: self._feeder(info, bindings[info.name], view) for info in session.inputs}
        outs = {o.name: o for o in session.outputs}
        mapping = self.outputs if self.outputs is not None else {name: name for name in outs}
        for name in mapping:
            if name not in outs:
                raise self.error(
                    f"model {self.model_id!r} has no output {name!r} (outputs: {', '.join(outs)})"
                )
        readers = {name: self._reader(outs[name], column, facts) for name, column in mapping.items()}
        produces: dict[str, ColType] = {}
        for _, (columns, _) in readers.items():
            produces.update(columns)
        reads = tuple(dict.fromkeys(c for cols in bindings.values() for c in cols))
        names = tuple(readers)
        run, reject, model_id = session.run, self.on_invalid == "reject", self.model_id

        def kernel(batch: Batch) -> Applied:
            n = len(batch[reads[0]])
            feeds, rejected = {}, []
            for name, feed in feeders.items():
                feeds[name], bad = feed(batch, n)
                rejected.extend(bad)
            if reject and rejected:
                keep = ~np.logical_or.reduce([r.mask for r in rejected])
                if not keep.all():
                    feeds = {k: v[keep] for k, v in feeds.items()}
            else:
                rejected = []
            results = run(names, feeds)
            columns: Batch = {}
            for name, result in zip(names, results, strict=True):
                columns.update(readers[name][1](result))
            return Applied(columns, tuple(rejected), model_id)

        return NodeCompiled(reads, produces, kernel, model_ids=(self.model_id,))

    def _bindings(self, inputs: tuple[TensorInfo, ...]) -> dict[str, tuple[str, ...]]:
        names = [i.name for i in inputs]
        if self.features is not None:
            if len(inputs) != 1:
                raise self.error(f"model {self.model_id!r} has {len(inputs)} inputs ({', '.join(names)}); "
                                 "bind them with 'inputs'")  # fmt: skip
            return {names[0]: self.features}
        assert self.inputs is not None
        unknown = sorted(set(self.inputs) - set(names))
        missing = sorted(set(names) - set(self.inputs))
        if unknown or missing:
            raise self.error(
                f"model {self.model_id!r} inputs are {names}: unknown {unknown}, unbound {missing}"
            )
        return dict(self.inputs)

    def _feeder(self, info: TensorInfo, columns: tuple[str, ...], view: Mapping[str, ColType]) -> Feeder:
        types = self.need_all(view, columns)
        rank = len(info.shape)
        width = info.shape[-1] if rank == 2 else 1
        if rank not in (1, 2) or (rank == 1 and len(columns) != 1):
            raise self.error(f"model input {info.name!r} has shape {list(info.shape)}; "
                             f"{len(columns)} column(s) are bound to it")  # fmt: skip
        if rank and isinstance(info.shape[0], int):  # ONNX Runtime would refuse every batch of another size
            raise self.error(f"model input {info.name!r} has a fixed batch dimension of {info.shape[0]} "
                             f"(shape {list(info.shape)}); export it with a dynamic one (None)")  # fmt: skip
        if isinstance(width, int) and width != len(columns):
            raise self.error(f"model input {info.name!r} expects {width} features per row, "
                             f"{len(columns)} are bound: {list(columns)}")  # fmt: skip
        for column, ct in types.items():
            if ct.width is not None or not _fits(info.type, ct):
                raise self.error(
                    f"column {column!r} ({ct}) does not fit model input {info.name!r} ({info.type})"
                )
        dtype = (
            _FLOAT.get(info.type)
            or _INT.get(info.type)
            or (np.bool_ if info.type == "tensor(bool)" else object)
        )
        return _stacker(columns, types, np.dtype(dtype), rank, self.model_id)

    def _reader(self, info: TensorInfo, column: str, facts: ModelFacts) -> tuple[dict[str, ColType], Reader]:
        if info.type.startswith("seq(map("):
            labels = facts.zipmap_labels.get(info.name)
            if labels is None:
                raise self.error(
                    f"model output {info.name!r} is a sequence of maps without known class labels"
                )
            return self._wide(column, ColType("float64", width=len(labels), labels=labels), _zipmap(labels))
        if info.type not in _OUT:
            raise self.error(f"model output {info.name!r} has unsupported type {info.type}")
        ct = _OUT[info.type]
        rank, width = len(info.shape), info.shape[-1] if info.shape else None
        if rank <= 1 or (rank == 2 and width == 1):
            return {column: ct}, _flat(column, ct)
        if rank != 2 or not isinstance(width, int) or ct.dtype != "float64":
            raise self.error(f"model output {info.name!r} of shape {list(info.shape)} cannot become a column")
        labels = (
            facts.classifier_labels
            if facts.classifier_labels and len(facts.classifier_labels) == width
            else None
        )
        return self._wide(column, ColType("float64", width=width, labels=labels), _tensor)

    def _wide(self, column: str, ct: ColType, read: Reader) -> tuple[dict[str, ColType], Reader]:
        if not self.split:
            return {column: ct}, lambda result: {column: read(result)}  # type: ignore[return-value]
        assert ct.width is not None
        names = [f"{column}_{i}" for i in range(ct.width)]

        def split(result: Any) -> Batch:
            wide = read(result)
            return {name: np.ascontiguousarray(wide[:, i]) for i, name in enumerate(names)}

        return {name: ColType("float64") for name in names}, split  # type: ignore[return-value]


def _fits(onnx_type: str, ct: ColType) -> bool:
    if onnx_type in _FLOAT:
        return ct.dtype in ("float64", "int64", "bool")
    if onnx_type in _INT:
        return ct.dtype in ("int64", "bool")
    if onnx_type == "tensor(bool)":
        return ct.dtype == "bool"
    return onnx_type == "tensor(string)" and ct.dtype == "string"


def _stacker(
    columns: tuple[str, ...], types: dict[str, ColType], dtype: np.dtype[Any], rank: int, model_id: str
) -> Feeder:
    numeric = dtype != np.dtype(object)
    # Every feature a number column (nullable ints and floats hold NaN for null): one stack and one
    # finiteness check for the whole matrix, instead of a few numpy calls per column.
    whole = dtype.kind == "f" and all(physical(types[name]) != np.dtype(object) for name in columns)

    def reason(name: str) -> str:
        return f"feature {name!r} is null or not finite (model {model_id!r})"

    def feed_whole(batch: Batch, n: int) -> tuple[npt.NDArray[Any], list[Rejection]]:
        # One C-level concatenate casts every feature into a (features, n) block, where each feature is a
        # contiguous row for the finiteness check; a single transposing copy then gives the C-ordered
        # (n, features) tensor. np.stack would cost a Python-level expand_dims per column.
        with np.errstate(over="ignore"):  # a float64 beyond float32 becomes inf, rejected below as such
            block = np.concatenate([batch[name] for name in columns], dtype=dtype, casting="unsafe")
        block = block.reshape(len(columns), n)
        finite = np.isfinite(block)
        rejected = []
        if not finite.all():  # NaN reaches the model as NaN when on_invalid="pass"
            bad = ~finite
            rejected = [Rejection(bad[j], reason(name)) for j, name in enumerate(columns) if bad[j].any()]
        return (block[0] if rank == 1 else block.T.copy()), rejected

    def feed(batch: Batch, n: int) -> tuple[npt.NDArray[Any], list[Rejection]]:
        out = np.empty((n, len(columns)), dtype=dtype)
        rejected = []
        for j, name in enumerate(columns):
            col, ct = batch[name], types[name]
            bad = null_mask(col, ct)
            if numeric and dtype.kind == "f" and col.dtype != object:
                with np.errstate(over="ignore"):  # beyond float32: inf, rejected as not finite
                    out[:, j] = col
                bad = bad | ~np.isfinite(out[:, j])
            elif numeric:  # ints, or nullable bools: nulls need a placeholder to cast (the row is rejected)
                out[:, j] = np.where(bad, 0, col) if bad.any() else col
            else:
                out[:, j] = col
            if bad.any():
                rejected.append(Rejection(bad, reason(name)))
        return (out[:, 0] if rank == 1 else out), rejected

    return feed_whole if whole else feed


def _flat(column: str, ct: ColType) -> Reader:
    dtype = np.float64 if ct.dtype == "float64" else np.int64 if ct.dtype == "int64" else None

    def read(result: Any) -> Any:
        arr = np.asarray(result)
        arr = arr.reshape(len(arr)) if arr.ndim == 2 else arr
        return {
            column: arr.astype(dtype)
            if dtype is not None
            else arr.astype(object)
            if ct.dtype == "string"
            else arr
        }

    return read


def _tensor(result: Any) -> npt.NDArray[np.float64]:
    return np.asarray(result, dtype=np.float64)


def _zipmap(labels: tuple[str, ...]) -> Reader:
    """Sequence of {label: probability} -> 2-D float64 in ``labels`` order. ONNX Runtime emits each map in
    the ZipMap's label order, so one flat ``fromiter`` suffices; anything else falls back to lookups."""

    def read(result: Any) -> npt.NDArray[np.float64]:
        n, k = len(result), len(labels)
        if n and [str(key) for key in result[0]] != list(labels):
            keys = list(result[0])
            order = [keys[[str(x) for x in keys].index(label)] for label in labels]
            return np.array([[row[key] for key in order] for row in result], dtype=np.float64).reshape(n, k)
        flat = np.fromiter(chain.from_iterable(row.values() for row in result), dtype=np.float64, count=n * k)
        return flat.reshape(n, k)

    return read
