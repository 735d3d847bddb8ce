"""The producer's limits fitted to the topics it writes (``worker.runtime.limits``), with a stand-in admin."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from worker.runtime.config import Settings
from worker.runtime.limits import MARGIN, fit_to_topics

BASE: dict[str, Any] = {
    "group_id": "g",
    "input": {"topics": ["in"], "reader_schema": "schemas/car_insurance_event.avsc"},
    "output": {"topic": "scores", "schema": "schemas/car_insurance_score.avsc"},
    "dead_letter": {"topic": "dlq"},
    "graph": "graph.json",
}


class Admin:
    """Answers describe_configs with each topic's max.message.bytes (or an error for it)."""

    def __init__(self, limits: dict[str, int | KafkaError]) -> None:
        self.limits = limits

    def describe_configs(self, resources: list[Any], **_: Any) -> dict[Any, Any]:
        answers: dict[Any, Any] = {}
        for resource in resources:
            future: Future[dict[str, Any]] = Future()
            limit = self.limits[resource.name]
            if isinstance(limit, KafkaError):
                future.set_exception(KafkaException(limit))
            else:
                future.set_result({"max.message.bytes": SimpleNamespace(value=str(limit))})
            answers[resource] = future
        return answers


def test_the_producer_is_lowered_below_the_smallest_topic_limit() -> None:
    fitted = fit_to_topics(Settings(**BASE), Admin({"scores": 1_048_588, "dlq": 4000}))
    config = fitted.producer_config()
    assert config["message.max.bytes"] == config["batch.size"] == str(4000 - MARGIN)


def test_topics_that_take_the_defaults_change_nothing() -> None:
    settings = Settings(**BASE)
    assert fit_to_topics(settings, Admin({"scores": 1_048_588, "dlq": 1_048_588})) is settings


def test_a_lower_limit_set_by_the_user_is_kept() -> None:
    settings = Settings(**BASE, kafka={"producer_extra": {"batch.size": 2000}})
    config = fit_to_topics(settings, Admin({"scores": 10_000, "dlq": 1_048_588})).producer_config()
    assert (config["batch.size"], config["message.max.bytes"]) == ("2000", str(10_000 - MARGIN))


def test_a_topic_whose_configs_cannot_be_read_is_left_to_the_broker() -> None:
    denied = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    settings = Settings(**BASE)
    assert fit_to_topics(settings, Admin({"scores": denied, "dlq": denied})) is settings
