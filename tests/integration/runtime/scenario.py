"""What one streaming run is made of: the trained car-insurance models, the worker's settings, and a
``Scenario`` (topics, group, config, replicas) with the verifier wired to its topics.

Built by the ``car_models`` and ``scenario`` fixtures in conftest.py; used by the runtime tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient
from harness import EVENT_SCHEMA, SCORE_SCHEMA
from replicas import Fleet
from verifier import Output, Report, Sources, collect_and_verify, describe

from worker.graph import CompiledGraph


@dataclass(frozen=True)
class CarModels:
    """The model store holding the trained models, the gradient-boosting graph and its compiled form."""

    store: Path
    graph_path: Path
    graph: CompiledGraph


@dataclass
class Scenario:
    """One run's topics (all with ``partitions`` partitions), group, config and replicas."""

    bootstrap_servers: str
    registry_url: str
    admin: AdminClient
    partitions: int
    input_topic: str
    score_topic: str
    dead_letter_topic: str
    group_id: str
    schema_id: int
    config: Path
    fleet: Fleet
    graph: CompiledGraph

    def verify(self, sources: Sources, *, timeout_s: float = 180.0) -> Report:
        """Read both output topics, verify them against ``sources`` and print the report."""
        return self.collect(sources, timeout_s=timeout_s)[0]

    def collect(
        self, sources: Sources, *, timeout_s: float = 180.0
    ) -> tuple[Report, list[Output], list[Output]]:
        """The report and the score and dead-letter records it was made from."""
        report, scores, dead = collect_and_verify(
            self.bootstrap_servers,
            self.registry_url,
            sources,
            input_topic=self.input_topic,
            score_topic=self.score_topic,
            dead_letter_topic=self.dead_letter_topic,
            score_partitions=self.partitions,
            graph_digest=self.graph.digest,
            timeout_s=timeout_s,
        )
        print(describe(sources, report))
        return report, scores, dead


def worker_settings(
    bootstrap_servers: str,
    registry_url: str,
    *,
    group_id: str,
    input_topic: str,
    score_topic: str,
    dead_letter_topic: str,
    graph: Path,
    store: Path,
) -> dict[str, Any]:
    """The settings every scenario starts from. The session timeout is short so that a killed replica's
    partitions move within seconds rather than the default 45."""
    return {
        "group_id": group_id,
        "graph": graph,
        "model_store": store,
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "commit_interval_ms": 500,
        "kafka": {
            "bootstrap_servers": bootstrap_servers,
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
        },
        "schema_registry": {"url": registry_url},
        "input": {"topics": [input_topic], "reader_schema": EVENT_SCHEMA},
        "output": {"topic": score_topic, "schema": SCORE_SCHEMA},
        "dead_letter": {"topic": dead_letter_topic},
    }
