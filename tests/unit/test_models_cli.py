"""``rtml-worker models upload|list`` through ``worker.cli.main``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.cli import main
from worker.models import ModelStore, model_id_of, parse_model_id
from worker.models.testing import add_model as make_model
from worker.models.testing import affine_model, write_legacy_store


def upload(tmp_path: Path, data: bytes, *extra: str) -> int:
    source = tmp_path / "model.onnx"
    source.write_bytes(data)
    return main(["models", "upload", str(source), "--models", str(tmp_path / "store"), *extra])


def test_upload_prints_the_model_id_and_list_shows_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_model()
    assert upload(tmp_path, data, "--name", "adder") == 0
    model_id = capsys.readouterr().out.strip()
    assert model_id == model_id_of(data)

    assert main(["models", "list", "--models", str(tmp_path / "store")]) == 0
    header, row = capsys.readouterr().out.strip().splitlines()
    assert header.split()[:3] == ["MODEL_ID", "NAME", "SIZE"]
    assert row.split()[:3] == [model_id, "adder", str(len(data))]

    assert main(["models", "list", "--json", "--models", str(tmp_path / "store")]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["model_id"], listed["name"], listed["inputs"][0]["name"]) == (model_id, "adder", "x")


def test_the_store_defaults_to_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RTML_MODEL_STORE", str(tmp_path / "env"))
    (tmp_path / "m.onnx").write_bytes(make_model())
    assert main(["models", "upload", str(tmp_path / "m.onnx")]) == 0
    model_id = capsys.readouterr().out.strip()
    assert (tmp_path / "env" / f"{parse_model_id(model_id)}.onnx").exists()


def test_upload_with_external_data_prints_the_id_of_the_inlined_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = affine_model(tmp_path)
    assert main(["models", "upload", str(source), "--models", str(tmp_path / "store")]) == 0
    model_id = capsys.readouterr().out.strip()
    assert model_id != model_id_of(source.read_bytes())
    assert model_id_of(ModelStore(tmp_path / "store").load(model_id)) == model_id


def test_list_warns_about_models_stored_with_external_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    legacy = write_legacy_store(tmp_path, tmp_path / "store")
    assert upload(tmp_path, make_model()) == 0
    capsys.readouterr()
    assert main(["models", "list", "--models", str(tmp_path / "store")]) == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 3  # the table is unchanged: header and both models
    assert err.splitlines() == [
        f"warning: {legacy} keeps external data its id does not cover and will be refused at load;"
        " re-upload its original with `rtml-worker models upload MODEL.onnx`"
    ]


def test_a_custom_domain_is_refused_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert upload(tmp_path, make_model(domain="com.example")) == 2
    assert "custom operator domain" in capsys.readouterr().err
    assert upload(tmp_path, make_model(domain="com.example"), "--allow-custom-domains") == 0


def test_external_data_outside_the_store_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert upload(tmp_path, make_model(external="../../etc/passwd", folder=tmp_path)) == 2
    assert "leaves the model store" in capsys.readouterr().err


def test_a_missing_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "upload", str(tmp_path / "nope.onnx"), "--models", str(tmp_path)]) == 2
    assert "cannot read model" in capsys.readouterr().err


def test_an_empty_store_lists_only_the_header(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list", "--models", str(tmp_path / "absent")]) == 0
    assert capsys.readouterr().out.split() == ["MODEL_ID", "NAME", "SIZE", "OPSET", "INPUTS", "UPLOADED_AT"]
