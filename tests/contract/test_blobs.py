"""The model store's backends held to one contract: a local folder and a real S3-compatible server."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.errors import ModelError
from worker.models.blobs import BlobMissing, FolderBlobs, ObjectBlobs, location_kind, open_blobs, redact


def test_put_then_get_returns_the_same_bytes(store_location: str) -> None:
    blobs = open_blobs(store_location)
    data = bytes(range(256)) * 40
    blobs.put("a.onnx", data)
    assert blobs.get("a.onnx") == data
    assert blobs.info("a.onnx") == len(data)


def test_a_second_put_replaces_the_bytes_whole(store_location: str) -> None:
    blobs = open_blobs(store_location)
    blobs.put("k.json", b"first")
    blobs.put("k.json", b"second, longer")
    assert blobs.get("k.json") == b"second, longer"


def test_a_missing_key_is_blob_missing_and_has_no_info(store_location: str) -> None:
    blobs = open_blobs(store_location)
    with pytest.raises(BlobMissing, match=r"nothing\.onnx is not in"):
        blobs.get("nothing.onnx")
    assert blobs.info("nothing.onnx") is None


def test_list_names_the_keys_with_a_suffix_sorted(store_location: str) -> None:
    blobs = open_blobs(store_location)
    assert blobs.list(".json") == []  # an empty (or absent) store lists nothing
    for key in ("b.json", "a.json", "a.onnx"):
        blobs.put(key, b"{}")
    assert blobs.list(".json") == ["a.json", "b.json"]
    assert blobs.list() == ["a.json", "a.onnx", "b.json"]


def test_two_handles_on_one_location_see_each_others_writes(store_location: str) -> None:
    open_blobs(store_location).put("shared.onnx", b"bytes")
    assert open_blobs(store_location).get("shared.onnx") == b"bytes"


def test_the_location_picks_the_backend() -> None:
    assert isinstance(open_blobs("s3://bucket/prefix"), ObjectBlobs)
    assert isinstance(open_blobs("./models"), FolderBlobs)
    assert isinstance(open_blobs("file:///srv/models"), FolderBlobs)
    assert [location_kind(x) for x in ("gs://b/p", "az://c/p", "/srv/m", "C:/m")] == [
        "object",
        "object",
        "folder",
        "folder",
    ]


def test_a_location_is_shown_without_credentials() -> None:
    assert redact("s3://AKIA:secret@bucket/models?token=x") == "s3://bucket/models"
    assert "secret" not in open_blobs("s3://AKIA:secret@bucket/models").where


def test_an_object_url_without_a_bucket_is_refused() -> None:
    with pytest.raises(ModelError, match="names no bucket"):
        ObjectBlobs("s3:///models")


def test_a_folder_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    FolderBlobs(tmp_path).put("m.onnx", b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
