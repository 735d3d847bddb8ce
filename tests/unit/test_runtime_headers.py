"""Record headers: lineage on scores, the dead-letter envelope (original headers kept, ours replaced, unknown
values left out, the class of the underlying exception)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.errors import DecodeError, EncodeError, RecordError, ScoringError
from worker.runtime.headers import (
    ERRORS,
    dead_letter,
    decode_headers,
    lineage,
    lineage_constants,
    schema_id,
    source,
)


def test_lineage_names_the_source_and_what_computed_the_score() -> None:
    constants = lineage_constants("sha256:abc", ["gbt@3", "lr@1"])
    headers = lineage(source("events", 7), 123456789012, [*constants, *schema_id(b"\x00\x00\x00\x2a")])
    assert headers == [
        ("rtml.source.topic", b"events"),
        ("rtml.source.partition", b"7"),
        ("rtml.source.offset", b"123456789012"),
        ("rtml.graph.digest", b"sha256:abc"),
        ("rtml.model.ids", b"gbt@3,lr@1"),
        ("rtml.schema.id", b"42"),
    ]
    assert all(isinstance(v, bytes) for _, v in headers)


def test_a_deployments_version_is_named_beside_the_digest() -> None:
    constants = lineage_constants("d", ["m"], "cars@3")
    assert constants[-1] == ("rtml.deployment", b"cars@3")
    assert "rtml.deployment" not in dict(lineage_constants("d", ["m"]))  # a graph file names none


def test_lineage_without_a_schema_id_and_without_models() -> None:
    headers = decode_headers(lineage(source("t", 0), 0, [*lineage_constants("d", []), *schema_id(b"")]))
    assert headers == {
        "rtml.source.topic": "t",
        "rtml.source.partition": "0",
        "rtml.source.offset": "0",
        "rtml.graph.digest": "d",
        "rtml.model.ids": "",
    }


def test_lineage_does_not_share_its_list_between_scores() -> None:
    constants = lineage_constants("d", ["m"])
    first = lineage(source("t", 0), 1, constants)
    second = lineage(source("t", 0), 2, [*constants, *schema_id(b"\x00\x00\x00\x05")])
    assert first is not second and len(first) == 5 and len(second) == 6
    assert len(constants) == 2  # appending the schema id never touches the shared constants


def test_dead_letter_envelope_carries_every_known_field() -> None:
    error = ScoringError(
        "model rejected the row",
        topic="events",
        partition=3,
        offset=99,
        schema_id=12,
        node_id="gbt",
        model_id="gbt@3",
        key=b"k",
        value=b"v",
    )
    headers = decode_headers(dead_letter(error, None))
    assert headers == {
        "rtml.errors.topic": "events",
        "rtml.errors.partition": "3",
        "rtml.errors.offset": "99",
        "rtml.errors.stage": "graph",
        "rtml.errors.node.id": "gbt",
        "rtml.errors.exception.class.name": "ScoringError",
        "rtml.errors.exception.message": "model rejected the row",
        "rtml.errors.schema.id": "12",
        "rtml.errors.model.id": "gbt@3",
    }


def test_absent_values_are_left_out_and_offset_zero_is_kept() -> None:
    error = DecodeError("truncated body", topic="events", partition=0, offset=0)
    names = [name for name, _ in dead_letter(error, [])]
    assert names == [
        ERRORS + "topic",
        ERRORS + "partition",
        ERRORS + "offset",
        ERRORS + "stage",
        ERRORS + "exception.class.name",
        ERRORS + "exception.message",
    ]
    assert decode_headers(dead_letter(error, []))[ERRORS + "offset"] == "0"


def test_original_headers_are_kept_in_order_and_ours_replaced() -> None:
    original = [
        ("trace-id", b"abc"),
        ("rtml.errors.stage", b"decode"),  # from an earlier trip through a dead-letter topic
        ("rtml.errors.retries", b"2"),
        ("tenant", b"\x00\xff"),  # headers are bytes, not necessarily text
        ("trace-id", b"def"),  # repeated keys are legal in Kafka and kept
        ("rtml.source.topic", b"upstream"),  # not under rtml.errors.: kept
    ]
    error = EncodeError("score out of range", topic="events", partition=1, offset=5)
    headers = dead_letter(error, original)
    assert headers[:4] == [
        ("trace-id", b"abc"),
        ("tenant", b"\x00\xff"),
        ("trace-id", b"def"),
        ("rtml.source.topic", b"upstream"),
    ]
    ours = dict(headers[4:])
    assert ours[ERRORS + "stage"] == b"encode"
    assert ERRORS + "retries" not in ours
    assert [name for name, _ in headers].count(ERRORS + "stage") == 1


def test_the_class_name_is_that_of_the_cause_when_raised_from_another_exception() -> None:
    try:
        try:
            int("seven")
        except ValueError as exc:
            raise RecordError("could not parse", stage="validate") from exc
    except RecordError as caught:
        error = caught
    headers = decode_headers(dead_letter(error, None))
    assert headers[ERRORS + "exception.class.name"] == "ValueError"
    assert headers[ERRORS + "exception.message"] == "could not parse"  # our reason, not the library's
    assert headers[ERRORS + "stage"] == "validate"


def test_the_class_name_is_the_record_errors_own_without_a_cause() -> None:
    assert decode_headers(dead_letter(DecodeError("bad"), None))[ERRORS + "exception.class.name"] == (
        "DecodeError"
    )


def test_non_ascii_reasons_are_utf8() -> None:
    headers = dict(dead_letter(ScoringError("catégorie inconnue: «x»"), None))
    assert headers[ERRORS + "exception.message"] == "catégorie inconnue: «x»".encode()


def test_decode_headers_skips_null_values_and_the_last_one_wins() -> None:
    assert decode_headers([("a", b"1"), ("b", None), ("a", b"2")]) == {"a": "2"}
    assert decode_headers(None) == {}


@given(st.integers(0, 2**32 - 1))
def test_the_schema_id_header_reads_the_four_framing_bytes_big_endian(schema_id_: int) -> None:
    framed = b"\x00" + schema_id_.to_bytes(4, "big") + b"avro body"
    assert schema_id(framed[1:5]) == [("rtml.schema.id", str(schema_id_).encode())]


def test_no_schema_id_header_without_framing() -> None:
    assert schema_id(b"") == []


def test_source_headers_are_encoded_once_per_partition() -> None:
    assert source("événements", 12) == (
        ("rtml.source.topic", "événements".encode()),
        ("rtml.source.partition", b"12"),
    )
