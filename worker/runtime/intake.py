"""The pending messages: what the consumer returned and the loop has not processed yet, and when it came.

The loop calls ``fetch`` once per turn and ``take`` when a batch is ``due``; the rebalance callbacks, which
librdkafka runs inside ``fetch``'s ``consume``/``poll``, call ``revoke``; the delivery modes ``drop`` what a
rewind reads again. All on the loop's thread. ``fetch`` blocks only when idle (in ``poll``, up to
``IDLE_BLOCK_S``) and raises ``FatalError`` when the consumer reports a fatal error; nothing else blocks or
raises.

Batching: drain with a non-blocking ``consume`` and block (in ``poll``) only when idle: a blocking
``consume(n, timeout)`` waits out its whole timeout even with messages queued. With ``batch.max_wait_ms = 0``
(the default) a batch is what arrived while the previous one was processed, so batches grow with the load;
above 0 a batch also waits that long to fill, up to ``batch.max_records``.

Messages the same ``consume`` returned for a partition it revoked are dropped (``gone``): they are no longer
this replica's to process.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import Message

from worker.errors import FatalError
from worker.runtime.clients import ConsumerClient
from worker.runtime.config import BatchSettings

log = logging.getLogger("worker.runtime")
TP = tuple[str, int]  # (topic, partition), as every dict of the loop keys a partition
IDLE_BLOCK_S = 0.1


class Intake:
    """The messages consumed and not yet processed, in consume order, with when each was returned."""

    def __init__(self, consumer: ConsumerClient, batching: BatchSettings, assigned: set[TP]) -> None:
        self.consumer = consumer
        self.batching = batching
        self.assigned = assigned  # the loop's set, kept by the rebalance callbacks
        self.pending: list[Message] = []
        self.received: list[float] = []  # when consume() returned each pending message (monotonic)
        self.gone: set[TP] = set()  # partitions revoked or lost during the current consume call
        self._first_at = 0.0

    def fetch(self, paused: bool) -> None:
        """Take what the consumer has; while paused or full, still poll it for the group's sake."""
        room = self.batching.max_records - len(self.pending)
        if paused or room <= 0:
            first = self.consumer.poll(0)
            messages = [first] if first is not None else []
        else:
            messages = self.consumer.consume(room, 0)
            if not messages and not self.pending:
                # Idle: block in poll, which returns on the first message (consume(n, t) would wait out t).
                first = self.consumer.poll(IDLE_BLOCK_S)
                if first is not None:
                    messages = [first, *self.consumer.consume(room - 1, 0)]
        if self.gone:  # the call served a revoke: what it returned of those partitions is not ours
            messages = [m for m in messages if (m.topic(), m.partition()) in self.assigned]
            self.gone.clear()
        if messages:
            self._add(messages)

    def due(self, now: float, paused: bool) -> bool:
        """A batch is due: full, paused (no more will come), or its first message waited ``max_wait_ms``."""
        batching = self.batching
        return (
            len(self.pending) >= batching.max_records
            or paused
            or (now - self._first_at >= batching.max_wait_ms / 1000)
        )

    def take(self) -> tuple[list[Message], list[float]]:
        """Every pending message, and when each was returned; nothing is pending after."""
        taken = self.pending, self.received
        self.pending, self.received = [], []
        return taken

    def put_back(self, batch: list[Message], received: list[float]) -> None:
        """A taken batch that could not be processed (the registry is down): first in line again."""
        self.pending, self.received = batch + self.pending, received + self.received

    def drop(self, partitions: set[TP] | None = None) -> dict[TP, int]:
        """Drop unprocessed messages (of ``partitions``, or all): nothing was produced for them. Their first
        offset per partition, where consuming must start again if they are to be read again."""
        firsts: dict[TP, int] = {}
        kept: list[tuple[Message, float]] = []
        for message, at in zip(self.pending, self.received, strict=True):
            tp = (message.topic(), message.partition())
            if partitions is None or tp in partitions:
                firsts.setdefault(tp, message.offset())  # type: ignore[arg-type]
            else:
                kept.append((message, at))
        self.pending, self.received = [m for m, _ in kept], [t for _, t in kept]
        return firsts

    def revoke(self, partitions: set[TP]) -> None:
        """Partitions revoked or lost: their pending messages go, and so does what this consume returns."""
        self.gone |= partitions
        self.drop(partitions)

    def _add(self, messages: list[Message]) -> None:
        if not self.pending:
            self._first_at = time.monotonic()
        valid = _valid(messages)
        self.pending.extend(valid)
        self.received.extend([time.monotonic()] * len(valid))


def _valid(messages: list[Message]) -> list[Message]:
    """The messages without an error; a fatal consumer error raises, any other is logged."""
    good = [m for m in messages if m.error() is None]
    for message in messages if len(good) != len(messages) else ():
        error = message.error()
        if error is not None and error.fatal():
            raise FatalError(f"consumer: {error}")
        if error is not None:
            log.warning("consumer error", extra={"error": str(error)})
    return good
