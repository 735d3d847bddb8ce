"""Per-distinct-value work on object columns: factorize once, apply Python per distinct value, gather back.

This keeps Python bytecode off the per-row path for string columns: factorizing runs in C, the final gather is
numpy, and the callable runs once per distinct non-null value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from worker.graph.types import BoolArray


def factorize(column: npt.NDArray[Any], null: BoolArray | None) -> tuple[list[Any], npt.NDArray[np.intp]]:
    """Distinct non-null values (in order of first appearance) and, per row, the index of its value, or -1
    for a null row. ``null`` may be None for an object column, whose nulls are None. The per-row steps
    (``dict.fromkeys``, ``map`` of a dict lookup) run in C: about 3x faster than ``np.unique`` on an object
    column, which sorts with Python comparisons."""
    values = column.tolist()
    distinct = dict.fromkeys(values)
    distinct.pop(None, None)
    uniques = list(distinct)
    table: dict[Any, int] = dict(zip(uniques, range(len(uniques)), strict=True))
    table[None] = -1
    codes = np.fromiter(map(table.__getitem__, values), dtype=np.intp, count=len(values))
    if null is not None and null.any():  # NaN / NaT nulls of a non-object column
        codes[null] = -1
    return uniques, codes


def remap(
    column: npt.NDArray[Any],
    null: BoolArray | None,
    fn: Callable[[Any], tuple[Any, bool]],
    dtype: npt.DTypeLike,
    null_value: Any,
) -> tuple[npt.NDArray[Any], BoolArray]:
    """Apply ``fn`` (value -> (result, ok)) per distinct non-null value; nulls get ``null_value``. ``null``
    may be None for an object column, whose nulls are None.

    Returns the mapped column and a mask of rows whose value ``fn`` refused (ok False).
    """
    uniques, codes = factorize(column, null)
    results = [fn(value) for value in uniques]
    values = np.empty(len(results) + 1, dtype=dtype)
    for i, (value, _) in enumerate(results):
        values[i] = value
    values[-1] = null_value  # code -1 (null) gathers the last slot
    if all(good for _, good in results):  # the usual case: skip a gather
        return values[codes], np.zeros(len(codes), dtype=np.bool_)
    ok = np.array([good for _, good in results] + [True], dtype=np.bool_)
    return values[codes], ~ok[codes]


def remap_all(
    column: npt.NDArray[Any], fn: Callable[[Any], Any], dtype: npt.DTypeLike, null_value: Any
) -> npt.NDArray[Any]:
    """``remap`` for an object column (nulls are None) and an ``fn`` that takes every value: a dict from each
    distinct value to its result, and one ``fromiter`` over the rows, without codes nor a gather."""
    values = column.tolist()
    distinct = dict.fromkeys(values)
    distinct.pop(None, None)
    results = dict(zip(distinct, map(fn, distinct), strict=True))
    results[None] = null_value
    return np.fromiter(map(results.__getitem__, values), dtype=dtype, count=len(values))
