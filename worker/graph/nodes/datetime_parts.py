"""Calendar parts (hour, day of week, ...) of a timestamp column, computed with numpy datetime arithmetic."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from worker.columns import Batch
from worker.graph.nodes.base import ColumnName, NodeBase
from worker.graph.plan import Applied, CompileContext, NodeCompiled
from worker.graph.types import DATETIMES, ColType

Part = Literal["year", "month", "day", "hour", "minute", "second", "dayofweek", "dayofyear"]


class DatetimeParts(NodeBase):
    """Columns ``{prefix}_{part}`` (prefix defaults to the column) for each of ``parts`` of a datetime column,
    in UTC. ``dayofweek`` is 0 for Monday, as pandas. int64, or float64 with NaN when the input is
    nullable."""

    summary: ClassVar[str] = "calendar parts of a timestamp column"
    kind: Literal["datetime_parts"] = "datetime_parts"
    column: ColumnName
    parts: tuple[Part, ...] = Field(min_length=1)
    prefix: str | None = None

    def compile(self, view: Mapping[str, ColType], ctx: CompileContext) -> NodeCompiled:
        ct = self.need(view, self.column)
        if ct.dtype not in DATETIMES:
            raise self.error(f"column {self.column!r} is {ct}, datetime_parts needs a datetime column")
        prefix, source, parts = self.prefix or self.column, self.column, self.parts
        out_type = ColType("int64", ct.nullable)
        functions = tuple((f"{prefix}_{part}", _part_of(part)) for part in parts)

        def kernel(batch: Batch) -> Applied:
            col = batch[source]
            values = {name: fn(col) for name, fn in functions}
            if ct.nullable:
                nat = np.isnat(col)
                values = {name: np.where(nat, np.nan, v) for name, v in values.items()}
            return Applied(values)

        return NodeCompiled((source,), {f"{prefix}_{p}": out_type for p in parts}, kernel)


_UNIT = {"year": "Y", "month": "M", "day": "D", "hour": "h", "minute": "m", "second": "s"}
_OUTER = {"year": None, "month": "Y", "day": "M", "hour": "D", "minute": "h", "second": "m"}
_DAY = np.dtype("datetime64[D]")


def _part_of(part: Part) -> Callable[[npt.NDArray[Any]], npt.NDArray[np.int64]]:
    """The function computing ``part`` of a datetime column, its dtypes resolved once at compile."""
    if part == "dayofweek":  # 1970-01-01 was a Thursday (3 with Monday = 0)
        return lambda col: np.asarray((col.astype(_DAY).astype(np.int64) + 3) % 7, dtype=np.int64)
    if part == "dayofyear":
        year = np.dtype("datetime64[Y]")

        def dayofyear(col: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
            days = col.astype(_DAY)
            return np.asarray((days - days.astype(year)).astype(np.int64) + 1, dtype=np.int64)

        return dayofyear
    unit, outer = np.dtype(f"datetime64[{_UNIT[part]}]"), _OUTER[part]
    if outer is None:
        return lambda col: np.asarray(col.astype(unit).astype(np.int64) + 1970, dtype=np.int64)
    within, base = np.dtype(f"datetime64[{outer}]"), 1 if part in ("month", "day") else 0
    return lambda col: np.asarray(
        (col.astype(unit) - col.astype(within)).astype(np.int64) + base, dtype=np.int64
    )
