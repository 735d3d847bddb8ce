"""Columnar batches: the one data shape every stage passes on.

A ``Batch`` maps a column name to a 1-D numpy array; all arrays of a batch have the same length, one row per
event. Nested Avro records are flattened to dotted names (``device.os``), as XDM events are nested.

Nulls, one convention per dtype, shared by the Avro decoder, the graph and the encoder:

====================================  ==========================  ==================================
Avro type                             column when never null      column when nullable (union with null)
====================================  ==========================  ==================================
int, long                             int64                       float64, NaN for null
float, double                         float64                     float64, NaN for null
boolean                               bool                        object: True / False / None
string, enum, uuid                    object of str               object, None for null
bytes, fixed                          object of bytes             object, None for null
timestamp-millis / timestamp-micros   datetime64[ms] / [us]       same, NaT for null
date                                  datetime64[D]               same, NaT for null
decimal                               object of decimal.Decimal   object, None for null
array, map                            object of list / dict       object, None for null
====================================  ==========================  ==================================

Nullable longs become float64 so that numeric features stay vectorisable; integers beyond 2**53 lose
precision there, which is why identifiers belong in strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from worker.errors import RecordError

Column = npt.NDArray[Any]
Batch = dict[str, Column]

E = TypeVar("E", bound=RecordError)


@dataclass(frozen=True)
class StageResult(Generic[E]):
    """What a stage returns for one batch: the rows that went through and the rows it rejected.

    ``rows`` holds, in order, the indices into the stage's input of the rows present in ``columns``;
    ``errors`` maps the index of each rejected input row to its error. Every input row is in exactly one of
    the two, so a stage can never drop an event silently.
    """

    columns: Batch
    rows: npt.NDArray[np.int64]
    errors: dict[int, E] = field(default_factory=dict)


def batch_len(batch: Batch) -> int:
    """The number of rows in ``batch`` (0 for a batch without columns)."""
    for column in batch.values():
        return len(column)
    return 0


def take(batch: Batch, rows: npt.NDArray[np.int64]) -> Batch:
    """The sub-batch of ``rows``, in that order."""
    return {name: column[rows] for name, column in batch.items()}
