"""ScoreEncoder: framing, per-row errors, and the column dtypes the graph may hand over."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import fastavro
import numpy as np

from worker.avro.encoder import ScoreEncoder
from worker.avro.schema import AvroSchema

SCORE = AvroSchema.load(Path(__file__).parents[2] / "schemas" / "car_insurance_score.avsc")


def fastavro_bytes(record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, SCORE.parsed, record)
    return buf.getvalue()


def columns(n: int) -> dict[str, np.ndarray]:
    return {
        "ecid": np.array([f"v{i}" for i in range(n)], dtype=object),
        "score": np.linspace(0, 1, n),
        "label": np.arange(n) % 2,
        "timestamp": (1_700_000_000_000 + np.arange(n)).astype("datetime64[ms]"),
    }


def test_confluent_framing_prefixes_magic_byte_and_schema_id() -> None:
    encoded = ScoreEncoder(SCORE, schema_id=258).encode(columns(3))

    assert [v[:5] for v in encoded.values] == [b"\x00\x00\x00\x01\x02"] * 3
    expected = [
        fastavro_bytes({"ecid": f"v{i}", "score": s, "label": i % 2, "timestamp": 1_700_000_000_000 + i})
        for i, s in enumerate(np.linspace(0, 1, 3).tolist())
    ]
    assert [v[5:] for v in encoded.values] == expected


def test_a_row_that_does_not_fit_is_an_error_for_that_row_only() -> None:
    batch = columns(5)
    batch["ecid"][1] = None  # null into a non-null string
    batch["label"] = np.array([0, 1, 2**40, 1, 0.5])  # out of int range, not an integer
    batch["timestamp"][3] = np.datetime64("NaT")

    encoded = ScoreEncoder(SCORE, schema_id=7).encode(
        batch, topic="scores", partitions=[0] * 5, offsets=[10, 11, 12, 13, 14]
    )

    assert encoded.rows.tolist() == [0]
    assert sorted(encoded.errors) == [1, 2, 3, 4]
    assert "ecid" in encoded.errors[1].reason and "null" in encoded.errors[1].reason
    assert "label" in encoded.errors[2].reason and "range" in encoded.errors[2].reason
    assert "timestamp" in encoded.errors[3].reason
    assert "not an integer" in encoded.errors[4].reason
    assert (encoded.errors[2].stage, encoded.errors[2].offset, encoded.errors[2].schema_id) == (
        "encode",
        12,
        7,
    )


def test_float_and_bool_label_columns_encode_like_ints() -> None:
    batch = columns(4)
    plain = ScoreEncoder(SCORE).encode(batch).values
    batch["label"] = batch["label"].astype(np.float32)
    as_float = ScoreEncoder(SCORE).encode(batch).values
    batch["label"] = batch["label"].astype(bool)
    as_bool = ScoreEncoder(SCORE).encode(batch).values

    assert plain == as_float == as_bool


def test_empty_batch() -> None:
    encoded = ScoreEncoder(SCORE).encode({name: column[:0] for name, column in columns(1).items()})
    assert encoded.values == [] and encoded.errors == {}


def test_small_and_large_batches_cut_rows_alike() -> None:
    """Up to 32 rows are joined per row in Python, more are scattered in numpy: same bytes and errors."""
    for n in (1, 2, 31, 32, 33, 63, 64, 65, 200):
        batch = columns(n)
        batch["ecid"][0] = "é" * (n % 7)  # a multi-byte string, and an empty one for some sizes
        batch["ecid"][n // 2] = None
        batch["score"][-1] = 0.0  # a record ending in NUL bytes
        encoded = ScoreEncoder(SCORE, schema_id=3).encode(batch)

        good = [i for i in range(n) if i != n // 2]
        assert encoded.rows.tolist() == good
        assert list(encoded.errors) == [n // 2]
        expected = [
            b"\x00\x00\x00\x00\x03"
            + fastavro_bytes(
                {
                    "ecid": batch["ecid"][i],
                    "score": float(batch["score"][i]),
                    "label": i % 2,
                    "timestamp": 1_700_000_000_000 + i,
                }
            )
            for i in good
        ]
        assert encoded.values == expected, n
