"""Vectorised reading of Avro primitives at many positions of one buffer at once.

A ``Cursor`` holds the payloads of a batch concatenated into one buffer, one read position and one end per
row, and a ``bad`` mask. Every read takes the rows to advance and returns one value per row; a row whose read
would cross its own end is marked bad (its value is garbage, its position is pinned to its end) and the
caller drops it. Nothing here allocates more than a small multiple of the batch's own bytes, whatever a length
prefix claims. Used by ``worker.avro.fastpath``; not thread-safe (one cursor per decode call).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

Rows = npt.NDArray[np.intp] | slice
"""The rows a read advances: an index array, or ``slice(None)`` for all rows (cheaper than fancy indexing)."""
I64 = npt.NDArray[np.int64]
PAD = 256  # lets gathers of short values run past the last row without a bounds clip
PADDING = bytes(PAD)
_AR10 = np.arange(10)
_POWERS = np.uint64(1) << (7 * np.arange(10)).astype(np.uint64)  # 2**(7k): a varint's byte weights
_ZERO = np.uint64(0)
_AR8 = np.arange(8)
# Byte masks keeping the first k bytes of 16, as two little-endian uint64 words, for k = 0..15.
_KEEP = np.where(np.arange(16)[None, :] < np.arange(16)[:, None], 0xFF, 0).astype(np.uint8).view(np.uint64)
# One-byte varints (< 0x80) decoded by lookup: their zigzag value, and as a length (-1 when negative,
# -1 too for bytes >= 0x80, which do not end a varint).
_ZIGZAG1 = (np.arange(256, dtype=np.int64) >> 1) ^ -(np.arange(256, dtype=np.int64) & 1)
_LENGTH1 = np.where((np.arange(256) < 0x80) & (np.arange(256) % 2 == 0), np.arange(256) >> 1, -1).astype(
    np.int64
)
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier (golden ratio) to mix the first word in
_SHORT = 16  # strings shorter than this are decoded once per distinct value
_FEW = 128  # below this many rows, decoding every string costs less than finding the distinct ones


def subset(rows: Rows, mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.intp]:
    """The rows selected by ``mask`` (a mask over ``rows``), as an index array."""
    return np.flatnonzero(mask) if isinstance(rows, slice) else rows[mask]


def count(rows: Rows, total: int) -> int:
    """How many rows ``rows`` selects out of ``total``."""
    return total if isinstance(rows, slice) else len(rows)


class Cursor:
    """Read positions over ``data`` (the batch's payloads joined); ``pos``/``end`` are absolute offsets."""

    def __init__(
        self, data: bytes, pos: npt.NDArray[np.int64], end: npt.NDArray[np.int64], *, padded: bool = False
    ) -> None:
        """``padded``: ``data`` already ends with ``PAD`` zero bytes past every row (saves a copy)."""
        self.data = data
        self.buf = np.frombuffer(data if padded else data + PADDING, dtype=np.uint8)
        self.pos = pos.astype(np.int64, copy=True)
        self.end = end.astype(np.int64, copy=False)
        self.bad = np.zeros(len(pos), dtype=np.bool_)
        # Row views of the next 8 / 16 bytes at every offset: gathering rows of them copies bytes only,
        # without building an index matrix. Built directly: sliding_window_view costs ~10 us a call.
        size = len(self.buf)
        self.win8: npt.NDArray[np.uint8] = np.ndarray((size - 7, 8), np.uint8, self.buf, 0, (1, 1))
        self.win16: npt.NDArray[np.uint8] = np.ndarray((size - 15, 16), np.uint8, self.buf, 0, (1, 1))

    def fail(self, rows: Rows, mask: npt.NDArray[np.bool_]) -> None:
        """Mark ``rows[mask]`` bad and pin their positions to their ends."""
        if mask.any():
            hit = subset(rows, mask)
            self.bad[hit] = True
            self.pos[hit] = self.end[hit]

    def long(self, rows: Rows) -> npt.NDArray[np.int64]:
        """Zigzag varints (Avro int and long) at ``rows``: one pass per byte position, over open rows."""
        p = self.pos[rows]  # a view when rows is a slice: copied below before ``pos`` changes
        first = self.buf[p]
        if int(first.max(initial=0)) < 0x80:  # every value fits in one byte: the common case for flags
            new = p + 1
            self.pos[rows] = new
            self.fail(rows, new > self.end[rows])
            small: npt.NDArray[np.int64] = _ZIGZAG1[first]
            return small
        win = self.win16[p, :10]  # an Avro long takes at most 10 bytes
        stop = win < 0x80
        last = stop.argmax(axis=1)  # index of each varint's final byte (0 when there is none)
        new = last + p + 1  # before any ``fail``: ``p`` may be a view of ``pos``
        ended = np.asarray(stop.any(axis=1), dtype=np.bool_)
        if not ended.all():
            self.fail(rows, ~ended)  # more than 10 bytes: not an Avro long
        width = int(last.max()) + 1
        groups = win[:, :width] & 0x7F
        groups *= _AR10[:width] <= last[:, None]  # drop the bytes past each varint
        z = groups @ _POWERS[:width]  # the 7-bit groups in place, wrapping at 64 bits like a shift
        self.pos[rows] = new
        self.fail(rows, new > self.end[rows])
        out: npt.NDArray[np.int64] = ((z >> np.uint64(1)) ^ (_ZERO - (z & np.uint64(1)))).view(np.int64)
        return out

    def fixed_width(self, rows: Rows, width: int) -> npt.NDArray[np.uint8]:
        """``width`` raw bytes per row as an (n, width) array."""
        p = self.pos[rows]  # a view when rows is a slice: gathered before ``pos`` changes
        out = self.win8[p, :width] if width < 8 else self.win8[p]
        new = p + width
        self.pos[rows] = new
        self.fail(rows, new > self.end[rows])
        return out

    def double(self, rows: Rows) -> npt.NDArray[np.float64]:
        return self.fixed_width(rows, 8).view("<f8").ravel()

    def float(self, rows: Rows) -> npt.NDArray[np.float64]:
        return self.fixed_width(rows, 4).view("<f4").ravel().astype(np.float64)

    def boolean(self, rows: Rows) -> npt.NDArray[np.bool_]:
        out: npt.NDArray[np.bool_] = self.fixed_width(rows, 1).ravel() != 0  # non-zero is true, as fastavro
        return out

    def bytes(self, rows: Rows, size: int | None = None) -> npt.NDArray[Any]:
        """Length-prefixed bytes (``size`` None) or fixed-size bytes at ``rows``, as an object array."""
        return self._slices(*self._span(rows, size))

    def _span(
        self, rows: Rows, size: int | None = None
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Read a length (or take ``size``), check it against each row's end, advance: (starts, lengths)."""
        if size is None:
            p = self.pos[rows]  # a view when rows is a slice: not used after ``pos`` changes
            n = _LENGTH1[self.buf[p]]
            if int(n.min(initial=0)) >= 0:  # short, non-negative lengths: one byte each
                start = p + 1
                stop = start + n
                over = stop > self.end[rows]
                if over.any():
                    n[over], stop[over] = 0, start[over]
                    self.fail(rows, over)
                    self.pos[rows] = np.where(over, self.pos[rows], stop)
                else:
                    self.pos[rows] = stop
                return start, n
            n = self.long(rows)
            p = self.pos[rows].copy()
            over = (n < 0) | (n > self.end[rows] - p)
            n[over] = 0
            self.fail(rows, over)
        else:
            p = self.pos[rows].copy()
            n = np.full(len(p), size, dtype=np.int64)
            self.fail(rows, n > self.end[rows] - p)
            n[self.bad[rows]] = 0
        p = self.pos[rows].copy()
        self.pos[rows] = p + n
        return p, n

    def _slices(self, starts: npt.NDArray[np.int64], lens: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
        """``data[start:start+len]`` per row as bytes objects.

        Short values are gathered into one fixed-width ``S`` array and converted in C; the rows that array
        would alter (a value ending in NUL, which ``S`` strips) and batches with long values are sliced one
        by one. Either way the memory used is bounded by the batch's own bytes.
        """
        width = int(lens.max()) if lens.size else 0
        if width == 0:
            return np.full(len(lens), b"", dtype=object)
        if width * len(lens) > 4 * int(lens.sum()) + 4096:
            out = np.empty(len(lens), dtype=object)
            out[:] = list(map(self.data.__getitem__, map(slice, starts.tolist(), (starts + lens).tolist())))
            return out
        cols = np.arange(width)
        index = starts[:, None] + cols
        if int(starts.max()) + width > len(self.buf):
            np.minimum(index, len(self.buf) - 1, out=index)  # cells past a row's value are masked below
        matrix = self.buf[index]
        matrix[cols >= lens[:, None]] = 0
        out = np.ascontiguousarray(matrix).view(f"S{width}").ravel().astype(object)
        nul_end = np.flatnonzero((lens > 0) & (self.buf[starts + lens - 1] == 0))
        for i in nul_end.tolist():
            out[i] = self.data[starts[i] : starts[i] + lens[i]]
        return out

    def string(self, rows: Rows) -> npt.NDArray[Any]:
        """UTF-8 strings at ``rows``; a row that is not valid UTF-8 is marked bad."""
        p, n = self._span(rows)
        if len(n) < _FEW:
            return self._few_strings(rows, p, n)
        if int(n.max()) < _SHORT:
            return self._short_strings(rows, p, n)
        raw = self._slices(p, n)
        try:
            return np.fromiter(map(bytes.decode, raw), dtype=object, count=len(raw))
        except UnicodeDecodeError:
            return self._decode_each(rows, raw)

    def _few_strings(self, rows: Rows, p: I64, n: I64) -> npt.NDArray[Any]:
        """Strings of a small batch, sliced and decoded one by one (in C, without a Python frame per row)."""
        out = np.empty(len(p), dtype=object)
        try:
            out[:] = list(
                map(bytes.decode, map(self.data.__getitem__, map(slice, p.tolist(), (p + n).tolist())))
            )
        except UnicodeDecodeError:
            return self._decode_each(rows, self._slices(p, n))
        return out

    def _short_strings(self, rows: Rows, p: I64, n: I64) -> npt.NDArray[Any]:
        """Strings under 16 bytes (codes, countries, categories), decoded once per distinct value.

        Each value, zero-padded, with its length in the last byte, is exactly two uint64 words. Values under
        8 bytes are grouped by that word itself; longer ones by a hash of the words, then every row is
        checked against its group's representative, so a hash collision can only cost time (the rows are
        decoded one by one), never mix values up.
        """
        words = self.win16[p].view(np.uint64)  # a copy: (n, 2)
        words &= _KEEP[n]
        length = n.astype(np.uint64) << np.uint64(56)
        exact = int(n.max()) < 8  # value and length fit one word: the key is the value itself
        if exact:
            keys = words[:, 0] | length
        else:
            words[:, 1] |= length
            keys = (words[:, 0] * _MIX) ^ words[:, 1]
        distinct = np.unique(keys)  # a sort; the inverse by binary search is cheaper than unique's own
        inverse = np.searchsorted(distinct, keys)
        rep = np.empty(len(distinct), dtype=np.intp)
        rep[inverse] = np.arange(len(p))
        if not exact and not bool((words == words[rep[inverse]]).all()):  # a hash collision
            return self._decode_each(rows, self._slices(p, n))
        starts, stops = p[rep].tolist(), (p + n)[rep].tolist()
        texts = np.empty(len(starts), dtype=object)
        try:  # decoded in C: no Python frame per distinct value (ids are distinct per row)
            texts[:] = list(map(bytes.decode, map(self.data.__getitem__, map(slice, starts, stops))))
        except UnicodeDecodeError:
            broken = np.zeros(len(starts), dtype=np.bool_)
            for i, (a, b) in enumerate(zip(starts, stops, strict=True)):
                try:
                    texts[i] = self.data[a:b].decode()
                except UnicodeDecodeError:
                    texts[i], broken[i] = "", True
            self.fail(rows, broken[inverse])
        out: npt.NDArray[Any] = texts[inverse]
        return out

    def _decode_each(self, rows: Rows, raw: npt.NDArray[Any]) -> npt.NDArray[Any]:
        out = np.empty(len(raw), dtype=object)
        broken = np.zeros(len(raw), dtype=np.bool_)
        for i, b in enumerate(raw):
            try:
                out[i] = b.decode()
            except UnicodeDecodeError:
                out[i], broken[i] = "", True
        self.fail(rows, broken)
        return out
