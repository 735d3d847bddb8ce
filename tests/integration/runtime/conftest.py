"""Fixtures of the streaming acceptance tests: car-insurance models trained once, and one scenario per test.

``car_models`` trains the example's models once per session (a few thousand events: small and fast) into a
temporary model store. ``scenario(partitions=, replicas=, graph=, settings=)`` makes what one run needs:
uuid-named input, score and dead-letter topics with the same partition count, the event schema registered
under ``<input>-value``, the worker's TOML config and a ``Fleet`` of replicas (not started). After the test
every replica is killed, then every topic deleted.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from confluent_kafka.admin import AdminClient
from harness import register_schema
from replicas import Fleet, write_config
from scenario import CarModels, Scenario, worker_settings

from examples.car_insurance.generate import generate
from examples.car_insurance.train import train
from worker.graph import compile_graph, load_graph
from worker.models import ModelStore

TRAIN_ROWS = 4000


@pytest.fixture(scope="session")
def car_models(tmp_path_factory: pytest.TempPathFactory) -> CarModels:
    folder = tmp_path_factory.mktemp("car-models")
    store = folder / "store"
    trained = train(pd.DataFrame(generate(TRAIN_ROWS, 11)), folder / "out", ModelStore(store), seed=11)
    path = trained.graphs["gbt"]
    return CarModels(store, path, compile_graph(load_graph(path), ModelStore(store)))


@pytest.fixture
def scenario(
    bootstrap_servers: str,
    schema_registry_url: str,
    admin: AdminClient,
    new_topic: Callable[..., str],
    car_models: CarModels,
    tmp_path: Path,
) -> Iterator[Callable[..., Scenario]]:
    fleets: list[Fleet] = []

    def make(
        *,
        partitions: int,
        replicas: int,
        graph: Path | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> Scenario:
        name = f"s{len(fleets)}"
        input_topic = new_topic(partitions, prefix="rt-in")
        score_topic = new_topic(partitions, prefix="rt-scores")
        dead_letter_topic = new_topic(partitions, prefix="rt-dlq")
        group_id = f"rt-{uuid.uuid4().hex[:12]}"
        values = worker_settings(
            bootstrap_servers,
            schema_registry_url,
            group_id=group_id,
            input_topic=input_topic,
            score_topic=score_topic,
            dead_letter_topic=dead_letter_topic,
            graph=graph or car_models.graph_path,
            store=car_models.store,
        )
        for key, value in (settings or {}).items():  # a table given is merged into the default one
            values[key] = {**values[key], **value} if isinstance(value, dict) and key in values else value
        logs = tmp_path / f"{name}-logs"
        logs.mkdir()
        fleet = Fleet(write_config(tmp_path / f"{name}.toml", values), logs, replicas, group_id)
        fleets.append(fleet)
        compiled = car_models.graph
        if graph is not None:
            compiled = compile_graph(load_graph(graph), ModelStore(car_models.store))
        return Scenario(
            bootstrap_servers=bootstrap_servers,
            registry_url=schema_registry_url,
            admin=admin,
            partitions=partitions,
            input_topic=input_topic,
            score_topic=score_topic,
            dead_letter_topic=dead_letter_topic,
            group_id=group_id,
            schema_id=register_schema(schema_registry_url, f"{input_topic}-value"),
            config=fleet.replicas[0].config if replicas else tmp_path / f"{name}.toml",
            fleet=fleet,
            graph=compiled,
        )

    yield make
    for fleet in fleets:
        fleet.stop()
