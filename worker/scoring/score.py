"""Score a stream of events with a compiled graph, batch by batch, one JSON-ready result per event in order.

For each batch: ``records_to_batch`` builds the declared input columns (rows that do not fit are rejected at
stage ``"validate"``), ``CompiledGraph.run`` scores the rest (rows a node rejects come back as
``ScoringError``), and every event gets exactly one result at its position: the declared output fields, or
``{"error": {stage, node_id, model_id, reason, offset}}``. ``offset`` is the event's position in the input.

JSON values: NaN/NaT become null, timestamps ISO-8601 strings in UTC (``...Z``), bytes latin-1 strings (as
Avro's JSON encoding). CPU-bound; never raises for a bad event (``GraphError`` only for a wiring bug).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import numpy as np

from worker.columns import Column
from worker.errors import RecordError
from worker.graph import CompiledGraph
from worker.scoring.reader import Event
from worker.scoring.records import records_to_batch

Result = dict[str, Any]


def score_events(
    graph: CompiledGraph, events: Iterable[Event], *, batch_size: int = 1000
) -> Iterator[Result]:
    """One result per event of ``events``, in order, scoring ``batch_size`` events at a time."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    iterator, start = iter(events), 0
    while chunk := list(islice(iterator, batch_size)):
        yield from score_batch(graph, chunk, start=start)
        start += len(chunk)


def score_batch(graph: CompiledGraph, events: list[Event], *, start: int = 0) -> list[Result]:
    """The results of one batch; ``start`` is the input position of ``events[0]``."""
    results: list[Result | None] = [None] * len(events)
    positions = [i for i, event in enumerate(events) if not isinstance(event, RecordError)]
    for i, event in enumerate(events):
        if isinstance(event, RecordError):
            results[i] = error_result(event, start + i)
    records = [event for event in events if not isinstance(event, RecordError)]
    built = records_to_batch(records, graph.inputs)
    for row, error in built.errors.items():
        results[positions[row]] = error_result(error, start + positions[row])
    scored = graph.run(built.columns)
    for row, scoring_error in scored.errors.items():
        where = positions[int(built.rows[row])]
        results[where] = error_result(scoring_error, start + where)
    names = list(scored.columns)
    values = [to_json_values(scored.columns[name]) for name in names]
    for j, row in enumerate(scored.rows.tolist()):
        results[positions[int(built.rows[row])]] = {
            name: column[j] for name, column in zip(names, values, strict=True)
        }
    missing = [start + i for i, result in enumerate(results) if result is None]
    if missing:  # a stage broke its contract (every row passed or rejected): fail loudly, never drop
        raise AssertionError(f"events at positions {missing[:5]} got no result")
    return [result for result in results if result is not None]


def error_result(error: RecordError, position: int) -> Result:
    """The JSON line printed in place of a rejected event's score."""
    return {
        "error": {
            "stage": error.stage,
            "node_id": error.node_id,
            "model_id": error.model_id,
            "reason": error.reason,
            "offset": position,
        }
    }


def to_json_values(column: Column) -> list[Any]:
    """A column as JSON-ready Python values (one pass per column, not per cell type check)."""
    if column.ndim == 2:
        return [to_json_values(row) for row in column]
    if column.dtype.kind == "f":
        cells = column.astype(object)
        cells[np.isnan(column)] = None
        return list(cells.tolist())
    if column.dtype.kind == "M":
        text = np.datetime_as_string(column, unit="ms").astype(object)
        return [None if s == "NaT" else s + "Z" for s in text]
    if column.dtype == object:
        return [v.decode("latin-1") if isinstance(v, bytes) else v for v in column.tolist()]
    return list(column.tolist())
