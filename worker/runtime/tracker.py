"""At-least-once commit points: which input offsets are safe to commit because their outputs are delivered.

Offsets travel with the data; only the last step commits. Each consumed batch becomes an ``InFlight`` holding,
per input partition, the offset after its last message, and a count of outputs (scores or dead-letter records)
the broker has not acknowledged yet. The producer's delivery callbacks count it down. ``advance`` pops the
batches that completed *in order* from the front and returns the new commit point of each partition: a
partition's offsets never pass a batch whose outputs are still in flight, so a crash can only replay, never
skip. Accounting is per batch (a counter), not per event.

Not thread-safe: the delivery callbacks run inside ``Producer.poll``/``flush`` on the loop's thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaError, Message

TopicPartition = tuple[str, int]


@dataclass(eq=False)
class InFlight:
    """One batch's outputs on their way to the broker."""

    next_offsets: dict[TopicPartition, int]
    outstanding: int = 0
    error: KafkaError | None = None

    def on_delivery(self, error: KafkaError | None, _message: Message) -> None:
        """Producer delivery callback: once per output."""
        if error is not None and self.error is None:
            self.error = error
        self.outstanding -= 1

    @property
    def done(self) -> bool:
        return self.outstanding <= 0


class CommitTracker:
    """The ordered batches in flight and the commit point each partition has reached."""

    def __init__(self) -> None:
        self._batches: deque[InFlight] = deque()
        self._done: dict[TopicPartition, int] = {}  # points whose outputs are all delivered
        self._confirmed: dict[TopicPartition, int] = {}  # points the broker confirmed as committed

    def track(self, batch: InFlight) -> None:
        self._batches.append(batch)

    @property
    def outstanding(self) -> int:
        """Outputs produced and not yet acknowledged, over all batches."""
        self._collect()
        return sum(b.outstanding for b in self._batches)

    @property
    def empty(self) -> bool:
        return not self._batches

    def failed(self) -> KafkaError | None:
        """The first delivery error of any batch: outputs were lost, so the worker must not go on."""
        self._collect()
        return next((b.error for b in self._batches if b.error is not None), None)

    def advance(self) -> dict[TopicPartition, int]:
        """Pop the completed batches at the front; the commit point of each partition they move."""
        points: dict[TopicPartition, int] = {}
        while self._batches and self._batches[0].done and self._batches[0].error is None:
            points.update(self._batches.popleft().next_offsets)
        return points

    def to_commit(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Of ``partitions``, the points reached and not yet confirmed: a commit that failed (a rebalance in
        progress) is simply sent again by the next call."""
        self._collect()
        wanted = set(partitions)
        return {tp: o for tp, o in self._done.items() if tp in wanted and self._confirmed.get(tp, -1) < o}

    def _collect(self) -> None:
        """Move the completed front batches into the reached points. Called every loop turn, so the queue
        holds only the batches still awaiting acknowledgements (a few), not a commit interval's worth."""
        if self._batches and self._batches[0].done:
            self._done.update(self.advance())

    def confirm(self, tp: TopicPartition, offset: int) -> None:
        """The broker took ``offset`` as the committed offset of ``tp``."""
        self._confirmed[tp] = max(offset, self._confirmed.get(tp, -1))

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions revoked or lost: their offsets are no longer ours to commit."""
        gone = set(partitions)
        for batch in self._batches:
            for tp in gone & batch.next_offsets.keys():
                del batch.next_offsets[tp]
        for tp in gone:
            self._done.pop(tp, None)
            self._confirmed.pop(tp, None)

    def pending_for(self, partitions: Iterable[TopicPartition]) -> bool:
        """True while a batch still holding any of ``partitions`` awaits acknowledgements."""
        wanted = set(partitions)
        return any(not b.done and wanted & b.next_offsets.keys() for b in self._batches)
