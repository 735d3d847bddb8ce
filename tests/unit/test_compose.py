"""docker-compose.yml cannot run here (no Docker engine), so its structure is checked as data."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_worker_scales_without_fixed_names_or_host_ports(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert "build" in worker
    assert "container_name" not in worker
    assert "ports" not in worker, "a fixed host port would stop `--scale worker=3`"
    assert "healthcheck" in worker


def test_kafka_is_the_official_image_in_kraft_mode_with_the_scripts_version(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    image, version = kafka["image"].split(":")
    assert image == "apache/kafka"
    services_script = (ROOT / "scripts" / "services.py").read_text()
    assert f'KAFKA_VERSION = "{version}"' in services_script
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]
    assert "healthcheck" in kafka


def test_registry_serves_the_confluent_api_with_a_healthcheck(compose: dict[str, Any]) -> None:
    registry = compose["services"]["registry"]
    assert registry["image"].startswith("apicurio/apicurio-registry:3.")
    assert "/apis/ccompat/v7" in " ".join(registry["healthcheck"]["test"])


def test_worker_waits_for_its_dependencies_and_points_at_them(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    conditions = {name: dep["condition"] for name, dep in worker["depends_on"].items()}
    assert conditions["topics"] == "service_completed_successfully"
    assert conditions["registry"] == "service_healthy"
    env = worker["environment"]
    assert env["RTML_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:29092"
    assert env["RTML_SCHEMA_REGISTRY__URL"].startswith("http://registry:8080/apis/ccompat/v7")


def test_topics_match_the_demo(compose: dict[str, Any]) -> None:
    from examples.demo import TOPICS

    script = " ".join(compose["services"]["topics"]["command"])
    created = dict(re.findall(r"([a-z-]+):(\d+)", script.split("for spec in", 1)[1].split(";", 1)[0]))
    assert {name: int(n) for name, n in created.items()} == TOPICS
    env = compose["services"]["worker"]["environment"]
    assert {env["RTML_INPUT__TOPICS"], env["RTML_OUTPUT__TOPIC"], env["RTML_DEAD_LETTER__TOPIC"]} == set(
        TOPICS
    )


def test_worker_environment_is_a_valid_worker_config(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.runtime.config import load_settings

    for name, value in compose["services"]["worker"]["environment"].items():
        monkeypatch.setenv(name, str(value))
    settings = load_settings(None)
    assert settings.metrics_host == "0.0.0.0"
    assert settings.input.topics == ["car-insurance-events"]
    assert settings.kafka.bootstrap_servers == "kafka:29092"
    assert str(settings.graph).startswith("/models/")


def test_the_image_and_the_worker_serve_metrics_beyond_loopback(compose: dict[str, Any]) -> None:
    """The worker listens on 127.0.0.1 by default; in a container, probes and Prometheus come from outside."""
    env = {}
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("ENV "):
            env.update(item.split("=", 1) for item in line.split()[1:])
    assert env["RTML_METRICS_HOST"] == "0.0.0.0"
    assert compose["services"]["worker"]["environment"]["RTML_METRICS_HOST"] == "0.0.0.0"


def test_the_models_live_in_the_object_store_that_trainer_and_worker_share(compose: dict[str, Any]) -> None:
    services = compose["services"]
    s3 = services["s3"]
    assert s3["image"] == f"andrewgaul/s3proxy:{_script_constant('S3PROXY_VERSION')}"
    assert s3["environment"]["JCLOUDS_PROVIDER"] == "filesystem"
    assert "/data/rtml" in " ".join(s3["entrypoint"])  # the bucket exists before anything writes to it
    trainer, worker = services["trainer"], services["worker"]
    assert trainer["entrypoint"][trainer["entrypoint"].index("--models") + 1] == "s3://rtml/models"
    assert worker["environment"]["RTML_MODEL_STORE"] == "s3://rtml/models"
    for env in (trainer["environment"], worker["environment"]):
        assert env["AWS_ENDPOINT_URL"] == "http://s3:8080" and env["AWS_ALLOW_HTTP"] == "true"
        assert env["AWS_ACCESS_KEY_ID"] == s3["environment"]["S3PROXY_IDENTITY"]
        assert env["AWS_SECRET_ACCESS_KEY"] == s3["environment"]["S3PROXY_CREDENTIAL"]


def _script_constant(name: str) -> str:
    match = re.search(rf'^{name} = "([^"]+)"', (ROOT / "scripts" / "services.py").read_text(), re.M)
    assert match is not None, name
    return match.group(1)
