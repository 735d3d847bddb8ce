"""Hostile payloads (tests/fixtures/hostile, from tests/fixtures/make_hostile.py) are record errors, quickly.

Each payload sits in a batch between two good records; it must come back as a DecodeError, its neighbours
must decode, and the call must finish well within a second in bounded memory (a guard against hangs and
allocation on forged lengths, not a performance assertion).
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest

from worker.avro.decoder import BatchDecoder
from worker.avro.guards import Limits
from worker.avro.schema import AvroSchema

ROOT = Path(__file__).parents[2]
CORPUS = sorted((ROOT / "tests" / "fixtures" / "hostile").glob("*.bin"))
GOOD = {
    "flat": b"\x04ok\x02\x0e\x00\x00\x00\x00\x00\x00\xf0\x3f",
    "nested": b"\x02a\x00\x00\x00",
}
TIME_BOUND_S = 1.0
MEMORY_BOUND = 64 << 20


def schema(kind: str) -> AvroSchema:
    return AvroSchema.load(ROOT / "schemas" / f"test_hostile_{kind}.avsc")


def decode_around(
    kind: str, payload: bytes, fast: bool, limits: Limits | None = None
) -> tuple[object, float, int]:
    s = schema(kind)
    decoder = BatchDecoder(s, writer=s, fast_path=fast, limits=limits)
    values = [GOOD[kind], payload, GOOD[kind]]
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = decoder.decode(values, topic="t", partitions=[0, 0, 0], offsets=[0, 1, 2])
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, elapsed, peak


def test_the_corpus_is_committed() -> None:
    assert len(CORPUS) >= 12


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_hostile_payload_is_a_record_error(path: Path, fast: bool) -> None:
    kind = path.stem.split("__")[0]
    payload = path.read_bytes()

    result, elapsed, peak = decode_around(kind, payload, fast)

    assert result.rows.tolist() == [0, 2]  # type: ignore[attr-defined]
    error = result.errors[1]  # type: ignore[attr-defined]
    assert error.value == payload and error.offset == 1 and error.reason
    assert elapsed < TIME_BOUND_S, f"{path.stem}: {elapsed:.3f}s"
    assert peak < MEMORY_BOUND + 2 * len(payload), f"{path.stem}: peak {peak} bytes"


@pytest.mark.parametrize("fast", [True, False])
def test_a_50_mb_value_is_refused_before_decoding(fast: bool) -> None:
    payload = b"\x80\x80\x80\x32" + b"x" * (50 << 20)  # a 50 MB string field

    result, elapsed, _ = decode_around("flat", payload, fast)

    assert result.rows.tolist() == [0, 2]  # type: ignore[attr-defined]
    assert "max_message_bytes" in result.errors[1].reason  # type: ignore[attr-defined]
    assert elapsed < TIME_BOUND_S


def test_nesting_is_bounded_by_max_depth() -> None:
    level = b"\x00\x00\x00\x02"
    payload = level * 40 + b"\x00\x00\x00\x00"

    ok, _, _ = decode_around("nested", payload, fast=False, limits=Limits(max_depth=200))
    refused, _, _ = decode_around("nested", payload, fast=False, limits=Limits(max_depth=20))

    assert ok.rows.tolist() == [0, 1, 2]  # type: ignore[attr-defined]
    assert "max_depth" in refused.errors[1].reason  # type: ignore[attr-defined]
