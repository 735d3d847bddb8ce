"""The contract between the graph and its schemas: every input given with its dtype by the reader schema, and
the graph's outputs and the output schema's fields the same set, each output's dtype fitting its Avro type."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from examples.car_insurance.generate import generate
from examples.car_insurance.train import train as train_car_insurance
from examples.iris.train import train as train_iris
from worker.avro.schema import AvroSchema, layout
from worker.errors import ConfigError
from worker.graph import CompiledGraph, InMemoryModels, compile_graph, load_graph
from worker.graph.dsl import OutputField
from worker.models import ModelStore
from worker.runtime.contract import check_inputs, check_outputs

ROOT = Path(__file__).resolve().parents[2]
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
INPUTS: list[dict[str, Any]] = [
    {"name": "id", "dtype": "string"},
    {"name": "km", "dtype": "string"},
    {"name": "age", "dtype": "float64", "nullable": True},
    {"name": "n", "dtype": "int64"},
]


def passthrough(inputs: list[dict[str, Any]]) -> CompiledGraph:
    spec = {"name": "t", "inputs": inputs, "outputs": [{"name": "id", "dtype": "string"}]}
    return compile_graph(load_graph(spec), InMemoryModels())


# --- the real example graphs and schemas ----------------------------------------------------------------


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CompiledGraph]:
    """The graphs the examples write, compiled with the models they train (small, fast fits)."""
    root = tmp_path_factory.mktemp("examples")
    store = ModelStore(root / "store")
    car = train_car_insurance(pd.DataFrame(generate(400, seed=1)), root / "car", store, seed=1)
    paths = {
        **{f"car_insurance_{k}": v for k, v in car.graphs.items()},
        "iris": train_iris(root, store).graph,
    }
    return {name: compile_graph(load_graph(path), store) for name, path in paths.items()}


@pytest.mark.parametrize("name", ["car_insurance_gbt", "car_insurance_lr", "iris"])
def test_the_example_graphs_fit_their_schemas(examples: dict[str, CompiledGraph], name: str) -> None:
    graph, prefix = examples[name], "iris" if name == "iris" else "car_insurance"
    check_inputs(layout(AvroSchema.load(ROOT / "schemas" / f"{prefix}_event.avsc")), graph.inputs)
    check_outputs(AvroSchema.load(ROOT / "schemas" / f"{prefix}_score.avsc"), graph.outputs)


# --- inputs: the reader schema gives every graph input --------------------------------------------------


def input_error(inputs: list[dict[str, Any]]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        check_inputs(layout(AvroSchema.parse(EVENT)), passthrough(inputs).inputs)
    assert caught.value.field == "input.reader_schema"
    return caught.value


def test_a_matching_input_contract_passes() -> None:
    check_inputs(layout(AvroSchema.parse(EVENT)), passthrough(INPUTS).inputs)


def test_a_graph_input_missing_from_the_schema_is_named() -> None:
    inputs = [*INPUTS, {"name": "speed", "dtype": "float64"}]
    assert "graph input 'speed' is not a field of the reader schema" in str(input_error(inputs))


def test_a_nullable_field_for_a_non_null_input_is_named() -> None:
    inputs = [{**i, "nullable": False} if i["name"] == "age" else i for i in INPUTS]
    message = str(input_error(inputs))
    assert "graph input 'age' is non-null in the graph but nullable in the reader schema" in message


def test_an_input_dtype_mismatch_is_named() -> None:
    inputs = [{**i, "dtype": "float64"} if i["name"] == "km" else i for i in INPUTS]
    message = str(input_error(inputs))
    assert "graph input 'km' (float64) needs a float64 column; the reader schema gives object" in message


def test_a_nullable_integer_input_is_not_fed_by_a_non_null_long() -> None:
    # The decoder gives int64 for a non-null long, the graph expects float64 with NaN for its nullable int.
    inputs = [{**i, "nullable": True} if i["name"] == "n" else i for i in INPUTS]
    message = str(input_error(inputs))
    assert "graph input 'n' (int64?) needs a float64 column; the reader schema gives int64" in message


# --- outputs: the graph's outputs and the output schema's fields, both ways -------------------------------


def score(*fields: dict[str, Any]) -> AvroSchema:
    return AvroSchema.parse({"type": "record", "name": "Score", "namespace": "t", "fields": list(fields)})


def out(name: str, dtype: str, nullable: bool = False) -> OutputField:
    return OutputField(name=name, dtype=dtype, nullable=nullable)  # type: ignore[arg-type]


def output_error(schema: AvroSchema, outputs: list[OutputField]) -> str:
    with pytest.raises(ConfigError) as caught:
        check_outputs(schema, outputs)
    assert caught.value.field == "output.schema"
    assert str(caught.value).startswith("output.schema: ")
    return str(caught.value)


ID = {"name": "id", "type": "string"}


def test_a_graph_output_missing_from_the_schema_is_refused_not_dropped() -> None:
    message = output_error(score(ID), [out("id", "string"), out("label", "bool")])
    assert "graph output 'label' (bool) is not a field of the output schema (its fields: id)" in message


def test_a_bool_output_into_an_int_field_is_refused_with_both_types() -> None:
    message = output_error(
        score(ID, {"name": "label", "type": "int"}), [out("id", "string"), out("label", "bool")]
    )
    assert "field 'label' is int in the output schema, but graph output 'label' is bool" in message
    assert "; a bool output needs Avro boolean" in message


def test_a_schema_field_the_graph_does_not_produce_is_refused() -> None:
    message = output_error(score(ID, {"name": "region", "type": "string"}), [out("id", "string")])
    assert "field 'region' (string) is not a graph output" in message


def test_a_nullable_field_with_a_null_default_must_be_produced_too() -> None:
    # The encoder writes every field from the batch: a defaulted field the graph lacks fails the first batch.
    field = {"name": "note", "type": ["null", "string"], "default": None}
    message = output_error(score(ID, field), [out("id", "string")])
    assert 'field \'note\' (["null", "string"], default null) is not a graph output' in message
    assert "fills in no defaults" in message


def test_a_nullable_output_needs_a_nullable_field() -> None:
    message = output_error(
        score(ID, {"name": "p", "type": "double"}), [out("id", "string"), out("p", "float64", True)]
    )
    assert (
        "field 'p' is double in the output schema, but graph output 'p' is float64? (may be null)" in message
    )
    assert 'make the field ["null", "double"]' in message


@pytest.mark.parametrize("order", [["null", "double"], ["double", "null"]])
def test_a_non_null_or_nullable_output_fits_a_nullable_field(order: list[str]) -> None:
    schema = score(ID, {"name": "p", "type": order})
    check_outputs(schema, [out("id", "string"), out("p", "float64")])
    check_outputs(schema, [out("id", "string"), out("p", "float64", nullable=True)])


TS_MS = {"type": "long", "logicalType": "timestamp-millis"}
TS_US = {"type": "long", "logicalType": "timestamp-micros"}
FITTING = [
    ("float64", "double"),
    ("float64", "float"),
    ("int64", "long"),
    ("int64", "int"),
    ("bool", "boolean"),
    ("string", "string"),
    ("string", {"type": "string", "logicalType": "uuid"}),
    ("string", {"type": "enum", "name": "Color", "symbols": ["RED", "BLUE"]}),
    ("string", {"type": "string", "logicalType": "made-up"}),  # Avro ignores a logical type it lacks
    ("bytes", "bytes"),
    ("bytes", {"type": "fixed", "name": "Hash", "size": 16}),
    ("datetime64[ms]", TS_MS),
    ("datetime64[ms]", {"type": "long", "logicalType": "local-timestamp-millis"}),
    ("datetime64[ms]", TS_US),
    ("datetime64[us]", TS_US),
    ("datetime64[D]", {"type": "int", "logicalType": "date"}),
    ("datetime64[D]", TS_MS),
    ("int64", {"type": "int", "logicalType": "timestamp-millis"}),  # not defined on int: a plain int
]
REFUSED = [
    ("bool", "int"),
    ("bool", "double"),
    ("int64", "double"),
    ("int64", "boolean"),
    ("float64", "long"),
    ("string", "bytes"),
    ("bytes", "string"),
    ("datetime64[ms]", "long"),
    ("datetime64[us]", TS_MS),
    ("datetime64[ms]", {"type": "int", "logicalType": "date"}),
    ("datetime64[ms]", {"type": "long", "logicalType": "timestamp-nanos"}),
    ("int64", TS_MS),
    ("int64", {"type": "long", "logicalType": "timestamp-nanos"}),
    ("int64", {"type": "int", "logicalType": "time-millis"}),
    ("bytes", {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}),
    ("string", {"type": "array", "items": "string"}),
    ("string", {"type": "map", "values": "string"}),
    ("string", ["null", "string", "long"]),
    ("string", "null"),
]


@pytest.mark.parametrize(("dtype", "avro"), FITTING, ids=[f"{d}-{a}" for d, a in FITTING])
def test_each_dtype_fits_its_avro_types(dtype: str, avro: Any) -> None:
    check_outputs(score({"name": "v", "type": avro}), [out("v", dtype)])
    check_outputs(score({"name": "v", "type": ["null", avro]}), [out("v", dtype, nullable=True)])


@pytest.mark.parametrize(("dtype", "avro"), REFUSED, ids=[f"{d}-{a}" for d, a in REFUSED])
def test_other_pairs_are_refused(dtype: str, avro: Any) -> None:
    message = output_error(score({"name": "v", "type": avro}), [out("v", dtype)])
    assert f"graph output 'v' is {dtype}" in message


def test_the_refusal_says_which_avro_types_fit() -> None:
    message = output_error(score({"name": "t", "type": "long"}), [out("t", "datetime64[ms]")])
    assert (
        "field 't' is long in the output schema, but graph output 't' is datetime64[ms]; a datetime64[ms] "
        in message
    )
    assert "long (timestamp-millis) or long (local-timestamp-millis) or long (timestamp-micros)" in message


DEVICE = {
    "name": "device",
    "type": {"type": "record", "name": "Device", "fields": [{"name": "os", "type": "string"}]},
}


def test_nested_record_fields_are_dotted_outputs() -> None:
    check_outputs(score(ID, DEVICE), [out("id", "string"), out("device.os", "string")])
    nullable = {**DEVICE, "type": ["null", DEVICE["type"]], "default": None}
    check_outputs(score(ID, nullable), [out("id", "string"), out("device.os", "string")])
    message = output_error(score(ID, DEVICE), [out("id", "string"), out("device.os", "int64")])
    assert (
        "field 'device.os' is string in the output schema, but graph output 'device.os' is int64" in message
    )
    assert "field 'device.os' (string) is not a graph output" in output_error(
        score(ID, DEVICE), [out("id", "string")]
    )
