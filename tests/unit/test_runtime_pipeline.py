"""Pipeline: the schema/graph contracts checked when built, and one batch of messages through a real
BatchDecoder, compiled graph and ScoreEncoder with every message accounted for exactly once."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import cache
from typing import Any

import fastavro
import numpy as np
import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_NOT_AVAILABLE, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from worker.avro.decoder import BatchDecoder
from worker.avro.encoder import ScoreEncoder
from worker.avro.schema import AvroSchema
from worker.errors import ConfigError, DecodeError, EncodeError, RecordError, ScoringError
from worker.graph import CompiledGraph, InMemoryModels, compile_graph, load_graph
from worker.runtime.pipeline import Meta, Pipeline, Processed, by_topic

EVENT = {
    "type": "record",
    "name": "Event",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "km", "type": "string"},
        {"name": "age", "type": ["null", "double"], "default": None},
        {"name": "n", "type": "long"},
    ],
}
SCORE = {
    "type": "record",
    "name": "Score",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "score", "type": "double"},
        {"name": "n", "type": "int"},  # narrower than the input's long: large values fail to encode
    ],
}
WEIGHTS = (1.0, 2.0)  # score = k * 1 + age * 2, k = float(km) / 1000
INPUTS: list[dict[str, Any]] = [
    {"name": "id", "dtype": "string"},
    {"name": "km", "dtype": "string"},
    {"name": "age", "dtype": "float64", "nullable": True},
    {"name": "n", "dtype": "int64"},
]
NODES: list[dict[str, Any]] = [
    {"id": "parse", "kind": "astype", "columns": ["km"], "dtype": "float64"},
    {"id": "per_1000", "kind": "expr", "expr": "km / 1000", "output": "k"},
    {"id": "model", "kind": "onnx", "model_id": "lin", "features": ["k", "age"], "outputs": {"Y": "score"}},
]
OUTPUTS: list[dict[str, Any]] = [
    {"name": "id", "dtype": "string"},
    {"name": "score", "dtype": "float64"},
    {"name": "n", "dtype": "int64"},
]


def linear_model() -> bytes:
    """Y[n, 1] = X[n, 2] @ WEIGHTS, in float32."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, len(WEIGHTS)])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 1])
    w = helper.make_tensor("W", TensorProto.FLOAT, [len(WEIGHTS), 1], list(WEIGHTS))
    graph = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], "lin", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return bytes(model.SerializeToString())


def graph_of(inputs: list[dict[str, Any]], nodes: list[dict[str, Any]] | None = None) -> CompiledGraph:
    """The scoring graph over ``inputs``; with ``nodes=[]`` a pass-through graph that outputs ``id``."""
    outputs = OUTPUTS if nodes is None else [{"name": "id", "dtype": "string"}]
    spec = {"name": "t", "inputs": inputs, "nodes": NODES if nodes is None else nodes, "outputs": outputs}
    return compile_graph(load_graph(spec), InMemoryModels({"lin": linear_model()}))


@cache
def pipeline() -> Pipeline:
    """Built once: compiling the graph loads an ONNX session, and the pipeline is immutable."""
    event = AvroSchema.parse(EVENT)
    return Pipeline(
        BatchDecoder(event, writer=event), graph_of(INPUTS), ScoreEncoder(AvroSchema.parse(SCORE))
    )


# --- the contracts, checked when a pipeline is built (in detail: test_runtime_contract.py) ---------------


def test_the_pipeline_checks_the_input_contract_when_built() -> None:
    event = AvroSchema.parse(EVENT)
    graph = graph_of([*INPUTS, {"name": "speed", "dtype": "float64"}], nodes=[])
    with pytest.raises(ConfigError, match="'speed'"):
        Pipeline(BatchDecoder(event, writer=event), graph, ScoreEncoder(AvroSchema.parse(SCORE)))


def build(score_fields: list[dict[str, Any]], outputs: list[dict[str, Any]] = OUTPUTS) -> Pipeline:
    """A pipeline whose graph adds ``flag`` (a bool, n > 0) and outputs ``outputs``, into ``score_fields``."""
    event = AvroSchema.parse(EVENT)
    nodes = [*NODES, {"id": "positive", "kind": "expr", "expr": "n > 0", "output": "flag"}]
    spec = {"name": "t", "inputs": INPUTS, "nodes": nodes, "outputs": outputs}
    graph = compile_graph(load_graph(spec), InMemoryModels({"lin": linear_model()}))
    score = AvroSchema.parse({**SCORE, "fields": score_fields})
    return Pipeline(BatchDecoder(event, writer=event), graph, ScoreEncoder(score))


def test_a_graph_output_the_output_schema_lacks_is_refused_when_built() -> None:
    # Before: the pipeline was built and every score went out without the field, with no warning.
    without_n = [f for f in SCORE["fields"] if f["name"] != "n"]
    with pytest.raises(ConfigError, match="graph output 'n' \\(int64\\) is not a field of the output schema"):
        build(without_n)


def test_a_bool_output_into_an_int_field_is_refused_when_built() -> None:
    # Before: the bool was written as 0/1.
    outputs = [*OUTPUTS, {"name": "flag", "dtype": "bool"}]
    with pytest.raises(
        ConfigError, match="field 'flag' is int in the output schema, but graph output 'flag' is bool"
    ):
        build([*SCORE["fields"], {"name": "flag", "type": "int"}], outputs)


def test_an_output_field_the_graph_lacks_is_refused_when_built() -> None:
    # Before: the pipeline was built and the first batch raised, after the worker had joined its group.
    with pytest.raises(ConfigError, match="field 'region' \\(string\\) is not a graph output"):
        build([*SCORE["fields"], {"name": "region", "type": "string"}])


# --- one batch through the stages -------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One planned event and what must become of it."""

    kind: str  # "ok", "tombstone", "truncated", "bad_km", "null_age", "big_n"
    id: str
    km: str
    age: float | None
    n: int

    def value(self) -> bytes | None:
        if self.kind == "tombstone":
            return None
        out = io.BytesIO()
        record = {"id": self.id, "km": self.km, "age": self.age, "n": self.n}
        fastavro.schemaless_writer(out, fastavro.parse_schema(EVENT), record)
        body = out.getvalue()
        return body[: len(body) // 2] if self.kind == "truncated" else body

    @property
    def outcome(self) -> tuple[str, str | None]:
        """(stage, node id) of the expected rejection, or ("score", None)."""
        return {
            "ok": ("score", None),
            "tombstone": ("decode", None),
            "truncated": ("decode", None),
            "bad_km": ("graph", "parse"),
            "null_age": ("graph", "model"),
            "big_n": ("encode", None),
        }[self.kind]

    def score(self) -> float:
        assert self.age is not None
        return float(self.km) / 1000 * WEIGHTS[0] + self.age * WEIGHTS[1]


def planned(kind: str, i: int) -> Row:
    km, age, n = str(1000 + 37 * i), float(i % 50) if kind != "null_age" else None, i
    if kind == "bad_km":
        km = f"{i}km"
    elif kind == "big_n":
        n = 2**31 + i
    return Row(kind, f"ev-{i}", km, age, n)


def messages_of(rows: list[Row], placement: list[tuple[str, int]]) -> list[Message]:
    """One message per row at ``placement[i]`` (topic, partition), offsets rising per partition."""
    next_offset: dict[tuple[str, int], int] = {}
    out = []
    for i, (row, (topic, partition)) in enumerate(zip(rows, placement, strict=True)):
        offset = next_offset.get((topic, partition), 100 * partition)
        next_offset[(topic, partition)] = offset + 1 + i % 2  # gaps, as after compaction
        key = None if i % 3 == 0 else f"k{i}".encode()
        out.append(
            Message(
                topic=topic,
                partition=partition,
                offset=offset,
                key=key,
                value=row.value(),
                headers=[("trace", b"%d" % i)],
                timestamp=(1, 1_700_000_000_000 + i),
            )
        )
    return out


def scores(processed: Processed) -> list[dict[str, Any]]:
    schema = fastavro.parse_schema(SCORE)
    return [fastavro.schemaless_reader(io.BytesIO(v), schema, None) for v in processed.score_values]  # type: ignore[misc]


def check_accounting(rows: list[Row], messages: list[Message], processed: Processed) -> None:
    """Every message exactly once, as a score or an error; scores right and in order; errors traceable."""
    score_rows = processed.score_rows.tolist()
    assert len(score_rows) == len(processed.score_values) == len(set(score_rows))
    assert not set(score_rows) & processed.errors.keys()
    assert sorted([*score_rows, *processed.errors]) == list(range(len(messages)))
    for i, row in enumerate(rows):
        stage, node_id = row.outcome
        assert (i in processed.errors) == (stage != "score"), (i, row.kind)
    # Order: within each input partition, scores come in consume order.
    for tp in {(m.topic(), m.partition()) for m in messages}:
        mine = [r for r in score_rows if (messages[r].topic(), messages[r].partition()) == tp]
        assert mine == sorted(mine)
    for r, record in zip(score_rows, scores(processed), strict=True):
        assert record["id"] == rows[r].id and record["n"] == rows[r].n
        assert math.isclose(record["score"], rows[r].score(), rel_tol=1e-6)  # the model is float32
    for i, error in processed.errors.items():
        message, (stage, node_id) = messages[i], rows[i].outcome
        assert isinstance(error, RecordError) and error.stage == stage
        assert isinstance(error, {"decode": DecodeError, "graph": ScoringError, "encode": EncodeError}[stage])
        if node_id is not None:
            assert error.node_id == node_id
        assert (error.topic, error.partition, error.offset) == (
            message.topic(),
            message.partition(),
            message.offset(),
        )
        assert error.key == message.key() and error.value == message.value()


def test_a_batch_of_good_and_bad_events_is_accounted_for() -> None:
    kinds = ["ok", "tombstone", "ok", "bad_km", "ok", "truncated", "null_age", "ok", "big_n", "ok", "ok"]
    rows = [planned(kind, i) for i, kind in enumerate(kinds)]
    placement = [("events", i % 2) for i in range(len(rows))]
    messages = messages_of(rows, placement)
    processed = pipeline().process(Meta.of(messages))
    check_accounting(rows, messages, processed)
    assert processed.score_rows.tolist() == [
        i for i, k in enumerate(kinds) if k == "ok"
    ]  # one topic: in order
    assert processed.score_rows.dtype == np.int64


def test_an_empty_batch() -> None:
    processed = pipeline().process(Meta.of([]))
    assert processed.score_rows.size == 0 and processed.score_values == [] and processed.errors == {}


def test_a_batch_where_every_event_is_bad() -> None:
    kinds = ["tombstone", "bad_km", "null_age", "big_n", "truncated"]
    rows = [planned(kind, i) for i, kind in enumerate(kinds)]
    messages = messages_of(rows, [("events", 0)] * len(rows))
    processed = pipeline().process(Meta.of(messages))
    check_accounting(rows, messages, processed)
    assert processed.score_rows.size == 0 and sorted(processed.errors) == list(range(len(rows)))


def test_two_topics_in_one_batch_are_decoded_apart_and_reassembled() -> None:
    kinds = ["ok", "bad_km", "ok", "ok", "tombstone", "ok"]
    rows = [planned(kind, i) for i, kind in enumerate(kinds)]
    placement = [("a", 0), ("b", 0), ("b", 0), ("a", 0), ("a", 1), ("b", 0)]
    messages = messages_of(rows, placement)
    processed = pipeline().process(Meta.of(messages))
    check_accounting(rows, messages, processed)
    assert processed.errors[1].topic == "b" and processed.errors[4].topic == "a"


KINDS = ["ok", "ok", "ok", "tombstone", "truncated", "bad_km", "null_age", "big_n"]
PLACES = [("events", 0), ("events", 1), ("events", 2), ("other", 0)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KINDS), st.sampled_from(PLACES)), max_size=40))
def test_every_message_comes_out_once_whatever_the_mix(plan: list[tuple[str, tuple[str, int]]]) -> None:
    rows = [planned(kind, i) for i, (kind, _) in enumerate(plan)]
    messages = messages_of(rows, [place for _, place in plan])
    check_accounting(rows, messages, pipeline().process(Meta.of(messages)))


def test_by_topic_groups_rows_in_consume_order() -> None:
    assert by_topic([]) == []
    ((topic, rows),) = by_topic(["a", "a", "a"])
    assert topic == "a" and rows.tolist() == [0, 1, 2]
    groups = [(t, r.tolist()) for t, r in by_topic(["b", "a", "b", "c", "a"])]
    assert groups == [("b", [0, 2]), ("a", [1, 4]), ("c", [3])]


@pytest.mark.parametrize(
    "kinds",
    [["tombstone"], ["truncated", "tombstone"], ["bad_km"], ["null_age", "bad_km", "truncated"]],
    ids=["one-undecodable", "all-undecodable", "one-rejected-by-the-graph", "none-reach-the-encoder"],
)
def test_a_batch_with_nothing_left_to_encode_is_dead_lettered_not_raised(kinds: list[str]) -> None:
    rows = [planned(kind, i) for i, kind in enumerate(kinds)]
    messages = messages_of(rows, [("events", 0)] * len(rows))
    processed = pipeline().process(Meta.of(messages))
    check_accounting(rows, messages, processed)
    assert processed.score_rows.size == 0 and processed.score_values == []


# --- Meta: the batch's message fields, read once -----------------------------------------------------------


def test_meta_reads_every_field_of_the_messages_in_order() -> None:
    messages = [
        Message(
            topic="a", partition=2, offset=7, key=b"k", value=b"v", timestamp=(TIMESTAMP_CREATE_TIME, 1500)
        ),
        Message(
            topic="b", partition=0, offset=3, key=None, value=None, timestamp=(TIMESTAMP_NOT_AVAILABLE, -1)
        ),
    ]
    meta = Meta.of(messages)
    assert meta.topics == ["a", "b"]
    assert meta.partitions.tolist() == [2, 0] and meta.partitions.dtype == np.int64
    assert meta.offsets.tolist() == [7, 3] and meta.offsets.dtype == np.int64
    assert meta.keys == [b"k", None] and meta.values == [b"v", None]
    assert meta.timestamps_ms[0] == 1500 and np.isnan(meta.timestamps_ms[1])  # librdkafka gives -1 for none


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(PLACES), st.integers(1, 5)), max_size=30), st.integers(0, 10**12))
def test_meta_commit_points_are_one_past_the_last_offset_of_each_partition(
    plan: list[tuple[tuple[str, int], int]], start: int
) -> None:
    offset: dict[tuple[str, int], int] = {}
    offsets_seen: list[int] = []
    messages = []
    for (topic, partition), gap in plan:  # offsets rise per partition, with gaps, partitions interleaved
        offset[(topic, partition)] = offset.get((topic, partition), start) + gap
        offsets_seen.append(offset[(topic, partition)])
        messages.append(Message(topic=topic, partition=partition, offset=offsets_seen[-1]))
    last = {(topic, partition): o for ((topic, partition), _), o in zip(plan, offsets_seen, strict=True)}
    assert Meta.of(messages).commit_points == {tp: o + 1 for tp, o in last.items()}
