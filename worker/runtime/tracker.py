"""At-least-once commit points: which input offsets are safe to commit because their outputs are delivered.

Offsets travel with the data; only the last step commits. Each produced batch becomes an ``InFlight`` holding,
per input partition, the offset after its last message (its commit point) and its first offset (where to
rewind to), the count of outputs (scores and dead-letter records) the broker has not acknowledged, and the
outputs that failed. Every output carries the delivery callback, so every output's fate counts: a partition's
commit point never passes a batch that has an unacknowledged or failed output, so a crash can only replay,
never skip. Counting is per output with no per-output state; what failed is identified only when something
fails (``InFlight.failures``). A report with no error and no offset is a failure too (``IMPLICIT_ACK``).

Not thread-safe: delivery callbacks run inside ``Producer.poll``/``flush`` on the loop's thread.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message

TopicPartition = tuple[str, int]

# librdkafka's idempotent producer reports a batch delivered, with no offset, when a later batch of its
# partition is acknowledged first ("implicitly acked", rd_kafka_dr_implicit_ack): it assumes the earlier
# request was written and only its response lost. A partition with no producer state (a topic deleted and
# created again) takes the later batch after refusing the earlier one (NOT_LEADER), so that batch was never
# written. Every successful acks=all write has an offset, so no offset means unknown: produced again.
IMPLICIT_ACK = KafkaError(
    KafkaError._INCONSISTENT,
    "reported delivered with no offset (implicitly acknowledged by a later batch): produced again",
    retriable=True,
)


@dataclass(frozen=True)
class Failure:
    """One output the producer could not deliver: the error and what the delivery report carried."""

    error: KafkaError
    topic: str
    key: bytes | None
    value: bytes | None


@dataclass(eq=False)
class InFlight:
    """One batch's outputs on their way to the broker."""

    next_offsets: dict[TopicPartition, int]
    first_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    outstanding: int = 0
    failures: list[Failure] = field(default_factory=list)
    outputs: Any = None  # the sink's Outputs, to tell which input a failure answers
    since: float = field(default_factory=time.monotonic)  # when its outputs were handed over

    def on_delivery(self, error: KafkaError | None, message: Message) -> None:
        """Producer delivery callback: once per output."""
        if error is None and message.offset() is None:
            error = IMPLICIT_ACK
        if error is not None:
            self.failures.append(Failure(error, message.topic() or "", message.key(), message.value()))
        self.outstanding -= 1

    def refused(self, failure: Failure) -> None:
        """An output ``produce`` refused at once, so no delivery report will come for it."""
        self.failures.append(failure)

    @property
    def done(self) -> bool:
        return self.outstanding <= 0


class CommitTracker:
    """The ordered batches in flight and the commit point each partition has reached."""

    def __init__(self) -> None:
        self._batches: deque[InFlight] = deque()
        self._done: dict[TopicPartition, int] = {}  # points whose outputs are all delivered
        self._confirmed: dict[TopicPartition, int] = {}  # points the broker confirmed as committed
        self.delivered = 0  # batches whose outputs were all delivered, ever

    def track(self, batch: InFlight) -> None:
        self._batches.append(batch)

    @property
    def outstanding(self) -> int:
        """Outputs produced and not yet acknowledged (or failed), over all batches."""
        self._collect()
        return sum(b.outstanding for b in self._batches)

    @property
    def empty(self) -> bool:
        return not self._batches

    def waiting_since(self) -> float | None:
        """When the oldest batch still awaiting acknowledgements was produced; None if none is. Its age is
        how long the commit has been held, whatever the other outputs (dead letters, say) are doing."""
        self._collect()
        return next((b.since for b in self._batches if b.outstanding > 0), None)

    def failing(self) -> bool:
        """True when an output of a batch in flight failed: the loop must stop and rewind."""
        return any(b.failures for b in self._batches)

    def failures(self) -> list[Failure]:
        return [f for b in self._batches for f in b.failures]

    def to_commit(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Of ``partitions``, the points reached and not yet confirmed: a commit that failed (a rebalance in
        progress) is simply sent again by the next call."""
        self._collect()
        wanted = set(partitions)
        return {tp: o for tp, o in self._done.items() if tp in wanted and self._confirmed.get(tp, -1) < o}

    def _collect(self) -> None:
        """Move the front batches whose outputs were all delivered into the reached points. Called every loop
        turn, so the queue holds only the batches still awaiting acknowledgements (a few)."""
        batches = self._batches
        while batches and batches[0].done and not batches[0].failures:
            self._done.update(batches.popleft().next_offsets)
            self.delivered += 1

    def rewind(self) -> tuple[dict[TopicPartition, int], list[Failure], list[tuple[Any, list[Failure]]]]:
        """Give up the batches from the first one that failed on (every report is in): per partition, the
        first offset they held, where consuming must start again; every failure they reported; and per
        failed batch its outputs with its failures."""
        self._collect()
        points: dict[TopicPartition, int] = {}
        failures: list[Failure] = []
        failed: list[tuple[Any, list[Failure]]] = []
        while self._batches:
            batch = self._batches.popleft()
            failures.extend(batch.failures)
            if batch.failures:
                failed.append((batch.outputs, batch.failures))
            for tp, offset in batch.first_offsets.items():
                points[tp] = min(offset, points.get(tp, offset))
        return points, failures, failed

    def confirm(self, tp: TopicPartition, offset: int) -> None:
        """The broker took ``offset`` as the committed offset of ``tp``."""
        self._confirmed[tp] = max(offset, self._confirmed.get(tp, -1))

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions revoked, lost, or assigned afresh: whatever was known of them is no longer ours."""
        gone = set(partitions)
        for batch in self._batches:
            for tp in gone & batch.next_offsets.keys():
                del batch.next_offsets[tp]
                batch.first_offsets.pop(tp, None)
        for tp in gone:
            self._done.pop(tp, None)
            self._confirmed.pop(tp, None)
