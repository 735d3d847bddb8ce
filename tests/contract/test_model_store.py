"""The model store on each backend: content addressing, the read-through cache, refusing tampered bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.errors import ModelError
from worker.models import ModelStore, model_id_of, parse_model_id
from worker.models.blobs import open_blobs
from worker.models.testing import add_model


def test_a_put_model_is_listed_and_loads_back(store_location: str, tmp_path: Path) -> None:
    store = ModelStore(store_location, cache=tmp_path / "cache")
    data = add_model()
    info = store.put(data, name="adder")
    assert info.model_id == model_id_of(data)
    assert store.put(data, name="again") == info  # the same bytes: the first upload's metadata
    assert [i.model_id for i in store.list_models()] == [info.model_id]
    assert ModelStore(store_location, cache=tmp_path / "other").load(info.model_id) == data


def test_a_missing_model_names_the_store(store_location: str, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="is not in the model store"):
        ModelStore(store_location, cache=tmp_path / "cache").load(model_id_of(b"absent"))


def test_tampered_bytes_in_the_store_are_refused_and_not_cached(store_location: str, tmp_path: Path) -> None:
    data = add_model()
    model_id = ModelStore(store_location).put(data, name="adder").model_id
    key = f"{parse_model_id(model_id)}.onnx"
    open_blobs(store_location).put(key, data + b"\0")
    cache = tmp_path / "cache"
    with pytest.raises(ModelError, match="does not match its hash"):
        ModelStore(store_location, cache=cache).load(model_id)
    assert not (cache / key).exists()


@pytest.mark.integration
def test_an_object_store_is_read_once_then_served_from_the_cache(s3_location: str, tmp_path: Path) -> None:
    data = add_model()
    model_id = ModelStore(s3_location).put(data, name="adder").model_id
    cache = tmp_path / "cache"
    assert ModelStore(s3_location, cache=cache).load(model_id) == data
    key = f"{parse_model_id(model_id)}.onnx"
    assert (cache / key).read_bytes() == data
    open_blobs(s3_location).put(key, b"gone")  # were the store read again, the hash check would refuse it
    assert ModelStore(s3_location, cache=cache).load(model_id) == data


@pytest.mark.integration
def test_a_damaged_cache_entry_is_fetched_again(s3_location: str, tmp_path: Path) -> None:
    data = add_model()
    model_id = ModelStore(s3_location).put(data, name="adder").model_id
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"{parse_model_id(model_id)}.onnx").write_bytes(b"bit rot")
    assert ModelStore(s3_location, cache=cache).load(model_id) == data
    assert (cache / f"{parse_model_id(model_id)}.onnx").read_bytes() == data


def test_a_folder_store_keeps_no_cache(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store", cache=tmp_path / "cache")
    store.load(store.put(add_model(), name="adder").model_id)
    assert store.cache is None and not (tmp_path / "cache").exists()
