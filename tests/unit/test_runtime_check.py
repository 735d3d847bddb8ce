"""``rtml-worker run --check``: what a user sees for good and bad settings, without Kafka."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from worker.cli import main

EVENT = {"type": "record", "name": "Event", "fields": [{"name": "id", "type": "string"},
         {"name": "flag", "type": "boolean"}]}  # fmt: skip
SCORE = {"type": "record", "name": "Score", "fields": [{"name": "id", "type": "string"},
         {"name": "flag", "type": "boolean"}]}  # fmt: skip
GRAPH = {
    "name": "passthrough",
    "inputs": [{"name": "id", "dtype": "string"}, {"name": "flag", "dtype": "bool"}],
    "outputs": [{"name": "id", "dtype": "string"}, {"name": "flag", "dtype": "bool"}],
}


def write_config(tmp_path: Path, *, score: dict[str, Any] = SCORE, **settings: Any) -> Path:
    """A TOML config over ``tmp_path`` with plain framing; ``settings`` replace (dotted) keys of it."""
    (tmp_path / "event.avsc").write_text(json.dumps(EVENT))
    (tmp_path / "score.avsc").write_text(json.dumps(score))
    (tmp_path / "graph.json").write_text(json.dumps(GRAPH))
    values: dict[str, Any] = {
        "group_id": "g",
        "graph": str(tmp_path / "graph.json"),
        "model_store": str(tmp_path / "models"),
        "kafka": {"bootstrap_servers": "127.0.0.1:1"},  # never contacted without --online
        "input": {"topics": ["events"], "reader_schema": str(tmp_path / "event.avsc"), "framing": "plain"},
        "output": {"topic": "scores", "schema": str(tmp_path / "score.avsc"), "framing": "plain"},
        "dead_letter": {"topic": "dlq"},
    }
    for dotted, value in settings.items():
        *tables, key = dotted.split("__")
        table = values
        for name in tables:
            table = table.setdefault(name, {})
        table[key] = value
    path = tmp_path / "worker.toml"
    path.write_text(_toml(values))
    return path


def _toml(values: dict[str, Any], prefix: str = "") -> str:
    plain = [f"{k} = {json.dumps(v)}" for k, v in values.items() if not isinstance(v, dict)]
    tables = [_toml(v, f"{prefix}{k}.") for k, v in values.items() if isinstance(v, dict)]
    head = f"[{prefix.rstrip('.')}]\n" if prefix else ""
    return head + "\n".join(plain) + "\n\n" + "".join(tables)


def check(config: Path, *extra: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", "--config", str(config), "--check", *extra])
    return code, out.getvalue(), err.getvalue()


def test_a_good_config_passes(tmp_path: Path) -> None:
    code, out, err = check(write_config(tmp_path))
    assert (code, err) == (0, "")
    assert out.startswith("ok: graph passthrough (")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            [{"name": "id", "type": "string"}],
            "graph output 'flag' (bool) is not a field of the output schema",
        ),
        (
            [{"name": "id", "type": "string"}, {"name": "flag", "type": "int"}],
            "field 'flag' is int in the output schema, but graph output 'flag' is bool",
        ),
        (
            [*SCORE["fields"], {"name": "region", "type": "string"}],
            "field 'region' (string) is not a graph output",
        ),
    ],
    ids=["missing-output", "bool-as-int", "extra-required-field"],
)
def test_an_output_schema_that_does_not_fit_the_graph_fails_the_check(
    tmp_path: Path, fields: list[dict[str, Any]], message: str
) -> None:
    code, out, err = check(write_config(tmp_path, score={**SCORE, "fields": fields}))
    assert (code, out) == (2, "")
    assert err.startswith(f"rtml-worker: error: output.schema: {message}")
    assert len(err.splitlines()) == 1
