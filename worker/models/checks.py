"""Parse an ONNX model safely and describe it: the checks the model store runs at upload and at load.

Models are parsed with ``onnx`` (protobuf), never unpickled. A model is refused when

* it uses an operator domain outside the standard ones (``""``, ``"ai.onnx"``, ``"ai.onnx.ml"``), unless the
  caller allows custom domains: a custom domain means custom kernels, i.e. native code we did not vet;
* a tensor stores its data externally at a location that is absolute or climbs out of the model's folder
  (``..``): a graph must never make the worker read arbitrary files.

Every function here is pure (no I/O), cheap next to a session build, and raises ``ModelError`` only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import onnx
from google.protobuf.message import DecodeError as ProtobufDecodeError  # type: ignore[import-untyped]

from worker.errors import ModelError

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def parse_model(data: bytes, *, what: str) -> onnx.ModelProto:
    """Parse ``data`` as an ONNX ModelProto; ``what`` names the model in the error (a path or an id)."""
    try:
        model = onnx.load_from_string(data)
    except (ProtobufDecodeError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{what}: not a valid ONNX model ({exc})") from exc
    if not model.HasField("graph"):
        raise ModelError(f"{what}: not a valid ONNX model (no graph)")
    return model


def check_model(model: onnx.ModelProto, *, what: str, allow_custom_domains: bool = False) -> None:
    """Refuse custom operator domains (unless allowed) and unsafe external-data locations."""
    if not allow_custom_domains:
        custom = sorted(custom_domains(model))
        if custom:
            raise ModelError(
                f"{what}: uses custom operator domain(s) {custom}; only standard domains "
                f"{sorted(STANDARD_DOMAINS)} are allowed unless custom domains are explicitly allowed"
            )
    for location in external_locations(model):
        check_location(location, what=what)


def custom_domains(model: onnx.ModelProto) -> set[str]:
    """Every non-standard domain the model imports or uses (nodes, subgraphs, local functions)."""
    domains = {opset.domain for opset in model.opset_import}
    domains.update(node.domain for node in _all_nodes(model))
    for function in model.functions:
        domains.add(function.domain)
        domains.update(opset.domain for opset in function.opset_import)
    return domains - STANDARD_DOMAINS


def external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Every tensor stored outside the model: initializers, attributes, in subgraphs and functions too."""
    return [tensor for tensor in _all_tensors(model) if tensor.data_location == onnx.TensorProto.EXTERNAL]


def external_entries(tensor: onnx.TensorProto) -> dict[str, str]:
    """A tensor's ``external_data`` as a dict: ``location`` and, optionally, ``offset`` and ``length``."""
    return {entry.key: entry.value for entry in tensor.external_data}


def external_locations(model: onnx.ModelProto) -> list[str]:
    """The ``location`` of every externally stored tensor, in graph order, without duplicates."""
    seen = {external_entries(tensor).get("location", ""): None for tensor in external_tensors(model)}
    return list(seen)


def check_location(location: str, *, what: str) -> None:
    """Refuse an external-data location that is empty, absolute or leaves the model's folder."""
    parts = re.split(r"[\\/]", location)
    if not location or location.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(location):
        raise ModelError(f"{what}: external data location {location!r} must be a relative path")
    if ".." in parts:
        raise ModelError(f"{what}: external data location {location!r} leaves the model store")


def describe(model: onnx.ModelProto) -> dict[str, Any]:
    """The metadata worth showing: opsets, producer, inputs and outputs with their types and shapes."""
    return {
        "opset": {(opset.domain or "ai.onnx"): opset.version for opset in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [_describe_value(value) for value in model.graph.input],
        "outputs": [_describe_value(value) for value in model.graph.output],
    }


def _describe_value(value: onnx.ValueInfoProto) -> dict[str, Any]:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return {"name": value.name, "type": onnx.helper.printable_type(value.type), "shape": None}
    tensor = value.type.tensor_type
    shape: list[int | str | None] = [
        dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None) for dim in tensor.shape.dim
    ]
    element = onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
    return {"name": value.name, "type": element, "shape": shape if tensor.HasField("shape") else None}


def _all_graphs(model: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    stack = [model.graph]
    for function in model.functions:
        stack.extend(_subgraphs(function.node))
    while stack:
        graph = stack.pop()
        yield graph
        stack.extend(_subgraphs(graph.node))


def _subgraphs(nodes: Any) -> Iterator[onnx.GraphProto]:
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield attribute.g
            yield from attribute.graphs


def _all_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    for graph in _all_graphs(model):
        yield from graph.node
    for function in model.functions:
        yield from function.node


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    for graph in _all_graphs(model):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
    for node in _all_nodes(model):
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
