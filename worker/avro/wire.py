"""Vectorised Avro binary encoding of whole columns: zigzag varints, IEEE floats, length-prefixed bytes.

Every function returns a ``Segment``: the encodings of all rows concatenated (``flat``) and each row's byte
count (``lens``, 0 for a row that writes nothing, e.g. the value of a null union branch). ``assemble`` lays
the segments of a record side by side per row and cuts one ``bytes`` per row. Used by ``worker.avro.encoder``.

A ``write`` mask of None means every row writes: the common case, which skips the masking work, since at
micro-batch sizes each numpy call on a tiny array costs about as much as the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]
_SHIFTS = (7 * np.arange(10)).astype(np.uint64)
_THRESHOLDS = (np.uint64(1) << _SHIFTS[1:]).astype(np.uint64)
_ONE_BYTE = 0x80
_COLUMNS = [np.arange(w) for w in range(17)]  # byte offsets within a fixed-width row, built once
_PACKED_BELOW = 64  # rows: below this, cutting by slices costs less than the fixed-stride ``S`` view
_JOINED_UPTO = 32  # rows: up to this, slicing each segment and joining per row beats scattering in numpy


@dataclass(frozen=True)
class Segment:
    """One field's bytes for every row: ``flat`` is the rows' encodings back to back, ``lens`` their sizes.

    ``lens`` is None when ``width`` is set: every row writes exactly ``width`` bytes (a cheaper scatter).
    """

    flat: U8
    lens: I64 | None
    width: int | None = None

    def row_lens(self, n: int) -> I64:
        if self.lens is None:
            return np.full(n, self.width, dtype=np.int64)
        return self.lens


def longs(values: I64, write: Mask | None = None) -> Segment:
    """Zigzag varints of int64 ``values``; rows where ``write`` is False write nothing."""
    v = values.astype(np.int64, copy=False)
    z = ((v << 1) ^ (v >> 63)).view(np.uint64)
    if write is not None and bool(write.all()):
        write = None
    if write is not None:
        z = np.where(write, z, np.uint64(0))
    top = int(z.max()) if len(z) else 0
    if top < _ONE_BYTE:  # every value fits in one byte
        if write is None:
            return Segment(z.astype(np.uint8), None, 1)
        return Segment(z[write].astype(np.uint8), write.astype(np.int64))
    width = int(1 + (top >= _THRESHOLDS).sum())
    groups = ((z[:, None] >> _SHIFTS[:width]) & np.uint64(0x7F)).astype(np.uint8)
    if write is None and int(z.min()) >= int(_THRESHOLDS[width - 2]):  # all rows take `width` bytes
        groups[:, :-1] |= 0x80
        return Segment(groups.ravel(), None, width)
    lens = 1 + (z[:, None] >= _THRESHOLDS[: width - 1]).sum(axis=1)
    cols = _COLUMNS[width]
    groups[cols < (lens - 1)[:, None]] |= 0x80
    if write is not None:
        lens = np.where(write, lens, 0)
    return Segment(groups[cols < lens[:, None]], lens.astype(np.int64))


def constant(byte: int, n: int, write: Mask | None = None) -> Segment:
    """The same single byte on every row (a union branch index below 64, a boolean)."""
    if write is None:
        return Segment(np.full(n, byte, dtype=np.uint8), None, 1)
    lens = write.astype(np.int64)
    return Segment(np.full(int(lens.sum()), byte, dtype=np.uint8), lens)


def fixed_width(values: npt.NDArray[Any], write: Mask | None = None) -> Segment:
    """Little-endian fixed-width numbers (``<f4``, ``<f8``) or uint8 bytes, one per row."""
    raw = np.ascontiguousarray(values).view(np.uint8).reshape(len(values), -1)
    width = raw.shape[1]
    if write is None or bool(write.all()):
        return Segment(raw.ravel(), None, width)
    return Segment(raw[write].ravel(), np.where(write, width, 0).astype(np.int64))


def blobs(chunks: Sequence[bytes], prefix: bool, write: Mask | None = None) -> list[Segment]:
    """Byte strings per row (``b""`` for rows writing nothing), after the length prefix if ``prefix``."""
    n = len(chunks)
    lens = np.fromiter(map(len, chunks), dtype=np.int64, count=n)
    body = Segment(np.frombuffer(b"".join(chunks), dtype=np.uint8), lens)
    return [longs(lens, write), body] if prefix else [body]


def concat(parts: Sequence[Segment], n: int) -> Segment:
    """Several segments of the same ``n`` rows, back to back within each row."""
    if len(parts) == 1:
        return parts[0]
    lens = np.sum([p.row_lens(n) for p in parts], axis=0).astype(np.int64)
    out = np.empty(int(lens.sum()), dtype=np.uint8)
    at = np.cumsum(lens) - lens
    for part in parts:
        _scatter(out, at, part)
        at = at + part.row_lens(n)
    return Segment(out, lens)


def assemble(header: bytes, parts: Sequence[Segment], n: int) -> list[bytes]:
    """One ``bytes`` per row: ``header`` then each segment's bytes for that row.

    Rows are laid out at a fixed stride (the longest row) so numpy can cut them into ``bytes`` in C through
    an ``S`` view, which drops trailing NULs: the few rows whose last byte is NUL are cut again by length.
    A small batch, or one with one very long row, uses a packed layout and cuts row by row instead.
    Up to ``_JOINED_UPTO`` rows, each segment is sliced per row and the rows joined in Python instead: a
    few ``bytes`` operations per row cost less than the dozen numpy calls of the scatter.
    """
    if n <= _JOINED_UPTO:
        chunks = [[header] * n, *(_row_chunks(p, n) for p in parts)]
        return list(map(b"".join, zip(*chunks, strict=True)))
    fixed = len(header)
    lens: I64 | None = None
    for part in parts:
        if part.lens is None:
            fixed += part.width or 0
        else:
            lens = part.lens.copy() if lens is None else lens + part.lens
    if lens is None:  # every row has the same length: no per-row sums needed
        total, stride = n * fixed, fixed
    else:
        lens += fixed
        total, stride = int(lens.sum()), int(lens.max())
    packed = n < _PACKED_BELOW or n * stride > 4 * total + 4096
    start = np.cumsum(lens) - lens if lens is not None and packed else np.arange(n, dtype=np.int64) * stride
    out = np.zeros(total if packed else n * stride, dtype=np.uint8)
    at = start
    if header:
        _scatter(out, at, Segment(np.tile(np.frombuffer(header, dtype=np.uint8), n), None, len(header)))
        at = at + len(header)
    for part in parts:
        _scatter(out, at, part)
        at = at + (part.width or 0 if part.lens is None else part.lens)
    if packed or stride == 0:
        data = out.tobytes()
        if lens is None:
            return [data[i : i + stride] for i in range(0, total, stride)] if stride else [b""] * n
        return list(map(data.__getitem__, map(slice, start.tolist(), at.tolist())))
    rows: list[bytes] = out.view(f"S{stride}").astype(object).tolist()
    if lens is None:
        nul = np.flatnonzero(out[at - 1] == 0)
    else:
        nul = np.flatnonzero((lens > 0) & (out[np.maximum(at - 1, 0)] == 0))
    for i in nul.tolist():
        rows[i] = out[start[i] : at[i]].tobytes()
    return rows


def _row_chunks(part: Segment, n: int) -> list[bytes]:
    data = part.flat.tobytes()
    if part.lens is None:
        w = part.width or 0
        return [data[i : i + w] for i in range(0, n * w, w)] if w else [b""] * n
    ends = np.cumsum(part.lens).tolist()
    return list(map(data.__getitem__, map(slice, [0, *ends[:-1]], ends)))


def _scatter(out: U8, at: I64, part: Segment) -> None:
    total = len(part.flat)
    if total == 0:
        return
    if part.width == 1:
        out[at] = part.flat
        return
    if part.lens is None and part.width is not None:
        offsets = _COLUMNS[part.width] if part.width < len(_COLUMNS) else np.arange(part.width)
        out[(at[:, None] + offsets).ravel()] = part.flat
        return
    lens = part.row_lens(len(at))
    src_start = np.cumsum(lens) - lens
    out[np.repeat(at - src_start, lens) + np.arange(total)] = part.flat
