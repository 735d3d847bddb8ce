"""Read the events of an offline scoring input: JSON Lines, or an Avro object container file.

The format is detected from the first bytes: an Avro container starts with the magic ``Obj\\x01``; anything
else is read as JSON Lines (one JSON object per line; blank lines are skipped and are not events).

``read_events`` yields, in input order, either the event's dict or a ``RecordError`` (stage ``"decode"``, with
the event's position as ``offset`` and the raw line as ``value``) for a line that is not a JSON object, so the
caller can print the error at the event's position. A corrupt Avro container cannot be resumed and raises
``ConfigError`` naming the input. Blocks on file reads; called by the ``score`` command.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import fastavro

from worker.errors import ConfigError, RecordError

AVRO_MAGIC = b"Obj\x01"

Event = dict[str, Any] | RecordError


def read_events(path: str | Path) -> Iterator[Event]:
    """The events of the file at ``path``, in order (see the module docstring)."""
    source = Path(path)
    if not source.is_file():
        raise ConfigError(f"{source} is not a readable file", field="--input")
    with source.open("rb") as handle:
        if handle.read(len(AVRO_MAGIC)) == AVRO_MAGIC:
            handle.seek(0)
            yield from _read_avro(handle, path)
        else:
            handle.seek(0)
            yield from _read_json_lines(handle)


def _read_json_lines(handle: BinaryIO) -> Iterator[Event]:
    position = 0
    for line in handle:
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError as exc:
            event = RecordError(f"not valid JSON: {exc}", offset=position, value=line, stage="decode")
        if not isinstance(event, dict | RecordError):
            event = RecordError("not a JSON object", offset=position, value=line, stage="decode")
        yield event
        position += 1


def _read_avro(handle: BinaryIO, path: str | Path) -> Iterator[Event]:
    try:
        for record in fastavro.reader(handle):
            if not isinstance(record, dict):
                raise ConfigError(f"{path}: the Avro schema's top level must be a record", field="--input")
            yield record
    except (ValueError, EOFError, StopIteration, fastavro.read.SchemaResolutionError) as exc:
        raise ConfigError(f"{path}: corrupt Avro container ({exc})", field="--input") from exc
