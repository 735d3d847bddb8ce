"""Structured logs: JSON lines with extra fields and exceptions; secrets never reach the stream."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr

from worker.errors import ConfigError
from worker.runtime.config import InputSettings, KafkaSettings, OutputSettings, Settings
from worker.runtime.logs import MASK, JsonFormatter, configure_logging

PASSWORD = "hunter2-very-secret"
TOKEN = "tok-abc-123"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """A fresh stream wired to the root logger; the root's handlers and level are restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    configure_logging("DEBUG", out)
    yield out
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if handler not in handlers:
            handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def settings() -> Settings:
    return Settings(
        group_id="g",
        input=InputSettings(topics=["events"], reader_schema=Path("schemas/in.avsc")),
        output=OutputSettings(topic="scores", schema=Path("schemas/out.avsc")),
        dead_letter={"topic": "dlq"},
        graph=Path("graph.json"),
        kafka=KafkaSettings(
            security_protocol="SASL_SSL",
            sasl_mechanism="PLAIN",
            sasl_username="svc",
            sasl_password=SecretStr(PASSWORD),
            extra={"sasl.oauthbearer.client.secret": TOKEN},
        ),
        schema_registry={"url": "https://registry", "bearer_token": TOKEN},
    )


def test_a_line_is_one_json_object_with_the_fields(stream: io.StringIO) -> None:
    before = datetime.now(UTC)
    logging.getLogger("worker.runtime.loop").info(
        "assigned %d partitions", 2, extra={"topic": "events", "partitions": [0, 1]}
    )
    (line,) = lines(stream)
    assert line["level"] == "INFO"
    assert line["logger"] == "worker.runtime.loop"
    assert line["msg"] == "assigned 2 partitions"
    assert line["topic"] == "events"
    assert line["partitions"] == [0, 1]
    assert line["ts"].endswith("Z")
    ts = datetime.fromisoformat(line["ts"])
    assert ts.tzinfo is not None and ts.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= ts <= datetime.now(UTC)
    assert "exc" not in line


def test_exception_text_is_carried(stream: io.StringIO) -> None:
    log = logging.getLogger("worker.test")
    try:
        raise ValueError("broken\nacross lines")
    except ValueError:
        log.exception("commit failed", extra={"partition": 3})
    assert len(stream.getvalue().splitlines()) == 1  # the traceback stays inside the line
    (line,) = lines(stream)
    assert line["level"] == "ERROR"
    assert line["partition"] == 3
    assert "Traceback" in line["exc"] and "ValueError: broken" in line["exc"]


def test_values_json_cannot_encode(stream: io.StringIO) -> None:
    logging.getLogger("w").warning(
        "odd values",
        extra={"n": np.int64(7), "ratio": np.float32(0.5), "path": Path("/tmp/x"), "raw": b"\x00\xff"},
    )
    (line,) = lines(stream)
    assert (line["n"], line["ratio"], line["path"], line["raw"]) == (7, 0.5, "/tmp/x", "00ff")


def test_level_filters_and_reconfiguring_does_not_duplicate(stream: io.StringIO) -> None:
    configure_logging("warning", stream)
    configure_logging("WARNING", stream)
    log = logging.getLogger("w")
    log.info("dropped")
    log.warning("kept")
    assert [line["msg"] for line in lines(stream)] == ["kept"]
    json_handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    assert len(json_handlers) == 1


def test_unknown_level_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="log_level"):
        configure_logging("LOUD", io.StringIO())


def test_settings_logged_whole_keep_their_secrets(stream: io.StringIO) -> None:
    s = settings()
    log = logging.getLogger("worker.runtime")
    log.info("starting", extra={"settings": s})
    log.info("settings %s", s)
    log.info("librdkafka %s", s.consumer_config())
    log.info("config", extra={"consumer": s.consumer_config(), "sasl_password": PASSWORD})
    text = stream.getvalue()
    assert PASSWORD not in text and TOKEN not in text
    first, _, third, fourth = lines(stream)
    assert first["settings"]["kafka"]["sasl_password"] == MASK
    assert first["settings"]["kafka"]["sasl_username"] == "svc"  # not a secret: kept for debugging
    assert first["settings"]["kafka"]["extra"]["sasl.oauthbearer.client.secret"] == MASK
    assert first["settings"]["schema_registry"]["bearer_token"] == MASK
    assert first["settings"]["output"]["topic"] == "scores"
    assert "'sasl.username': 'svc'" in third["msg"]
    assert fourth["consumer"]["sasl.password"] == MASK
    assert fourth["consumer"]["group.id"] == "g"
    assert fourth["sasl_password"] == MASK


def test_secret_str_anywhere_is_masked(stream: io.StringIO) -> None:
    secret = SecretStr(PASSWORD)
    log = logging.getLogger("w")
    log.info("value %s", secret, extra={"nested": {"list": [secret, 1]}, "plain": secret})
    text = stream.getvalue()
    assert PASSWORD not in text
    (line,) = lines(stream)
    assert line["nested"] == {"list": [MASK, 1]}
    assert line["plain"] == MASK
    assert line["msg"] == f"value {MASK}"


def test_a_bad_format_string_keeps_the_line() -> None:
    # Formatted directly: pytest's own capture handler would raise on this record first.
    record = logging.makeLogRecord({"msg": "%d events", "args": ("many",), "levelname": "INFO"})
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"].startswith("%d events") and "many" in line["msg"]
