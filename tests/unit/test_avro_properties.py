"""Property tests: the batch decoder agrees with fastavro's reader, the encoder with fastavro's writer."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_avro_strategies import record_schemas, values

from worker.avro.convert import columns_from_records
from worker.avro.decoder import BatchDecoder
from worker.avro.encoder import ScoreEncoder
from worker.avro.schema import AvroSchema, layout
from worker.columns import Batch

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def schema_and_records(draw: Any) -> tuple[AvroSchema, list[dict[str, Any]]]:
    raw = draw(record_schemas())
    records = draw(st.lists(values(raw), min_size=1, max_size=8))
    return AvroSchema.parse(raw), records


def write(schema: AvroSchema, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema.parsed, record)
    return buf.getvalue()


def assert_same_columns(got: Batch, want: Batch) -> None:
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@SETTINGS
@given(schema_and_records(), st.booleans())
def test_batch_decode_equals_fastavro_reader(
    case: tuple[AvroSchema, list[dict[str, Any]]], fast: bool
) -> None:
    schema, records = case
    bodies = [write(schema, r) for r in records]
    expected_records = [fastavro.schemaless_reader(io.BytesIO(b), schema.parsed, None) for b in bodies]
    expected = columns_from_records(layout(schema), expected_records)  # type: ignore[arg-type]

    n = len(bodies)
    result = BatchDecoder(schema, writer=schema, fast_path=fast).decode(
        bodies, topic="t", partitions=[0] * n, offsets=list(range(n))
    )

    assert result.errors == {}
    assert result.rows.tolist() == list(range(n))
    assert_same_columns(result.columns, expected)


@SETTINGS
@given(schema_and_records())
def test_encoded_bytes_equal_fastavro_writer(case: tuple[AvroSchema, list[dict[str, Any]]]) -> None:
    schema, records = case
    columns = columns_from_records(layout(schema), records)

    encoded = ScoreEncoder(schema).encode(columns)

    assert encoded.errors == {}
    assert encoded.values == [write(schema, r) for r in records]
