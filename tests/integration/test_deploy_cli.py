"""The deploy commands end to end on the real broker, with the models in the real S3Proxy."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from examples.iris.train import train as train_iris
from worker.cli import main
from worker.models import ModelStore

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings_file(
    admin: AdminClient,
    bootstrap_servers: str,
    schema_registry_url: str,
    s3_location: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Path]:
    """A replica's settings file (group, topics and all) naming a fresh deployment topic and S3 prefix."""
    monkeypatch.setenv("RTML_MODEL_CACHE", str(tmp_path / "cache"))
    topic = f"test-deployments-{uuid.uuid4().hex[:12]}"
    store = s3_location
    path = tmp_path / "worker.toml"
    path.write_text(f"""
group_id = "iris"
model_store = "{store}"

[kafka]
bootstrap_servers = "{bootstrap_servers}"

[schema_registry]
url = "{schema_registry_url}"

[deployments]
topic = "{topic}"

[input]
topics = ["{topic}-events"]
reader_schema = "{ROOT / "schemas" / "iris_event.avsc"}"

[output]
topic = "{topic}-scores"
schema = "{ROOT / "schemas" / "iris_score.avsc"}"

[dead_letter]
topic = "iris-dlq"
""")
    yield path
    if topic in admin.list_topics(timeout=10).topics:
        admin.delete_topics([topic], operation_timeout=30)[topic].result(timeout=30)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_publish_list_history_show_rollback_delete(
    settings_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = settings_file.read_text()
    store = text.split('model_store = "', 1)[1].split('"', 1)[0]
    graph = train_iris(tmp_path / "iris", ModelStore(store)).graph
    config = ("--config", str(settings_file))

    code, out, _ = run(capsys, "deploy", "publish", "iris", str(graph), "--message", "first", *config)
    assert code == 0 and "\npublished iris version 1 (" in out
    assert "ok: the graph compiles with its 1 models and fits both schemas" in out
    assert "-events-value (no version yet) resolves to the reader schema" in out  # no writer yet
    assert "-scores-value takes the output schema" in out
    code, out, _ = run(capsys, "deploy", "publish", "iris", str(graph), "--message", "second", *config)
    assert code == 0 and "version 2" in out

    code, out, _ = run(capsys, "deploy", "list", "--json", *config)
    assert code == 0
    [row] = json.loads(out)
    assert (row["name"], row["active"], row["versions"]) == ("iris", 2, 2)

    code, out, _ = run(capsys, "deploy", "history", "iris", "--json", *config)
    rows = json.loads(out)
    assert [(r["number"], r["parent"], r["active"], r["message"]) for r in rows] == [
        (1, None, False, "first"),
        (2, 1, True, "second"),
    ]
    code, out, _ = run(capsys, "deploy", "history", "iris", *config)
    assert code == 0 and out.splitlines()[0].split()[:2] == ["version", "id"] and "2 *" in out

    code, out, _ = run(capsys, "deploy", "show", "iris", "--version", "1", *config)
    shown = json.loads(out)
    assert shown["number"] == 1 and shown["message"] == "first" and shown["models"][0]["size"] > 0
    assert shown["graph"] == json.loads(graph.read_text())

    code, out, _ = run(capsys, "deploy", "rollback", "iris", *config)
    assert code == 0 and "back to version 1" in out
    code, out, _ = run(capsys, "deploy", "list", "--json", *config)
    assert json.loads(out)[0]["active"] == 1

    code, out, _ = run(capsys, "deploy", "delete", "iris", *config)
    assert code == 0 and out.strip() == "deleted iris and its 2 versions"
    code, out, err = run(capsys, "deploy", "show", "iris", *config)
    assert code == 2 and "deployment: no deployment named iris" in err


def test_a_publish_refused_writes_nothing_and_names_the_reason(
    settings_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = train_iris(tmp_path / "iris", ModelStore(tmp_path / "elsewhere")).graph  # not in the S3 store
    config = ("--config", str(settings_file))
    code, _, err = run(capsys, "deploy", "publish", "iris", str(graph), *config)
    assert code == 2 and "is not in the model store s3://" in err
    code, out, _ = run(capsys, "deploy", "list", "--json", *config)
    assert code == 0 and json.loads(out) == []
