"""KeyDecoder: string, bytes and Avro keys to columns."""

from __future__ import annotations

import io

import fastavro

from worker.avro.decoder import BatchDecoder
from worker.avro.keys import KeyDecoder
from worker.avro.schema import AvroSchema


def test_string_keys_with_nulls_and_a_bad_one() -> None:
    keys = [b"a", None, b"\xff", "é".encode()]

    result = KeyDecoder("string").decode(keys, topic="t", partitions=[0] * 4, offsets=[5, 6, 7, 8])

    assert result.rows.tolist() == [0, 1, 3]
    assert result.columns["key"].tolist() == ["a", None, "é"]
    assert result.errors[2].key == b"\xff" and result.errors[2].offset == 7


def test_bytes_keys_pass_through() -> None:
    result = KeyDecoder("bytes").decode([b"\x00\x01", None], topic="t", partitions=[0, 0], offsets=[0, 1])
    assert result.columns["key"].tolist() == [b"\x00\x01", None]


def test_avro_record_keys_become_prefixed_columns() -> None:
    schema = AvroSchema.parse({"type": "record", "name": "K", "fields": [{"name": "id", "type": "long"}]})
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema.parsed, {"id": 42})

    decoder = KeyDecoder("avro", avro=BatchDecoder(schema, writer=schema))
    result = decoder.decode([buf.getvalue(), b"\x81"], topic="t", partitions=[0, 0], offsets=[0, 1])

    assert result.columns["key.id"].tolist() == [42]
    assert result.errors[1].key == b"\x81" and result.errors[1].value is None
