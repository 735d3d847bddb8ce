"""records_to_batch (columns per declared input, null convention, rejected rows) and read_events."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import fastavro
import numpy as np
import pytest

from worker.errors import ConfigError, RecordError
from worker.scoring.reader import read_events
from worker.scoring.records import records_to_batch


@dataclass(frozen=True)
class Field:
    name: str
    dtype: str
    nullable: bool = False


def test_columns_follow_the_null_convention() -> None:
    records = [
        {"f": 1.5, "i": 3, "ni": None, "b": True, "nb": None, "s": "x", "ns": None, "t": 0},
        {"f": 2, "i": -4, "ni": 7, "b": False, "nb": False, "s": "y", "ns": "z", "t": 86_400_000},
    ]
    fields = [
        Field("f", "float64"),
        Field("i", "int64"),
        Field("ni", "int64", True),
        Field("b", "bool"),
        Field("nb", "bool", True),
        Field("s", "string"),
        Field("ns", "string", True),
        Field("t", "datetime64[ms]"),
    ]
    result = records_to_batch(records, fields)
    cols = result.columns
    assert result.errors == {}
    assert result.rows.tolist() == [0, 1]
    assert cols["f"].dtype == np.float64 and cols["f"].tolist() == [1.5, 2.0]
    assert cols["i"].dtype == np.int64 and cols["i"].tolist() == [3, -4]
    assert cols["ni"].dtype == np.float64 and np.isnan(cols["ni"][0]) and cols["ni"][1] == 7.0
    assert cols["b"].dtype == np.bool_ and cols["b"].tolist() == [True, False]
    assert cols["nb"].dtype == object and cols["nb"].tolist() == [None, False]
    assert cols["s"].dtype == object and cols["s"].tolist() == ["x", "y"]
    assert cols["ns"].tolist() == [None, "z"]
    assert cols["t"].dtype == np.dtype("datetime64[ms]")
    assert cols["t"].astype("datetime64[D]").astype(str).tolist() == ["1970-01-01", "1970-01-02"]


def test_missing_fields_are_null_and_extra_fields_ignored() -> None:
    result = records_to_batch([{"other": 1}], [Field("a", "float64", True), Field("s", "string", True)])
    assert np.isnan(result.columns["a"][0]) and result.columns["s"][0] is None
    assert set(result.columns) == {"a", "s"}


def test_bad_rows_are_rejected_with_a_reason_and_the_rest_kept() -> None:
    records = [
        {"a": 1, "s": "ok"},
        {"a": "two", "s": "ok"},
        {"a": 3, "s": None},
        {"a": True, "s": 5},
        {"a": 5},
    ]
    result = records_to_batch(records, [Field("a", "int64"), Field("s", "string")], first_offset=100)
    assert result.rows.tolist() == [0]
    assert result.columns["a"].tolist() == [1]
    assert sorted(result.errors) == [1, 2, 3, 4]
    assert "field 'a': str 'two' does not fit int64" in result.errors[1].reason
    assert "null in a non-nullable string field" in result.errors[2].reason
    assert "field 'a': bool True" in result.errors[3].reason  # the first bad field is named
    assert result.errors[1].offset == 101 and result.errors[1].stage == "validate"
    assert all(isinstance(e, RecordError) for e in result.errors.values())


def test_ints_beyond_int64_are_rejected() -> None:
    result = records_to_batch([{"a": 2**70}, {"a": 1}], [Field("a", "int64")])
    assert result.rows.tolist() == [1] and list(result.errors) == [0]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_700_000_000_123, "2023-11-14T22:13:20.123"),
        ("2023-11-14T22:13:20.123", "2023-11-14T22:13:20.123"),
        ("2023-11-14T23:13:20.123+01:00", "2023-11-14T22:13:20.123"),
        ("2023-11-14T22:13:20.123Z", "2023-11-14T22:13:20.123"),
        (datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC), "2023-11-14T22:13:20.123"),
    ],
)
def test_timestamps_from_millis_iso_strings_and_datetimes(value: object, expected: str) -> None:
    result = records_to_batch([{"t": value}], [Field("t", "datetime64[ms]")])
    assert str(result.columns["t"][0]) == expected


def test_dates_and_bad_timestamps() -> None:
    fields = [Field("d", "datetime64[D]", True)]
    result = records_to_batch([{"d": 1}, {"d": date(2020, 2, 29)}, {"d": None}, {"d": "not a date"}], fields)
    assert [str(v) for v in result.columns["d"]] == ["1970-01-02", "2020-02-29", "NaT"]
    assert list(result.errors) == [3]


def test_nested_records_are_read_by_dotted_names() -> None:
    result = records_to_batch(
        [{"device": {"os": "ios"}}, {"device": None}], [Field("device.os", "string", True)]
    )
    assert result.columns["device.os"].tolist() == ["ios", None]


def test_bytes_from_bytes_or_latin1_strings() -> None:
    result = records_to_batch([{"b": b"\x00\xff"}, {"b": "\u00ff"}, {"b": "\u0100"}], [Field("b", "bytes")])
    assert result.columns["b"].tolist() == [b"\x00\xff", b"\xff"]
    assert list(result.errors) == [2]


def test_json_lines_keep_positions_and_mark_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"a": 1}\n\nnot json\n[1, 2]\n{"a": 2}\n')
    events = list(read_events(path))
    assert events[0] == {"a": 1} and events[3] == {"a": 2}
    assert isinstance(events[1], RecordError) and events[1].offset == 1 and events[1].value == b"not json\n"
    assert isinstance(events[2], RecordError) and "not a JSON object" in events[2].reason


def test_avro_containers_are_detected_by_their_magic(tmp_path: Path) -> None:
    schema = {
        "type": "record",
        "name": "E",
        "fields": [
            {"name": "a", "type": "long"},
            {"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        ],
    }
    buffer = io.BytesIO()
    fastavro.writer(buffer, fastavro.parse_schema(schema), [{"a": 1, "t": 1_000}, {"a": 2, "t": 2_000}])
    path = tmp_path / "events.avro"
    path.write_bytes(buffer.getvalue())
    events = list(read_events(path))
    assert [e["a"] for e in events if isinstance(e, dict)] == [1, 2]
    result = records_to_batch([e for e in events if isinstance(e, dict)], [Field("t", "datetime64[ms]")])
    assert result.columns["t"].astype(np.int64).tolist() == [1_000, 2_000]


def test_a_corrupt_avro_container_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.avro"
    path.write_bytes(b"Obj\x01" + b"\x07" * 40)
    with pytest.raises(ConfigError, match="corrupt Avro container"):
        list(read_events(path))


def test_a_missing_input_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--input"):
        list(read_events(tmp_path / "absent.jsonl"))


def test_json_round_trip_of_a_generated_line(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"x": 0.1}) + "\n")
    (event,) = read_events(path)
    assert event == {"x": 0.1}
