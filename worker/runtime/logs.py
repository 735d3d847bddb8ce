"""Structured logs: one JSON object per line on the root logger, secrets redacted.

Each line carries ``ts`` (ISO-8601 UTC, milliseconds, ``Z``), ``level``, ``logger``, ``msg``, every field
passed with ``extra={...}``, and ``exc`` (the traceback text) when the record has an exception::

    log.info("partitions assigned", extra={"topic": "events", "partitions": [0, 1]})
    {"ts": "2025-01-01T12:00:00.123Z", "level": "INFO", "logger": "worker.runtime.loop",
     "msg": "partitions assigned", "topic": "events", "partitions": [0, 1]}

Redaction: a pydantic ``SecretStr`` renders as ``**********`` wherever it appears (an extra field, inside a
list, dict or pydantic model such as the settings, or a %-argument of the message), and so does the value of
any mapping key that names a secret (``sasl.password``, ``bearer_token``, ...), which covers librdkafka's
dotted-string dicts. A settings object may therefore be logged whole; its secrets never are.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any, Final, TextIO

import numpy as np
from pydantic import BaseModel, SecretBytes, SecretStr

from worker.errors import ConfigError

MASK: Final = "**********"
LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Mapping keys whose values are secrets whatever their type (librdkafka and our own settings names).
_SECRET_KEY = re.compile(r"password|secret|token|user_info|credential|private|key\.pem", re.IGNORECASE)
# Attributes every LogRecord has; anything else on a record came from ``extra``.
_RESERVED: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def configure_logging(level: str, stream: TextIO = sys.stderr) -> None:
    """Send every log record, as a JSON line, to ``stream``; called once at start (by ``run``).

    Replaces the root logger's handlers, so calling it again reconfigures rather than duplicates lines.
    Raises `ConfigError` (field ``log_level``) for an unknown level.
    """
    name = level.upper()
    if name not in LEVELS:
        raise ConfigError(f"unknown level {level!r}; one of {', '.join(LEVELS)}", field="log_level")
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old.formatter, JsonFormatter):
            old.close()  # ours; a handler someone else installed is theirs to close
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(name)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line (no newlines inside: tracebacks are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": _message(record),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                line[key] = MASK if _SECRET_KEY.search(key) else redact(value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=_fallback, ensure_ascii=False)


def redact(value: Any) -> Any:
    """``value`` with every secret masked, as plain JSON-able data where it was a model or container."""
    if isinstance(value, SecretStr | SecretBytes):
        return MASK
    if isinstance(value, BaseModel):
        # mode="json" already masks SecretStr; the walk below masks secret-named keys in plain dicts.
        return redact(value.model_dump(mode="json", by_alias=False))
    if isinstance(value, Mapping):
        return {str(k): MASK if _SECRET_KEY.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v) for v in value]
    return value


def _message(record: logging.LogRecord) -> str:
    """``record.getMessage()`` with its %-arguments redacted first."""
    if not record.args:
        return str(record.msg)
    args = record.args
    safe: Any = redact(args) if isinstance(args, Mapping) else tuple(_redact_arg(a) for a in args)
    try:
        return str(str(record.msg) % safe)
    except (TypeError, ValueError):
        return f"{record.msg} {safe!r}"  # a wrong format string must not lose the line


def _redact_arg(value: Any) -> Any:
    # Scalars keep their type so %d and %.3f still work; containers and models become redacted data.
    if isinstance(value, SecretStr | SecretBytes | BaseModel | Mapping | list | tuple | set | frozenset):
        return redact(value)
    return value


def _fallback(value: Any) -> Any:
    """JSON for what ``json`` cannot encode: numpy scalars and arrays, paths, bytes, anything else by str."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value[:256].hex() + ("..." if len(value) > 256 else "")
    if isinstance(value, PurePath | datetime):
        return str(value)
    return repr(value)
