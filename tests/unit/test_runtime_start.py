"""``run``'s start: a registry that does not answer yet is waited for, a wrong one is refused at once."""

from __future__ import annotations

from typing import Any

import pytest

from worker.errors import ConfigError
from worker.runtime import cli
from worker.runtime.build import RegistryDown
from worker.runtime.config import Settings

BASE: dict[str, Any] = {
    "group_id": "g",
    "input": {"topics": ["in"], "reader_schema": "schemas/car_insurance_event.avsc"},
    "output": {"topic": "out", "schema": "schemas/car_insurance_score.avsc"},
    "dead_letter": {"topic": "dlq"},
    "graph": "graph.json",
}


def settings(**registry: Any) -> Settings:
    return Settings(**BASE, schema_registry={"url": "http://127.0.0.1:1/apis/ccompat/v7", **registry})


def failing(errors: list[Exception]) -> Any:
    def build() -> str:
        if errors:
            raise errors.pop(0)
        return "pipeline"

    return build


def test_a_registry_down_at_start_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    down = RegistryDown("no registry answers", field="schema_registry.url")
    sleeps: list[float] = []
    assert cli._build_waiting(settings(), failing([down, down]), sleep=sleeps.append) == "pipeline"
    assert sleeps == [0.5, 1.0]


def test_waiting_for_the_registry_at_start_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    down = failing([RegistryDown("down", field="schema_registry.url")] * 9)
    with pytest.raises(RegistryDown, match=r"schema_registry\.url"):
        cli._build_waiting(settings(startup_timeout_s=0), down, sleep=lambda _s: None)


def test_a_wrong_registry_is_not_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = ConfigError("no Confluent-compatible registry answers", field="schema_registry.url")
    sleeps: list[float] = []
    with pytest.raises(ConfigError, match="Confluent-compatible"):
        cli._build_waiting(settings(), failing([wrong]), sleep=sleeps.append)
    assert sleeps == []
