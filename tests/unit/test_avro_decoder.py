"""BatchDecoder: framing, schema evolution, refusals and isolation of bad records."""

from __future__ import annotations

import io
import struct
from typing import Any

import fastavro
import numpy as np
import pytest

from worker.avro.decoder import BatchDecoder
from worker.avro.registry import SchemaNotFound
from worker.avro.schema import AvroSchema
from worker.errors import DecodeError, RegistryUnavailable

V1 = {
    "type": "record",
    "name": "Event",
    "namespace": "test",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "n", "type": "int"},
        {"name": "x", "type": "float"},
        {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B", "C"]}},
        {"name": "old_name", "type": ["null", "string"], "default": None},
        {"name": "dropped", "type": "long"},
        {
            "name": "dev",
            "type": {"type": "record", "name": "Dev", "fields": [{"name": "os", "type": "string"}]},
        },
    ],
}
# BACKWARD-compatible reader: promotions, a renamed field by alias, an added field with default, a removed
# field, an enum with a default for a symbol it lost.
V2 = {
    "type": "record",
    "name": "Event",
    "namespace": "test",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "n", "type": "long"},
        {"name": "x", "type": "double"},
        {
            "name": "kind",
            "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B", "Z"], "default": "Z"},
        },
        {"name": "new_name", "aliases": ["old_name"], "type": ["null", "string"], "default": None},
        {"name": "added", "type": ["null", "int"], "default": None},
        {"name": "tag", "type": "string", "default": "none"},
        {
            "name": "dev",
            "type": {"type": "record", "name": "Dev", "fields": [{"name": "os", "type": "string"}]},
        },
    ],
}
# Incompatible: n changed from int to string.
V3 = {**V1, "fields": [{"name": "id", "type": "string"}, {"name": "n", "type": "string"}]}


def rec(i: int) -> dict[str, Any]:
    return {
        "id": f"e{i}",
        "n": i * 1000,
        "x": i / 4,
        "kind": "ABC"[i % 3],
        "old_name": None if i % 2 else f"name{i}",
        "dropped": -i,
        "dev": {"os": "linux"},
    }


def body(schema: AvroSchema, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema.parsed, record)
    return buf.getvalue()


def framed(schema_id: int, payload: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", schema_id) + payload


class FakeRegistry:
    def __init__(self, schemas: dict[int, AvroSchema], fail: BaseException | None = None) -> None:
        self.schemas = schemas
        self.fail = fail
        self.calls = 0

    def schema_by_id(self, schema_id: int) -> AvroSchema:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        if schema_id not in self.schemas:
            raise SchemaNotFound(f"no schema {schema_id}")
        return self.schemas[schema_id]


def decode(decoder: BatchDecoder, values: list[bytes | None]) -> Any:
    return decoder.decode(
        values, topic="events", partitions=[3] * len(values), offsets=list(range(100, 100 + len(values)))
    )


@pytest.fixture
def schemas() -> dict[str, AvroSchema]:
    return {k: AvroSchema.parse(v) for k, v in {"v1": V1, "v2": V2, "v3": V3}.items()}


@pytest.mark.parametrize("fast", [True, False])
def test_v1_and_v2_interleaved_give_the_same_shared_columns(
    schemas: dict[str, AvroSchema], fast: bool
) -> None:
    v1, v2 = schemas["v1"], schemas["v2"]
    registry = FakeRegistry({1: v1, 2: v2})
    v2_record = lambda i: {**{k: v for k, v in rec(i).items() if k not in ("old_name", "dropped")},  # noqa: E731
                           "new_name": rec(i)["old_name"], "added": None, "tag": "none",
                           "kind": "Z" if rec(i)["kind"] == "C" else rec(i)["kind"]}  # fmt: skip
    values = [framed(1, body(v1, rec(i))) if i % 2 else framed(2, body(v2, v2_record(i))) for i in range(10)]

    result = decode(BatchDecoder(v2, registry=registry, fast_path=fast), values)

    assert result.errors == {}
    assert result.rows.tolist() == list(range(10))
    assert result.columns["id"].tolist() == [f"e{i}" for i in range(10)]
    assert result.columns["n"].dtype == np.int64
    assert result.columns["n"].tolist() == [i * 1000 for i in range(10)]
    np.testing.assert_array_equal(result.columns["x"], np.arange(10) / 4)
    assert result.columns["kind"].tolist() == [
        "Z" if "ABC"[i % 3] == "C" else "ABC"[i % 3] for i in range(10)
    ]
    assert result.columns["new_name"].tolist() == [None if i % 2 else f"name{i}" for i in range(10)]
    assert np.isnan(result.columns["added"]).all()
    assert result.columns["tag"].tolist() == ["none"] * 10
    assert result.columns["dev.os"].tolist() == ["linux"] * 10
    assert "dropped" not in result.columns
    assert registry.calls == 2  # one fetch per schema id, then cached


@pytest.mark.parametrize("fast", [True, False])
def test_incompatible_writer_is_refused_per_record_and_neighbours_pass(
    schemas: dict[str, AvroSchema], fast: bool
) -> None:
    v1, v3 = schemas["v1"], schemas["v3"]
    registry = FakeRegistry({1: v1, 3: v3})
    values = [
        framed(1, body(v1, rec(0))),
        framed(3, body(v3, {"id": "x", "n": "seven"})),
        framed(1, body(v1, rec(2))),
    ]

    result = decode(BatchDecoder(v1, registry=registry, fast_path=fast), values)

    assert result.rows.tolist() == [0, 2]
    assert result.columns["id"].tolist() == ["e0", "e2"]
    error = result.errors[1]
    assert isinstance(error, DecodeError)
    assert "cannot be read" in error.reason and "n" in error.reason
    assert (error.schema_id, error.topic, error.partition, error.offset, error.stage) == (
        3,
        "events",
        3,
        101,
        "decode",
    )
    assert error.value == values[1]


def test_framing_errors_are_record_errors_with_their_bytes(schemas: dict[str, AvroSchema]) -> None:
    v1 = schemas["v1"]
    good = framed(1, body(v1, rec(1)))
    values: list[bytes | None] = [
        good,
        b"\x00\x00\x00\x00\x01",
        b"\x01" + good[1:],
        None,
        framed(9, b"\x02"),
        good,
    ]

    result = decode(BatchDecoder(v1, registry=FakeRegistry({1: v1})), values)

    assert result.rows.tolist() == [0, 5]
    assert "too short" in result.errors[1].reason
    assert "magic byte 0x01" in result.errors[2].reason
    assert "tombstone" in result.errors[3].reason
    assert "unknown writer schema id 9" in result.errors[4].reason and result.errors[4].schema_id == 9
    assert all(result.errors[i].value == values[i] for i in result.errors)


@pytest.mark.parametrize("fast", [True, False])
def test_bad_bodies_are_isolated_and_neighbours_decode(schemas: dict[str, AvroSchema], fast: bool) -> None:
    v1 = schemas["v1"]
    bodies = [body(v1, rec(i)) for i in range(8)]
    bodies[2] = bodies[2] + b"\x00"  # trailing byte
    bodies[4] = bodies[4][:-3]  # truncated
    bodies[6] = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"  # varint too long

    result = decode(BatchDecoder(v1, writer=v1, fast_path=fast), bodies)  # type: ignore[arg-type]

    assert result.rows.tolist() == [0, 1, 3, 5, 7]
    assert result.columns["id"].tolist() == ["e0", "e1", "e3", "e5", "e7"]
    assert "trailing" in result.errors[2].reason
    assert set(result.errors) == {2, 4, 6}
    assert all(e.schema_id is None for e in result.errors.values())


def test_registry_outage_is_an_infrastructure_error_not_a_record_error(
    schemas: dict[str, AvroSchema],
) -> None:
    v1 = schemas["v1"]
    registry = FakeRegistry({}, fail=RegistryUnavailable("down"))

    with pytest.raises(RegistryUnavailable):
        decode(BatchDecoder(v1, registry=registry), [framed(1, body(v1, rec(0)))])


def test_empty_batch_has_typed_empty_columns(schemas: dict[str, AvroSchema]) -> None:
    result = decode(BatchDecoder(schemas["v2"], writer=schemas["v1"]), [])

    assert result.rows.size == 0 and result.errors == {}
    assert result.columns["n"].dtype == np.int64 and result.columns["added"].dtype == np.float64
