"""Tiny hand-built ONNX models for tests of the store and of graphs that need a real model.

Built with ``onnx.helper`` in memory, so tests need neither training nor files from the network.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def add_model(*, domain: str = "", external: str | None = None, folder: Path | None = None) -> bytes:
    """``y = x + [1.5, -2.0]`` for ``x`` of shape (N, 2), float32.

    ``domain`` puts the Add node (and an opset import) in that operator domain. ``external`` stores the
    weight as external data: the file ``weights.bin`` is written into ``folder`` and the tensor then
    points at the location ``external`` (which may be a hostile path, for tests of the checks).
    """
    weight = numpy_helper.from_array(np.array([1.5, -2.0], dtype=np.float32), name="w")
    node = helper.make_node("Add", ["x", "w"], ["y"], domain=domain)
    graph = helper.make_graph(
        [node],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [weight],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    if external is not None:
        if folder is None:
            raise ValueError("external data needs a folder to write weights.bin into")
        onnx.external_data_helper.convert_model_to_external_data(
            model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0
        )
        onnx.save_model(model, str(folder / "model.onnx"))  # writes weights.bin next to it
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = external
    return bytes(model.SerializeToString())


def affine_model(folder: Path) -> Path:
    """``y = x * [2, 3] + [1.5, -2.0]`` saved as ``folder/model.onnx``, both weights in ``weights.bin``.

    Saved the way exporters write large models (``save_as_external_data``, every tensor external), so the
    second weight sits at a non-zero offset of the shared file. Returns the path of the ``.onnx`` file.
    """
    scale = numpy_helper.from_array(np.array([2.0, 3.0], dtype=np.float32), name="a")
    shift = numpy_helper.from_array(np.array([1.5, -2.0], dtype=np.float32), name="b")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "a"], ["ax"]), helper.make_node("Add", ["ax", "b"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [scale, shift],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    return path


def write_legacy_store(folder: Path, root: Path) -> str:
    """Lay out ``root`` as versions before inlining stored :func:`affine_model`; return its model id.

    That is the ``.onnx`` stub (whose sha256 was the id), its weights in ``<hex>.data/weights.bin`` and
    their sha256 in the ``external_data`` of ``<hex>.json``. The model's source files go into ``folder``.
    """
    stub = affine_model(folder).read_bytes()
    blob = (folder / "weights.bin").read_bytes()
    digest = hashlib.sha256(stub).hexdigest()
    (root / f"{digest}.data").mkdir(parents=True)
    (root / f"{digest}.onnx").write_bytes(stub)
    (root / f"{digest}.data" / "weights.bin").write_bytes(blob)
    info = {
        "model_id": f"sha256:{digest}",
        "name": "legacy",
        "size": len(stub),
        "uploaded_at": "2024-01-01T00:00:00+00:00",
        "opset": {"ai.onnx": 17},
        "producer": "",
        "inputs": [],
        "outputs": [],
        "external_data": [
            {"location": "weights.bin", "sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
        ],
    }
    (root / f"{digest}.json").write_text(json.dumps(info, indent=2) + "\n")
    return f"sha256:{digest}"
