"""The model store: content addressing, hash verification, domain and external-data checks, atomic layout."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from worker.errors import ModelError
from worker.models import ModelStore, model_id_of, parse_model_id
from worker.models import store as store_module
from worker.models.checks import external_locations
from worker.models.testing import add_model as make_model
from worker.models.testing import affine_model, write_legacy_store


def test_upload_is_content_addressed_and_load_returns_the_same_bytes(tmp_path: Path) -> None:
    source = tmp_path / "add.onnx"
    data = make_model()
    source.write_bytes(data)
    store = ModelStore(tmp_path / "store")
    info = store.upload(source)
    assert info.model_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert (info.name, info.size, info.opset) == ("add", len(data), {"ai.onnx": 17})
    assert info.inputs == [{"name": "x", "type": "float", "shape": ["N", 2]}]
    assert store.load(info.model_id) == data
    assert [i.model_id for i in store.list_models()] == [info.model_id]


def test_uploading_twice_keeps_the_first_metadata(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    first = store.put(make_model(), name="first")
    second = store.put(make_model(), name="second")
    assert second == first
    assert len(store.list_models()) == 1


def test_no_temporary_files_are_left_behind(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    info = store.put(make_model(), name="m")
    digest = parse_model_id(info.model_id)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{digest}.json", f"{digest}.onnx"]


def test_a_tampered_model_fails_its_hash_check(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    info = store.put(make_model(), name="m")
    path = tmp_path / f"{parse_model_id(info.model_id)}.onnx"
    tampered = bytearray(path.read_bytes())
    tampered[-1] ^= 0x01
    path.write_bytes(bytes(tampered))
    with pytest.raises(ModelError, match="does not match its hash"):
        store.load(info.model_id)


def test_a_missing_model_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not in the model store"):
        ModelStore(tmp_path).load(model_id_of(b"nothing"))


@pytest.mark.parametrize("bad", ["abc", "sha256:XYZ", "md5:" + "0" * 32, "0" * 64, "sha256:" + "A" * 64])
def test_malformed_ids_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ModelError, match="invalid model id"):
        ModelStore(tmp_path).load(bad)


def test_garbage_bytes_are_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        ModelStore(tmp_path).put(b"\xff" * 16, name="junk")


def test_custom_domains_are_refused_unless_allowed(tmp_path: Path) -> None:
    data = make_model(domain="com.example.evil")
    store = ModelStore(tmp_path)
    with pytest.raises(ModelError, match=r"custom operator domain\(s\) \['com.example.evil'\]"):
        store.put(data, name="custom")
    info = store.put(data, name="custom", allow=True)
    with pytest.raises(ModelError, match="custom operator domain"):
        store.load(info.model_id)  # the load-time check is the store's own, not the upload's flag
    assert ModelStore(tmp_path, allow_custom_domains=True).load(info.model_id) == data


def test_a_custom_domain_planted_in_the_store_is_refused_at_load(tmp_path: Path) -> None:
    data = make_model(domain="com.example.evil")
    (tmp_path / f"{parse_model_id(model_id_of(data))}.onnx").write_bytes(data)
    with pytest.raises(ModelError, match="custom operator domain"):
        ModelStore(tmp_path).load(model_id_of(data))


@pytest.mark.parametrize(
    "location", ["/etc/passwd", "../weights.bin", "sub/../../weights.bin", "C:\\w.bin", ""]
)
def test_external_data_outside_the_store_is_refused(tmp_path: Path, location: str) -> None:
    source = tmp_path / "src"
    source.mkdir()
    data = make_model(external=location, folder=source)
    with pytest.raises(ModelError, match="external data location"):
        ModelStore(tmp_path / "store").put(data, name="ext", source_dir=source)


def score(model: bytes) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.array([[1.0, 1.0], [0.0, -1.0]], dtype=np.float32)})
    return np.asarray(y)


def test_external_data_is_inlined_at_upload_and_scores_the_same(tmp_path: Path) -> None:
    source = affine_model(tmp_path)
    expected = score(onnx.load(str(source)).SerializeToString())  # onnx reads weights.bin itself
    store = ModelStore(tmp_path / "store")
    info = store.upload(source)
    (tmp_path / "weights.bin").unlink()  # the store needs nothing from the source folder any more

    loaded = store.load(info.model_id)
    assert model_id_of(loaded) == info.model_id  # the id covers every byte the session gets
    assert info.model_id != model_id_of(source.read_bytes())
    assert (info.size, info.external_data) == (len(loaded), [])
    assert not external_locations(onnx.load_from_string(loaded))
    np.testing.assert_array_equal(score(loaded), expected)
    digest = parse_model_id(info.model_id)
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [f"{digest}.json", f"{digest}.onnx"]


def test_tampered_inlined_weights_fail_the_hash_check(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    info = store.upload(affine_model(tmp_path))
    path = tmp_path / "store" / f"{parse_model_id(info.model_id)}.onnx"
    data = path.read_bytes()
    weight = np.array([1.5, -2.0], dtype=np.float32).tobytes()
    assert data.count(weight) == 1
    path.write_bytes(data.replace(weight, np.array([100.0, 100.0], dtype=np.float32).tobytes()))
    with pytest.raises(ModelError, match="does not match its hash"):
        store.load(info.model_id)


def test_a_tensor_reaching_past_its_external_file_is_refused(tmp_path: Path) -> None:
    source = affine_model(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 12)  # the second weight needs bytes 8..16
    with pytest.raises(ModelError, match=r"tensor 'b' reads bytes 8\.\.16 of 'weights\.bin', which has 12"):
        ModelStore(tmp_path / "store").upload(source)


def test_a_model_over_the_protobuf_limit_once_inlined_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = affine_model(tmp_path)
    monkeypatch.setattr(store_module, "PROTOBUF_LIMIT", len(source.read_bytes()) + 15)
    with pytest.raises(ModelError, match="over protobuf's 2 GiB limit"):
        ModelStore(tmp_path / "store").upload(source)
    assert not (tmp_path / "store").exists()


def legacy_store(tmp_path: Path) -> tuple[ModelStore, str, Path]:
    model_id = write_legacy_store(tmp_path, tmp_path / "store")
    blob = tmp_path / "store" / f"{parse_model_id(model_id)}.data" / "weights.bin"
    return ModelStore(tmp_path / "store"), model_id, blob


def test_a_legacy_model_with_external_data_is_refused_with_how_to_fix_it(tmp_path: Path) -> None:
    store, model_id, _ = legacy_store(tmp_path)
    assert store.info(model_id).external_data  # old metadata stays readable (`models list`)
    how = r"refers to external data.*Re-upload the original model with `rtml-worker models upload MODEL"
    with pytest.raises(ModelError, match=how):
        store.load(model_id)


def test_legacy_external_data_swapped_with_its_recorded_hash_is_refused(tmp_path: Path) -> None:
    store, model_id, blob = legacy_store(tmp_path)
    evil = np.array([100.0, 100.0, 100.0, 100.0], dtype=np.float32).tobytes()
    blob.write_bytes(evil)
    meta = blob.parent.with_suffix(".json")
    raw = json.loads(meta.read_text())
    raw["external_data"][0]["sha256"] = hashlib.sha256(evil).hexdigest()
    meta.write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="refers to external data"):
        store.load(model_id)


def test_a_legacy_external_data_symlink_out_of_the_store_is_refused(tmp_path: Path) -> None:
    store, model_id, blob = legacy_store(tmp_path)
    outside = tmp_path / "secret.bin"
    blob.rename(outside)
    blob.symlink_to(outside)
    with pytest.raises(ModelError, match="refers to external data"):
        store.load(model_id)


def test_an_external_data_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    data = make_model(external="weights.bin", folder=source)
    outside = tmp_path / "secret.bin"
    (source / "weights.bin").rename(outside)
    (source / "weights.bin").symlink_to(outside)
    with pytest.raises(ModelError, match="leaves the model folder"):
        ModelStore(tmp_path / "store").put(data, name="ext", source_dir=source)


def test_unreadable_metadata_is_a_model_error(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    info = store.put(make_model(), name="m")
    (tmp_path / f"{parse_model_id(info.model_id)}.json").write_text(json.dumps({"model_id": info.model_id}))
    with pytest.raises(ModelError, match="unreadable metadata"):
        store.info(info.model_id)


def test_the_environment_variable_chooses_the_default_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTML_MODEL_STORE", str(tmp_path / "env-store"))
    info = ModelStore().put(make_model(), name="m")
    assert (tmp_path / "env-store" / f"{parse_model_id(info.model_id)}.onnx").exists()


def test_the_cache_of_an_object_store_defaults_to_the_users_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RTML_MODEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store_module.default_cache_dir() == tmp_path / "xdg" / "rtml-worker" / "models"
    monkeypatch.setenv("RTML_MODEL_CACHE", str(tmp_path / "mine"))
    assert store_module.default_cache_dir() == tmp_path / "mine"
