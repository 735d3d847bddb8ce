"""Per-distinct-value work on object columns: factorize once, apply Python per distinct value, gather back.

This keeps Python off the per-row path for string columns: ``np.unique`` and the final gather are numpy; the
callable runs once per distinct non-null value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from worker.graph.types import BoolArray


def factorize(column: npt.NDArray[Any], null: BoolArray) -> tuple[npt.NDArray[Any], npt.NDArray[np.intp]]:
    """Distinct non-null values (sorted) and, per row, the index of its value, or -1 for a null row."""
    codes = np.full(len(column), -1, dtype=np.intp)
    present = ~null
    if not present.any():
        return np.empty(0, dtype=column.dtype), codes
    uniques, inverse = np.unique(column[present], return_inverse=True)
    codes[present] = inverse
    return uniques, codes


def remap(
    column: npt.NDArray[Any],
    null: BoolArray,
    fn: Callable[[Any], tuple[Any, bool]],
    dtype: npt.DTypeLike,
    null_value: Any,
) -> tuple[npt.NDArray[Any], BoolArray]:
    """Apply ``fn`` (value -> (result, ok)) per distinct non-null value; nulls get ``null_value``.

    Returns the mapped column and a mask of rows whose value ``fn`` refused (ok False).
    """
    uniques, codes = factorize(column, null)
    results = [fn(value) for value in uniques.tolist()]
    values = np.empty(len(results) + 1, dtype=dtype)
    for i, (value, _) in enumerate(results):
        values[i] = value
    values[-1] = null_value  # code -1 (null) gathers the last slot
    ok = np.array([good for _, good in results] + [True], dtype=np.bool_)
    return values[codes], ~ok[codes]
