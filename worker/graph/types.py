"""Logical column types of the graph and how they map onto the numpy columns of worker/columns.py.

A graph column has a logical ``ColType``: a dtype from a small vocabulary, whether it may hold nulls, and a
width (``None`` for the usual 1-D column, ``n`` for a 2-D column of ``n`` values per row, as an ONNX
probability tensor gives). The physical numpy dtype and the null marker follow worker/columns.py:

==================  =====================  ==============================
logical dtype       never null             nullable
==================  =====================  ==============================
float64             float64                float64, NaN
int64               int64                  float64, NaN
bool                bool                   object: True / False / None
string, bytes       object                 object, None
datetime64[unit]    datetime64[unit]       datetime64[unit], NaT
==================  =====================  ==============================

Pure functions; called at compile time and, for ``null_mask``/``physical``, by node kernels per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

DType = Literal[
    "float64", "int64", "bool", "string", "bytes", "datetime64[ms]", "datetime64[us]", "datetime64[D]"
]
DTYPES: tuple[str, ...] = get_args(DType)
NUMERIC: frozenset[str] = frozenset({"float64", "int64", "bool"})
DATETIMES: frozenset[str] = frozenset({"datetime64[ms]", "datetime64[us]", "datetime64[D]"})

BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class ColType:
    """The logical type of one column: dtype, nullability, ``width`` for 2-D columns (else None), and the
    class ``labels`` of a probability column when the model declares them."""

    dtype: DType
    nullable: bool = False
    width: int | None = None
    labels: tuple[str, ...] | None = None  # class labels of a 2-D probability column, in column order

    def __str__(self) -> str:
        shape = f"[{self.width}]" if self.width is not None else ""
        return f"{self.dtype}{shape}{'?' if self.nullable else ''}"

    @property
    def numeric(self) -> bool:
        """Usable as a number per row without a null check on objects: float64, int64 or non-null bool."""
        return self.dtype in ("float64", "int64") or (self.dtype == "bool" and not self.nullable)


def physical(ct: ColType) -> np.dtype[Any]:
    """The numpy dtype a column of logical type ``ct`` has in a batch."""
    if ct.dtype == "float64" or (ct.dtype == "int64" and ct.nullable):
        return np.dtype(np.float64)
    if ct.dtype == "int64":
        return np.dtype(np.int64)
    if ct.dtype == "bool":
        return np.dtype(object) if ct.nullable else np.dtype(np.bool_)
    if ct.dtype in DATETIMES:
        return np.dtype(ct.dtype)
    return np.dtype(object)


def accepts(ct: ColType, column: npt.NDArray[Any]) -> bool:
    """Whether a batch column fits ``ct``: same physical dtype and dimensionality."""
    ndim = 1 if ct.width is None else 2
    return column.ndim == ndim and column.dtype == physical(ct)


def null_mask(column: npt.NDArray[Any], ct: ColType) -> BoolArray:
    """True where the row is null under the convention of ``ct`` (all False for a non-null type)."""
    if not ct.nullable:
        return np.zeros(len(column), dtype=np.bool_)
    if column.dtype.kind == "f":
        nan: BoolArray = np.isnan(column)
        return nan if column.ndim == 1 else np.asarray(nan.any(axis=1), dtype=np.bool_)
    if column.dtype.kind == "M":
        return np.asarray(np.isnat(column), dtype=np.bool_)
    return np.asarray(column == None, dtype=np.bool_)  # noqa: E711 - elementwise on an object array


def as_float(column: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """A numeric column (float, int, non-null bool) as float64, without a copy when it already is one."""
    return np.asarray(column, dtype=np.float64)
