"""The Kafka clients the loop talks to, as small protocols, and the one place librdkafka's are created.

The loop never builds a client itself: it asks a ``KafkaClients`` factory for a consumer and a producer, so
the same loop runs against librdkafka (``ConfluentClients``, the default) or the in-memory broker of
``worker.runtime.inmemory`` (unit tests of the loop's ordering). The protocols list exactly the calls the loop
makes; both implementations are held to one contract suite (``tests/contract``).

librdkafka's own log lines go through Python logging (``worker.librdkafka``) as JSON, and a line repeated
within ``REPEAT_WINDOW_S`` is logged once with a count of what was suppressed: a dead broker makes librdkafka
say the same thing several times a second.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, cast

from confluent_kafka import Consumer, Message, Producer, TopicPartition

REPEAT_WINDOW_S = 10.0
GROUP_METADATA_MAGIC = b"CGMDv2:"
OnPartitions = Callable[[Any, list[TopicPartition]], None]
OnDelivery = Callable[[Any, Message], None]


def membership(group_metadata: Any) -> tuple[int, str]:
    """(generation, member id) of what ``consumer_group_metadata`` returned, in librdkafka's serialised form
    (``rd_kafka_consumer_group_metadata_write``: "CGMDv2:", the generation as a native int32, then the group
    id and the member id, each NUL-terminated); (-1, "") for a form it does not know."""
    data = bytes(group_metadata)
    if not data.startswith(GROUP_METADATA_MAGIC) or len(data) < len(GROUP_METADATA_MAGIC) + 4:
        return -1, ""
    at = len(GROUP_METADATA_MAGIC)
    generation = int.from_bytes(data[at : at + 4], sys.byteorder, signed=True)
    parts = data[at + 4 :].split(b"\0", 2)
    return generation, parts[1].decode(errors="replace") if len(parts) > 2 else ""


class ConsumerClient(Protocol):
    """The consumer calls of the loop (``confluent_kafka.Consumer`` satisfies it)."""

    def subscribe(
        self,
        topics: list[str],
        on_assign: OnPartitions = ...,
        on_revoke: OnPartitions = ...,
        on_lost: OnPartitions = ...,
    ) -> None: ...
    def consume(self, num_messages: int = ..., timeout: float = ...) -> list[Message]: ...
    def poll(self, timeout: float = ...) -> Message | None: ...
    def pause(self, partitions: list[TopicPartition]) -> None: ...
    def resume(self, partitions: list[TopicPartition]) -> None: ...
    def seek(self, partition: TopicPartition) -> None: ...
    def assignment(self) -> list[TopicPartition]: ...
    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]: ...
    def committed(self, partitions: list[TopicPartition], timeout: float = ...) -> list[TopicPartition]: ...
    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool = ...) -> Any: ...
    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = ..., cached: bool = ...
    ) -> tuple[int, int]: ...
    def consumer_group_metadata(self) -> Any: ...
    def memberid(self) -> str | None: ...
    def close(self) -> None: ...


class ProducerClient(Protocol):
    """The producer calls of the loop (``confluent_kafka.Producer`` satisfies it)."""

    def produce(  # noqa: PLR0917 - librdkafka's signature
        self,
        topic: str,
        value: bytes | None = ...,
        key: bytes | None = ...,
        partition: int = ...,
        on_delivery: OnDelivery | None = ...,
        headers: Sequence[tuple[str, bytes]] | None = ...,
    ) -> None: ...
    def poll(self, timeout: float = ...) -> int: ...
    def flush(self, timeout: float = ...) -> int: ...
    def purge(self, in_queue: bool = ..., in_flight: bool = ..., blocking: bool = ...) -> None: ...
    def list_topics(self, topic: str | None = ..., timeout: float = ...) -> Any: ...
    def init_transactions(self, timeout: float = ...) -> None: ...
    def begin_transaction(self) -> None: ...
    def send_offsets_to_transaction(
        self, positions: list[TopicPartition], group_metadata: Any, timeout: float = ...
    ) -> None: ...
    def commit_transaction(self, timeout: float = ...) -> None: ...
    def abort_transaction(self, timeout: float = ...) -> None: ...
    def __len__(self) -> int: ...


class KafkaClients(Protocol):
    """Makes the loop's clients from librdkafka configuration dicts."""

    def consumer(self, config: Mapping[str, Any]) -> ConsumerClient: ...
    def producer(self, config: Mapping[str, Any]) -> ProducerClient: ...


class ConfluentClients:
    """librdkafka's clients, with their log lines routed through ``librdkafka_logger()``."""

    def consumer(self, config: Mapping[str, Any]) -> ConsumerClient:
        return cast(ConsumerClient, Consumer({**config, "logger": librdkafka_logger()}))

    def producer(self, config: Mapping[str, Any]) -> ProducerClient:
        return cast(ProducerClient, Producer({**config, "logger": librdkafka_logger()}))


class _RepeatFilter(logging.Filter):
    """Lets a message through once per window; the next one after the window says how many were dropped."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self._window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, int]] = {}  # message -> (window ends, dropped in it)

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        now = self._clock()
        with self._lock:
            ends, dropped = self._seen.get(text, (0.0, 0))
            if now < ends:
                self._seen[text] = (ends, dropped + 1)
                return False
            if len(self._seen) > 1000:  # distinct lines are few; never let hostile text grow it
                self._seen.clear()
            self._seen[text] = (now + self._window_s, 0)
        if dropped:
            record.repeated = dropped  # an extra field of the JSON line
        return True


_LOGGER = logging.getLogger("worker.librdkafka")
_LOGGER.addFilter(_RepeatFilter())


def librdkafka_logger() -> logging.Logger:
    """The logger every librdkafka client of the worker logs to (repeats suppressed, see the module doc)."""
    return _LOGGER
