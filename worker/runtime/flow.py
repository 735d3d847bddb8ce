"""Flow control: pausing and resuming the assigned partitions, and the watch on outputs that do not go out.

The loop calls ``update`` at the end of every turn; the delivery modes and the breaker's admission call
``pause`` at once when nothing more may be consumed (a rewind starts, the breaker trips). On the loop's
thread; nothing blocks or raises.

Waiting without stalling the group: while partitions are paused (more than ``batch.max_in_flight`` outputs
unacknowledged, librdkafka's queue full, the registry down, a rewind or its backoff, the breaker open), the
loop keeps turning: it polls the consumer (serving rebalances and commit results), serves delivery reports
and beats the health heartbeat, so ``max.poll.interval.ms`` and ``/healthz`` never see a stall.

Per turn, in order:
  1. backpressure: above ``batch.max_in_flight`` outputs unacknowledged, the partitions are held until half
     of them are acknowledged;
  2. the stall watch: the oldest outputs in flight waiting ``OUTPUT_STALL_S``: not ready (a rewind reports
     its own reason instead), ready again once they are acknowledged. The age of the oldest, not the time
     since any acknowledgement: dead letters going out must not hide scores that do not (a deleted score
     topic, whose outputs librdkafka holds up to ``topic.metadata.propagation.max.ms``);
  3. paused while the loop holds (waiting on something) or over the limit, resumed otherwise; partitions
     assigned while paused are paused here, outside the rebalance callback (``added``).

Resumed again every ``RESUME_AGAIN_S`` while not paused: librdkafka skips a resume of a partition whose
pause it has queued but not applied yet (``rd_kafka_toppar_op_pause_resume`` checks the applied flag), and
then applies the pause: the partition stays paused for good, its position invalid, with no error (seen in
the chaos suite after rebalances during an abort's backoff; librdkafka issue #5591). A resume of a
partition that is not paused costs nothing there (no op, no version barrier).
"""

from __future__ import annotations

import time

from confluent_kafka import TopicPartition

from worker.runtime.clients import ConsumerClient
from worker.runtime.health import Health
from worker.runtime.intake import TP
from worker.runtime.metrics import Metrics

OUTPUT_STALL_S = 10.0  # the oldest outputs in flight waiting this long: not ready
RESUME_AGAIN_S = 1.0  # while not paused, every assigned partition is resumed again this often


class Flow:
    """Whether the assigned partitions are paused, and why they must be."""

    def __init__(
        self,
        consumer: ConsumerClient,
        assigned: set[TP],
        metrics: Metrics,
        health: Health,
        max_in_flight: int,
    ) -> None:
        self.consumer = consumer
        self.assigned = assigned  # the loop's set, kept by the rebalance callbacks
        self.metrics = metrics
        self.health = health
        self.max_in_flight = max_in_flight
        self.paused = False
        self._over_limit = False
        self._stalled = False  # the stall watch made the worker not ready
        self._resumed_at = time.monotonic()
        self._added: list[TopicPartition] = []  # assigned while paused, to pause at the next update

    def update(self, outstanding: int, holding: bool, rewinding: bool, waiting_since: float | None) -> None:
        """Pause or resume the partitions: held while waiting on something (``holding``), and above
        ``batch.max_in_flight`` unacknowledged outputs until half of them are acknowledged. ``waiting_since``:
        when the oldest outputs in flight were handed over (``DeliveryMode.waiting_since``)."""
        limit = self.max_in_flight
        self._over_limit = outstanding > limit or (self._over_limit and outstanding > limit // 2)
        self._watch_outputs(outstanding, rewinding, waiting_since)
        wanted = holding or self._over_limit
        if wanted and not self.paused:
            self.pause()
        elif not wanted and self.paused:
            self.resume()
        elif self.paused and self._added:
            self.consumer.pause(self._added)
            self.metrics.set_paused(len(self.assigned))
        elif not self.paused and time.monotonic() - self._resumed_at >= RESUME_AGAIN_S:
            self.resume()  # see the module docstring: a resume librdkafka skipped
        self._added = []

    def added(self, partitions: list[TopicPartition]) -> None:
        """Partitions just assigned (in the rebalance callback, before librdkafka applies the assignment):
        if the loop is paused, they are paused at the next ``update``, once the assignment is applied."""
        if self.paused:
            self._added.extend(partitions)

    def pause(self) -> None:
        self.paused, self._added = True, []
        self.consumer.pause([TopicPartition(t, p) for t, p in self.assigned])
        self.metrics.set_paused(len(self.assigned))

    def resume(self) -> None:
        self.paused, self._added = False, []
        self.consumer.resume([TopicPartition(t, p) for t, p in self.assigned])
        self.metrics.set_paused(0)
        self._resumed_at = time.monotonic()

    def _watch_outputs(self, outstanding: int, rewinding: bool, waiting_since: float | None) -> None:
        """Not ready while the oldest outputs in flight have waited ``OUTPUT_STALL_S``; a rewind's own
        reason, once it starts, is the rewind's to clear."""
        if rewinding:
            self._stalled = False
            return
        waited = 0.0 if waiting_since is None else time.monotonic() - waiting_since
        if waited >= OUTPUT_STALL_S:
            self._stalled = True
            self.health.set_outputs_down(
                f"{outstanding} outputs waiting on the broker, the oldest {waited:.0f} s"
            )
        elif self._stalled:
            self._stalled = False
            self.health.set_outputs_down(None)
