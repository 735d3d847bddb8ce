"""The producer's size limits fitted to the topics it writes, read once at start.

librdkafka batches a partition's records up to ``batch.size`` and refuses, at ``produce``, a record larger
than ``message.max.bytes`` (both 1,000,000 by default). A topic may take less (``max.message.bytes``, a
broker-side check of the whole batch): the broker then refuses the batch, every record in it fails, and the
worker must rewind and isolate records that were never at fault. So ``run`` reads the output and dead-letter
topics' ``max.message.bytes`` before the worker starts and, when one is smaller, lowers both producer
limits below it: a batch never exceeds what the topics take, and a record too large for them is refused
locally, at once, and handled as a record fault (``worker.runtime.sink``). Limits set lower in
``kafka.producer_extra`` are kept. A topic whose configs cannot be read (no permission) is logged and left
to the broker's check.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import ConfigResource, ResourceType  # type: ignore[attr-defined]

from worker.runtime.config import Settings

log = logging.getLogger("worker.runtime")
MARGIN = 128  # a record batch's own framing (61 bytes of header, per-record lengths) on top of its records
LIBRDKAFKA_MIN = 1000  # message.max.bytes may not be set lower
DEFAULTS = {"message.max.bytes": 1_000_000, "batch.size": 1_000_000}
TIMEOUT_S = 10.0


class ConfigAdmin(Protocol):
    def describe_configs(self, resources: list[ConfigResource], **kwargs: Any) -> dict[Any, Any]: ...


def fit_to_topics(settings: Settings, admin: ConfigAdmin) -> Settings:
    """``settings`` with the producer's limits below the smallest ``max.message.bytes`` of the topics it
    writes, or unchanged when they already are (see the module docstring). Blocks on the broker."""
    smallest = _smallest_limit(settings, admin)
    if smallest is None:
        return settings
    fit = max(LIBRDKAFKA_MIN, smallest - MARGIN)
    producer = settings.producer_config()
    current = {key: int(producer.get(key, default)) for key, default in DEFAULTS.items()}
    if all(value <= fit for value in current.values()):
        return settings
    lowered = {key: str(min(value, fit)) for key, value in current.items()}
    extra = {"max_message_bytes": smallest, **lowered}
    log.info("producer limits lowered to what the topics take", extra=extra)
    kafka = settings.kafka.model_copy(update={"producer_extra": {**settings.kafka.producer_extra, **lowered}})
    return settings.model_copy(update={"kafka": kafka})


def _smallest_limit(settings: Settings, admin: ConfigAdmin) -> int | None:
    topics = [settings.output.topic, settings.dead_letter.topic]
    resources = [ConfigResource(ResourceType.TOPIC, topic) for topic in topics]
    limits: list[int] = []
    for resource, future in admin.describe_configs(resources, request_timeout=TIMEOUT_S).items():
        try:
            entry = future.result(timeout=TIMEOUT_S).get("max.message.bytes")
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            log.warning("cannot read a topic's max.message.bytes: the broker's check is left to catch it",
                        extra={"topic": resource.name, "error": str(error)})  # fmt: skip
            continue
        if entry is not None and entry.value is not None:
            limits.append(int(entry.value))
    return min(limits) if limits else None
