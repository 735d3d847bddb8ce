"""``worker.avro.vector.Cursor``: the small-batch and batch reads agree, value for value and row for row."""

from __future__ import annotations

from unittest import mock

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.avro import vector
from worker.avro.vector import Cursor

Read = tuple[list[object], list[bool], list[int]]


def varint(value: int) -> bytes:
    z = ((value << 1) ^ (value >> 63)) & (2**64 - 1)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    return bytes([*out, z])


def cursor(payloads: list[bytes], *, padded: bool = False) -> Cursor:
    lens = np.array([len(p) for p in payloads], dtype=np.int64)
    ends = np.cumsum(lens)
    data = b"".join(payloads)
    return Cursor(data + vector.PADDING if padded else data, ends - lens, ends, padded=padded)


def strings(payloads: list[bytes], few: int) -> Read:
    with mock.patch.object(vector, "_FEW", few):
        cur = cursor(payloads)
        values = cur.string(slice(None))
    return values.tolist(), cur.bad.tolist(), cur.pos.tolist()


# Valid and invalid UTF-8, NUL-ended, empty, long, and lengths that overrun the row or are negative.
_STRING_PAYLOADS = st.one_of(
    st.text(max_size=20).map(lambda s: varint(len(s.encode())) + s.encode()),
    st.binary(max_size=20).map(lambda b: varint(len(b)) + b),
    st.binary(max_size=6),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_STRING_PAYLOADS, min_size=1, max_size=40))
def test_few_strings_read_like_the_batch_path(payloads: list[bytes]) -> None:
    few, batch = strings(payloads, few=10**6), strings(payloads, few=0)
    assert few[1:] == batch[1:]  # the same bad rows and positions
    assert [v for v, bad in zip(few[0], few[1], strict=True) if not bad] == [
        v for v, bad in zip(batch[0], batch[1], strict=True) if not bad
    ]


def test_string_reads_switch_path_at_few_rows() -> None:
    payloads = [varint(2) + b"ab", varint(1) + b"\xff", varint(3) + b"a\x00"]
    for n in (vector._FEW - 1, vector._FEW):
        cur = cursor(payloads * (n // 3 + 1))
        values = cur.string(slice(None))
        assert values.tolist()[:3] == ["ab", "", ""]
        assert cur.bad.tolist()[:3] == [False, True, True]


_LONGS = [0, -1, 1, 63, -64, 64, 300, -(2**31), 2**31 - 1, 2**62, -(2**63), 2**63 - 1]


@given(st.lists(st.sampled_from(_LONGS) | st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=40))
def test_long_reads_every_width(values: list[int]) -> None:
    cur = cursor([varint(v) for v in values], padded=True)
    assert cur.long(slice(None)).tolist() == values
    assert not cur.bad.any()
    assert (cur.pos == cur.end).all()


def test_long_marks_truncated_and_overlong_varints_bad() -> None:
    cur = cursor([varint(300)[:1], b"\x80" * 11, varint(2**40), b"\x02"])
    values = cur.long(slice(None))
    assert cur.bad.tolist() == [True, True, False, False]
    assert values[2:].tolist() == [2**40, 1]
    assert (cur.pos <= cur.end).all()


def test_long_on_some_rows_leaves_the_others() -> None:
    cur = cursor([varint(5), varint(-70000), varint(7), varint(2**50)])
    values = cur.long(np.array([1, 3], dtype=np.intp))
    assert values.tolist() == [-70000, 2**50]
    assert cur.pos.tolist() == [0, int(cur.end[1]), int(cur.end[1]), int(cur.end[3])]
