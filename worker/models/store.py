"""The model store: ONNX models kept by content, so a graph names exactly the bytes it was validated with.

The store is a location (``model_store``; default ``.models/`` in the working directory, or
``$RTML_MODEL_STORE``): a local folder, or an object store (``s3://bucket/prefix``, ``gs://``, ``az://``)
shared by workers on many machines (``worker.models.blobs``). Its layout is the same in both::

    <hex>.onnx          the model's bytes, self-contained; <hex> is the sha256 of exactly these bytes
    <hex>.json          metadata: name, size, uploaded_at, opset, producer, inputs, outputs, external_data

A ``model_id`` is ``"sha256:<64 lowercase hex>"``: the algorithm is part of the id so that it can change
without ambiguity, and graphs refer to models only by id. Every write goes to a temporary file in the store
folder and is renamed into place (an object PUT is atomic), so a reader never sees half a model, and the
metadata is written after the model, so a listed model is whole; uploading the same bytes twice is a no-op
that returns the first upload's metadata.

Models read from an object store go through a local read-through cache (``model_cache``, else
``$RTML_MODEL_CACHE``, else ``$XDG_CACHE_HOME/rtml-worker/models``), keyed by the sha256 too: every byte
fetched or read back from the cache is hashed against the id before it is used, so a corrupted or tampered
object is refused, never loaded nor cached, and a damaged cache entry is fetched again.

External tensor data (ONNX external data files) is inlined at upload: each file is read once from the
model's folder, the tensors' bytes are copied into the ModelProto, and only that proto is stored. The id is
then the sha256 of every byte ONNX Runtime will get, not of the uploaded ``.onnx`` file; a model that would
reach protobuf's 2 GiB limit once inlined is refused. A model without external data is stored as uploaded,
so its id is the sha256 of its file. ``load`` reads one file once and returns the bytes it hashed.

Older versions kept external data in ``<hex>.data/``, checked against a sha256 in ``<hex>.json`` that the
id did not cover; their metadata still lists it under ``external_data``. ``load`` refuses any stored model
that refers to external data and says to re-upload it (which inlines it, under a new id).

``ModelStore`` implements the graph's ``ModelLoader`` protocol (``load(model_id) -> bytes``). It is called at
start (graph compilation), never per event; its methods block on I/O and raise ``ModelError``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import EncodeError  # type: ignore[import-untyped]

from worker.errors import ModelError
from worker.models.blobs import BlobMissing, Blobs, FolderBlobs, location_kind, open_blobs
from worker.models.checks import (
    check_model,
    describe,
    external_entries,
    external_locations,
    external_tensors,
    parse_model,
)

MODEL_STORE_ENV = "RTML_MODEL_STORE"
MODEL_CACHE_ENV = "RTML_MODEL_CACHE"
DEFAULT_STORE_DIR = ".models"
_MODEL_ID = re.compile(r"^sha256:([0-9a-f]{64})$")
# The largest message protobuf serializes (and ONNX Runtime parses from bytes): 2 GiB - 1.
PROTOBUF_LIMIT = 2**31 - 1


def default_store_dir() -> str:
    """``$RTML_MODEL_STORE`` when set, else ``.models`` in the current directory."""
    return os.environ.get(MODEL_STORE_ENV) or DEFAULT_STORE_DIR


def default_cache_dir() -> Path:
    """``$RTML_MODEL_CACHE``, else ``$XDG_CACHE_HOME/rtml-worker/models`` (``~/.cache`` by default)."""
    if cache := os.environ.get(MODEL_CACHE_ENV):
        return Path(cache)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rtml-worker" / "models"


def model_id_of(data: bytes) -> str:
    """The id of a model's bytes: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_model_id(model_id: str) -> str:
    """The hex digest inside ``model_id``; ``ModelError`` if it is not ``sha256:<64 lowercase hex>``."""
    match = _MODEL_ID.match(model_id)
    if match is None:
        raise ModelError(
            f"invalid model id {model_id!r}: expected 'sha256:' followed by 64 lowercase hex digits"
        )
    return match.group(1)


@dataclass(frozen=True)
class ModelInfo:
    """The metadata stored next to a model (``<hex>.json``)."""

    model_id: str
    name: str
    size: int
    uploaded_at: str
    opset: dict[str, int]
    producer: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    # Empty for everything this version stores; lists the files older versions kept in <hex>.data/.
    external_data: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any], *, what: str) -> ModelInfo:
        try:
            return cls(**raw)
        except TypeError as exc:
            raise ModelError(f"{what}: unreadable metadata ({exc})") from exc


class ModelStore:
    """Content-addressed ONNX models in a folder or an object store.

    ``allow_custom_domains`` governs ``load`` (and is the default for ``upload``): a model that uses a
    non-standard operator domain is refused unless it is true. ``cache`` is the local read-through cache of
    an object store (ignored for a folder, which is local already).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        cache: str | os.PathLike[str] | None = None,
        allow_custom_domains: bool = False,
    ) -> None:
        location = os.fspath(root) if root is not None else default_store_dir()
        self.blobs: Blobs = open_blobs(location)
        self.cache: Blobs | None = None
        if location_kind(location) == "object":
            self.cache = FolderBlobs(Path(cache) if cache is not None else default_cache_dir())
        self.allow_custom_domains = allow_custom_domains

    @property
    def where(self) -> str:
        """The store's location, fit to show."""
        return self.blobs.where

    def upload(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        allow_custom_domains: bool | None = None,
    ) -> ModelInfo:
        """Check and store the model file at ``path``, inlining its external data (read from its folder)."""
        source = Path(path)
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise ModelError(f"{source}: cannot read model ({exc.strerror})") from exc
        return self.put(data, name=name or source.stem, source_dir=source.parent, allow=allow_custom_domains)

    def put(
        self, data: bytes, *, name: str, source_dir: Path | None = None, allow: bool | None = None
    ) -> ModelInfo:
        """Check and store a model given as bytes; external data, if any, is read from ``source_dir``
        and inlined, so the stored model (and its id) covers it."""
        model = parse_model(data, what=name)
        allowed = self.allow_custom_domains if allow is None else allow
        check_model(model, what=name, allow_custom_domains=allowed)
        if external_locations(model):
            data = _inline_external(model, len(data), name=name, source_dir=source_dir)
        model_id = model_id_of(data)
        digest = parse_model_id(model_id)
        if self.blobs.info(f"{digest}.json") is not None and self.blobs.info(f"{digest}.onnx") is not None:
            return self.info(model_id)
        info = ModelInfo(
            model_id=model_id,
            name=name,
            size=len(data),
            uploaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
            **describe(model),
        )
        self.blobs.put(f"{digest}.onnx", data)
        self.blobs.put(f"{digest}.json", (json.dumps(info.to_json(), indent=2) + "\n").encode())
        return info

    def load(self, model_id: str) -> bytes:
        """The bytes of ``model_id``: one file, read once, whose sha256 is the id.

        Raises ``ModelError`` when the model is missing, its bytes do not match the id, it refers to
        external data (a store written by an older version), or it fails the upload checks.
        """
        data = self._fetch(model_id)
        model = parse_model(data, what=model_id)
        if external_locations(model):
            # Nothing outside this file is covered by the id, so nothing outside it may be loaded.
            raise ModelError(
                f"model {model_id} refers to external data, which its id does not cover (a store written "
                "by an older rtml-worker); it is not loaded. Re-upload the original model with "
                "`rtml-worker models upload MODEL.onnx`, which inlines the external data under a new "
                "model id, and point the graph at that id"
            )
        check_model(model, what=model_id, allow_custom_domains=self.allow_custom_domains)
        return data

    def _fetch(self, model_id: str) -> bytes:
        """The bytes of ``model_id``, from the cache or the store, hashed against the id either way."""
        key = f"{parse_model_id(model_id)}.onnx"
        if self.cache is not None:
            try:
                cached = self.cache.get(key)
            except ModelError:  # absent or unreadable: the store has it
                cached = b""
            if cached and model_id_of(cached) == model_id:
                return cached
        try:
            data = self.blobs.get(key)
        except BlobMissing as exc:
            raise ModelError(f"model {model_id} is not in the model store {self.where}") from exc
        if model_id_of(data) != model_id:
            raise ModelError(
                f"model {model_id}: content in {self.where} does not match its hash (corrupted or tampered); "
                "not loaded"
            )
        if self.cache is not None:
            self.cache.put(key, data)  # replaces a damaged entry too
        return data

    def info(self, model_id: str) -> ModelInfo:
        """The stored metadata of ``model_id``; ``ModelError`` if missing or unreadable."""
        return self._read_info(f"{parse_model_id(model_id)}.json", what=model_id)

    def list_models(self) -> list[ModelInfo]:
        """Every stored model's metadata, oldest upload first (an absent store folder is empty)."""
        infos = [self._read_info(key, what=key) for key in self.blobs.list(".json")]
        return sorted(infos, key=lambda info: (info.uploaded_at, info.model_id))

    def _read_info(self, key: str, *, what: str) -> ModelInfo:
        try:
            raw = json.loads(self.blobs.get(key))
        except BlobMissing as exc:
            raise ModelError(f"model {what} is not in the model store {self.where}") from exc
        except ValueError as exc:
            raise ModelError(f"{what}: unreadable metadata ({exc})") from exc
        return ModelInfo.from_json(raw, what=what)


def _inline_external(model: onnx.ModelProto, size: int, *, name: str, source_dir: Path | None) -> bytes:
    """Read each external file once, copy every external tensor's bytes into ``model``, serialize it.

    ``size`` is the serialized size of ``model`` before inlining. Plus the tensors' bytes it is the size of
    the result to within a few bytes per tensor, enough to refuse an oversized model before building it.
    """
    if source_dir is None:
        raise ModelError(f"{name}: has external data but no folder to read it from")
    blobs = {
        location: _read_inside(source_dir, location, what=name) for location in external_locations(model)
    }
    chunks = [(tensor, _external_bytes(tensor, blobs, what=name)) for tensor in external_tensors(model)]
    size += sum(len(chunk) for _, chunk in chunks)
    if size > PROTOBUF_LIMIT:
        raise _too_big(name, size)
    for tensor, chunk in chunks:
        tensor.raw_data = chunk
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]
    try:
        return bytes(model.SerializeToString())
    except EncodeError as exc:  # the estimate was a few bytes short: the same refusal
        raise _too_big(name, size) from exc


def _too_big(name: str, size: int) -> ModelError:
    return ModelError(
        f"{name}: with its external data inlined the model takes about {size} bytes, over protobuf's "
        "2 GiB limit; the model store keeps only self-contained models"
    )


def _external_bytes(tensor: onnx.TensorProto, blobs: dict[str, bytes], *, what: str) -> bytes:
    """The slice of its file that ``tensor`` names (``offset``, ``length``: the ONNX external data keys)."""
    entries = external_entries(tensor)
    location = entries.get("location", "")
    blob = blobs[location]
    try:
        offset = int(entries.get("offset", 0))
        length = int(entries.get("length", len(blob) - offset))
    except ValueError as exc:
        raise ModelError(
            f"{what}: tensor {tensor.name!r} has an unreadable external offset or length"
        ) from exc
    if offset < 0 or length < 0 or offset + length > len(blob):
        raise ModelError(
            f"{what}: tensor {tensor.name!r} reads bytes {offset}..{offset + length} of {location!r}, "
            f"which has {len(blob)}"
        )
    return blob[offset : offset + length]


def _read_inside(base: Path, location: str, *, what: str) -> bytes:
    """Read ``base/location``, refusing a path that resolves outside ``base`` (e.g. through a symlink)."""
    path = (base / location).resolve()
    if not path.is_relative_to(base.resolve()):
        raise ModelError(f"{what}: external data location {location!r} leaves the model folder")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{what}: cannot read external data {location!r} ({exc.strerror})") from exc
