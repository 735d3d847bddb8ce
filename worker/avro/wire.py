"""Vectorised Avro binary encoding of whole columns: zigzag varints, IEEE floats, length-prefixed bytes.

Every function returns a ``Segment``: the encodings of all rows concatenated (``flat``) and each row's byte
count (``lens``, 0 for a row that writes nothing, e.g. the value of a null union branch). ``assemble`` lays
the segments of a record side by side per row and cuts one ``bytes`` per row. Used by ``worker.avro.encoder``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
_SHIFTS = (7 * np.arange(10)).astype(np.uint64)
_THRESHOLDS = (np.uint64(1) << _SHIFTS[1:]).astype(np.uint64)


@dataclass(frozen=True)
class Segment:
    """One field's bytes for every row: ``flat`` is the rows' encodings back to back, ``lens`` their sizes."""

    flat: U8
    lens: I64
    width: int | None = None  # set when every row writes exactly this many bytes: a cheaper scatter


def longs(values: I64, write: npt.NDArray[np.bool_] | None = None) -> Segment:
    """Zigzag varints of int64 ``values``; rows where ``write`` is False write nothing."""
    v = values.astype(np.int64, copy=False)
    z = ((v << 1) ^ (v >> 63)).view(np.uint64)
    if write is not None and bool(write.all()):
        write = None
    if write is not None:
        z = np.where(write, z, np.uint64(0))
    if not len(z) or int(z.max()) < 0x80:  # every value fits in one byte
        if write is None:
            return Segment(z.astype(np.uint8), np.ones(len(z), dtype=np.int64), 1)
        return Segment(z[write].astype(np.uint8), write.astype(np.int64))
    width = int(1 + (z.max() >= _THRESHOLDS).sum())
    groups = ((z[:, None] >> _SHIFTS[:width]) & np.uint64(0x7F)).astype(np.uint8)
    if write is None and int(z.min()) >= int(_THRESHOLDS[width - 2]):  # all rows take `width` bytes
        groups[:, :-1] |= 0x80
        return Segment(groups.ravel(), np.full(len(z), width, dtype=np.int64), width)
    lens = 1 + (z[:, None] >= _THRESHOLDS[: width - 1]).sum(axis=1)
    cols = np.arange(width)
    groups[cols < (lens - 1)[:, None]] |= 0x80
    if write is not None:
        lens = np.where(write, lens, 0)
    return Segment(groups[cols < lens[:, None]], lens.astype(np.int64))


def constant(byte: int, n: int, write: npt.NDArray[np.bool_] | None = None) -> Segment:
    """The same single byte on every row (a union branch index below 64, a boolean)."""
    lens = np.ones(n, dtype=np.int64) if write is None else write.astype(np.int64)
    return Segment(np.full(int(lens.sum()), byte, dtype=np.uint8), lens)


def fixed_width(values: npt.NDArray[Any], write: npt.NDArray[np.bool_] | None = None) -> Segment:
    """Little-endian fixed-width numbers (``<f4``, ``<f8``) or uint8 bytes, one per row."""
    raw = np.ascontiguousarray(values).view(np.uint8).reshape(len(values), -1)
    width = raw.shape[1]
    if write is None or bool(write.all()):
        return Segment(raw.ravel(), np.full(len(values), width, dtype=np.int64), width)
    return Segment(raw[write].ravel(), np.where(write, width, 0).astype(np.int64))


def blobs(chunks: Sequence[bytes], prefix: bool, write: npt.NDArray[np.bool_] | None = None) -> list[Segment]:
    """Byte strings per row (``b""`` for rows writing nothing), after the length prefix if ``prefix``."""
    n = len(chunks)
    lens = np.fromiter(map(len, chunks), dtype=np.int64, count=n)
    body = Segment(np.frombuffer(b"".join(chunks), dtype=np.uint8), lens)
    return [longs(lens, write), body] if prefix else [body]


def concat(parts: Sequence[Segment]) -> Segment:
    """Several segments of the same rows, back to back within each row."""
    if len(parts) == 1:
        return parts[0]
    lens = np.sum([p.lens for p in parts], axis=0).astype(np.int64)
    out = np.empty(int(lens.sum()), dtype=np.uint8)
    at = np.cumsum(lens) - lens
    for part in parts:
        _scatter(out, at, part)
        at = at + part.lens
    return Segment(out, lens)


def assemble(header: bytes, parts: Sequence[Segment], n: int) -> list[bytes]:
    """One ``bytes`` per row: ``header`` then each segment's bytes for that row.

    Rows are laid out at a fixed stride (the longest row) so numpy can cut them into ``bytes`` in C through
    an ``S`` view, which drops trailing NULs: the few rows whose last byte is NUL are cut again by length.
    A batch with one very long row uses a packed layout and cuts row by row instead.
    """
    lens = np.full(n, len(header), dtype=np.int64)
    for part in parts:
        lens += part.lens
    total = int(lens.sum())
    stride = int(lens.max()) if n else 0
    packed = n * stride > 4 * total + 4096
    at = np.cumsum(lens) - lens if packed else np.arange(n, dtype=np.int64) * stride
    start = at
    out = np.zeros(total if packed else n * stride, dtype=np.uint8)
    if header:
        _scatter(out, at, Segment(np.tile(np.frombuffer(header, dtype=np.uint8), n), lens, len(header)))
        at = at + len(header)
    for part in parts:
        _scatter(out, at, part)
        at = at + part.lens
    if packed or stride == 0:
        data = out.tobytes()
        return list(map(data.__getitem__, map(slice, start.tolist(), at.tolist())))
    rows: list[bytes] = out.view(f"S{stride}").astype(object).tolist()
    for i in np.flatnonzero((lens > 0) & (out[np.maximum(at - 1, 0)] == 0)).tolist():
        rows[i] = out[start[i] : at[i]].tobytes()
    return rows


def _scatter(out: U8, at: I64, part: Segment) -> None:
    total = len(part.flat)
    if total == 0:
        return
    if part.width == 1:
        out[at] = part.flat
        return
    if part.width is not None:
        out[(at[:, None] + np.arange(part.width)).ravel()] = part.flat
        return
    src_start = np.cumsum(part.lens) - part.lens
    out[np.repeat(at - src_start, part.lens) + np.arange(total)] = part.flat
