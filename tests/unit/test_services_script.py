"""The services script's pure parts: broker configs for one and three brokers, sourceable env lines."""

from __future__ import annotations

import base64
import importlib.util
import re
import sys
import uuid
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "services.py"


@pytest.fixture(scope="module")
def services() -> ModuleType:
    spec = importlib.util.spec_from_file_location("services_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["services_script"] = module
    spec.loader.exec_module(module)
    return module


def props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_three_broker_cluster_has_distinct_nodes_ports_and_replication_three(services: ModuleType) -> None:
    stack = services.Stack(brokers=3, kafka_port=19092, registry_port=18081)
    configs = [props(services.broker_properties(stack, i)) for i in range(3)]
    assert [c["node.id"] for c in configs] == ["1", "2", "3"]
    assert len({c["listeners"] for c in configs}) == 3
    assert {c["controller.quorum.voters"] for c in configs} == {
        "1@127.0.0.1:19192,2@127.0.0.1:19193,3@127.0.0.1:19194"
    }
    assert all(c["default.replication.factor"] == "3" for c in configs)
    assert all(c["transaction.state.log.min.isr"] == "2" for c in configs)
    assert all(c["min.insync.replicas"] == "2" for c in configs)
    assert stack.bootstrap == "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094"


def test_single_broker_uses_replication_one(services: ModuleType) -> None:
    stack = services.Stack(brokers=1, kafka_port=9092, registry_port=8081)
    config = props(services.broker_properties(stack, 0))
    assert config["offsets.topic.replication.factor"] == "1"
    assert config["min.insync.replicas"] == "1"
    assert config["advertised.listeners"].split(",")[0] == "PLAINTEXT://127.0.0.1:9092"


def test_two_brokers_keep_min_insync_replicas_one(services: ModuleType) -> None:
    stack = services.Stack(brokers=2, kafka_port=19092, registry_port=18081)
    assert props(services.broker_properties(stack, 0))["min.insync.replicas"] == "1"


def test_each_broker_binds_a_proxied_listener_and_advertises_the_proxy_port(services: ModuleType) -> None:
    stack = services.Stack(brokers=3, kafka_port=19092, registry_port=18081)
    configs = [props(services.broker_properties(stack, i)) for i in range(3)]
    assert [c["listeners"].split(",") for c in configs] == [
        [
            f"PLAINTEXT://127.0.0.1:{19092 + i}",
            f"CONTROLLER://127.0.0.1:{19192 + i}",
            f"PROXIED://127.0.0.1:{19292 + i}",
        ]
        for i in range(3)
    ]
    assert [c["advertised.listeners"] for c in configs] == [
        f"PLAINTEXT://127.0.0.1:{19092 + i},PROXIED://127.0.0.1:{19392 + i}" for i in range(3)
    ]
    protocols = dict(pair.split(":") for pair in configs[0]["listener.security.protocol.map"].split(","))
    assert protocols == {"PLAINTEXT": "PLAINTEXT", "CONTROLLER": "PLAINTEXT", "PROXIED": "PLAINTEXT"}
    assert all(c["inter.broker.listener.name"] == "PLAINTEXT" for c in configs)
    assert all(c["controller.listener.names"] == "CONTROLLER" for c in configs)


def test_proxied_bootstrap_names_the_proxy_ports_and_routes_them_to_the_listeners(
    services: ModuleType,
) -> None:
    stack = services.Stack(brokers=3, kafka_port=19092, registry_port=18081)
    assert stack.proxied_bootstrap == "127.0.0.1:19392,127.0.0.1:19393,127.0.0.1:19394"
    assert stack.proxy_routes() == [(19392, 19292), (19393, 19293), (19394, 19294)]
    assert services.Stack(1, 9092, 8081).proxied_bootstrap == "127.0.0.1:9392"


def test_env_lines_are_sourceable(services: ModuleType) -> None:
    stack = services.Stack(brokers=1, kafka_port=9092, registry_port=8081)
    assert stack.env_lines().splitlines() == [
        "export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092",
        "export SCHEMA_REGISTRY_URL=http://127.0.0.1:8081/apis/ccompat/v7",
    ]


def test_cluster_id_never_reads_as_an_option(services: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    # A first byte of 0xF8 encodes to a leading '-', which StorageTool's `-t` took for an option.
    dashed = uuid.UUID(bytes=b"\xf8" + bytes(15))
    plain = uuid.UUID(bytes=b"\x12" + bytes(15))
    drawn = iter([dashed, plain])
    monkeypatch.setattr(services.uuid, "uuid4", lambda: next(drawn))
    cluster_id = services.new_cluster_id()
    assert not cluster_id.startswith("-")
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id)
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_format_command_joins_the_cluster_id_to_its_option(services: ModuleType) -> None:
    # Even an id with a leading '-' must reach StorageTool as the option's value, not as an option.
    argv = services.format_command(["java"], "-DomHG-lSV2BuMMkhyVlnQ", Path("/x/server.properties"))
    assert "--cluster-id=-DomHG-lSV2BuMMkhyVlnQ" in argv
    assert "-DomHG-lSV2BuMMkhyVlnQ" not in argv
