"""Where the model store keeps its files: a local folder, or a bucket of an object store.

A ``Blobs`` is four calls on flat keys (``put``, ``get``, ``info``, ``list``); the model store above it is
content-addressed, so nothing here needs rename, locking or partial reads. Two implementations are held to
one contract suite (tests/contract/test_blobs.py): ``FolderBlobs`` (the embedded default) and
``ObjectBlobs``, through obstore (Rust's ``object_store`` crate, which the Apache Arrow project maintains;
one dependency, no transitive Python packages, S3, GCS and Azure alike).

``open_blobs(location)`` picks one by the location's form: ``s3://bucket/prefix``, ``gs://...``, ``az://...``
(or ``abfs://``) is object storage, anything else a folder (``file://`` allowed). Credentials come from the
standard environment and files of each cloud (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``,
``GOOGLE_APPLICATION_CREDENTIALS``, ...), read by obstore; they are never part of the location, and
``redact`` strips any userinfo or query a location was given before it is shown.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import obstore
import obstore.store

from worker.errors import ModelError

OBJECT_SCHEMES = ("s3", "s3a", "gs", "az", "abfs", "abfss", "azure")
# A model fetch is a start-up or deploy step: a few retries absorb a store's hiccup, and a dead store is
# reported within about a minute rather than the library's default of several.
_RETRIES = 4
_RETRY_TIMEOUT = datetime.timedelta(seconds=60)


class BlobMissing(ModelError):
    """The key is not in the store."""


class Blobs(Protocol):
    """Flat keys to bytes. Every call blocks and raises ``ModelError`` (``BlobMissing`` for a missing key)."""

    @property
    def where(self) -> str:
        """The location, fit to show (no credentials)."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, whole or not at all: a reader never sees part of it."""
        ...

    def get(self, key: str) -> bytes: ...

    def info(self, key: str) -> int | None:
        """The size of ``key``'s bytes, or None when absent."""
        ...

    def list(self, suffix: str = "") -> list[str]:
        """Every key ending in ``suffix``, sorted."""
        ...


def location_kind(location: str | os.PathLike[str]) -> str:
    """``"object"`` for an object-store URL, ``"folder"`` otherwise."""
    scheme = urlsplit(os.fspath(location)).scheme.lower()
    return "object" if scheme in OBJECT_SCHEMES else "folder"


def redact(location: str | os.PathLike[str]) -> str:
    """The location without userinfo, query or fragment: safe to log."""
    text = os.fspath(location)
    if location_kind(text) != "object":
        return text
    parts = urlsplit(text)
    return urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", ""))


def open_blobs(location: str | os.PathLike[str]) -> Blobs:
    """A ``FolderBlobs`` or an ``ObjectBlobs`` for ``location`` (see the module docstring)."""
    text = os.fspath(location)
    if location_kind(text) == "object":
        return ObjectBlobs(text)
    return FolderBlobs(Path(text[len("file://") :] if text.startswith("file://") else text))


class FolderBlobs:
    """Keys as files of one folder, written to a temporary file, flushed, and renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def where(self) -> str:
        return str(self.root)

    def put(self, key: str, data: bytes) -> None:
        path = self.root / key
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as exc:
            raise ModelError(f"{self.where}: cannot write {key} ({exc.strerror})") from exc
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError as exc:
            raise BlobMissing(f"{key} is not in {self.where}") from exc
        except OSError as exc:
            raise ModelError(f"{self.where}: cannot read {key} ({exc.strerror})") from exc

    def info(self, key: str) -> int | None:
        try:
            return (self.root / key).stat().st_size
        except FileNotFoundError:
            return None

    def list(self, suffix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_file() and p.name.endswith(suffix))


class ObjectBlobs:
    """Keys as objects under a bucket's prefix, through obstore. A PUT is atomic in S3, GCS and Azure."""

    def __init__(self, url: str) -> None:
        self._where = redact(url)
        parts = urlsplit(url)
        if not parts.netloc:
            raise ModelError(
                f"model_store {self._where!r}: names no bucket (expected scheme://bucket/prefix)"
            )
        try:
            # retry_config only: obstore builds the client's options from the environment (AWS_ALLOW_HTTP,
            # AWS_ENDPOINT_URL, ...) unless client_options are given, which would replace them all.
            self._store = obstore.store.from_url(
                url, retry_config={"max_retries": _RETRIES, "retry_timeout": _RETRY_TIMEOUT}
            )
        except Exception as exc:  # obstore raises its own error types for a bad URL or configuration
            raise ModelError(f"model_store {self._where!r}: {_reason(exc)}") from exc

    @property
    def where(self) -> str:
        return self._where

    def put(self, key: str, data: bytes) -> None:
        try:
            obstore.put(self._store, key, data)
        except Exception as exc:
            raise ModelError(f"{self.where}: cannot write {key} ({_reason(exc)})") from exc

    def get(self, key: str) -> bytes:
        try:
            return bytes(obstore.get(self._store, key).bytes())
        except FileNotFoundError as exc:
            raise BlobMissing(f"{key} is not in {self.where}") from exc
        except Exception as exc:
            raise ModelError(f"{self.where}: cannot read {key} ({_reason(exc)})") from exc

    def info(self, key: str) -> int | None:
        try:
            return int(obstore.head(self._store, key)["size"])
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise ModelError(f"{self.where}: cannot read {key} ({_reason(exc)})") from exc

    def list(self, suffix: str = "") -> list[str]:
        try:
            keys = [meta["path"] for chunk in obstore.list(self._store) for meta in chunk]
        except Exception as exc:
            raise ModelError(f"{self.where}: cannot list ({_reason(exc)})") from exc
        return sorted(k for k in keys if "/" not in k and k.endswith(suffix))


def _reason(exc: BaseException) -> str:
    """The first line of an obstore error (the rest repeats the request at length)."""
    return next(iter(str(exc).strip().splitlines()), type(exc).__name__)
