"""The real worker (``rtml-worker run``'s ``serve``) with faults the chaos tests time: aborts and stalls.

    python tests/chaos/faulty_worker.py --config FILE

Faults, from the environment (each off unless set), seeded by ``RTML_CHAOS_SEED`` so a run can be replayed:

* ``RTML_CHAOS_ABORT_RATE``: each ``commit_transaction`` fails with an abortable error with this probability
  before it reaches the broker, as a coordinator that fails the commit would; the loop must abort the open
  transaction for real, rewind and retry, and nothing of it may be seen by a read_committed reader;
* ``RTML_CHAOS_STALL_EVERY`` and ``RTML_CHAOS_STALL_S``: every Nth batch the graph stage takes that many
  seconds more, as a slow model would, so the loop does not poll for that long (past
  ``max.poll.interval.ms`` when the test sets it lower).

Everything else is the worker as it runs in production: librdkafka's clients, the real broker and registry.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from worker.runtime.cli import serve
from worker.runtime.clients import ConfluentClients, ConsumerClient, ProducerClient
from worker.runtime.config import load_settings
from worker.runtime.logs import configure_logging
from worker.runtime.pipeline import Pipeline


class AbortingProducer:
    """librdkafka's producer, but ``commit_transaction`` fails (abortably) at the given rate."""

    def __init__(self, producer: ProducerClient, rate: float, rng: random.Random) -> None:
        self._producer, self._rate, self._rng = producer, rate, rng
        self.aborts = 0

    def commit_transaction(self, timeout: float = -1) -> None:
        if self._rng.random() < self._rate:
            self.aborts += 1
            raise KafkaException(
                KafkaError(KafkaError._STATE, "chaos: commit failed", txn_requires_abort=True)
            )
        self._producer.commit_transaction(timeout)

    def __len__(self) -> int:
        return len(self._producer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)


class FaultyClients(ConfluentClients):
    def __init__(self, abort_rate: float, rng: random.Random) -> None:
        self.abort_rate, self.rng = abort_rate, rng

    def producer(self, config: Mapping[str, Any]) -> ProducerClient:
        real = super().producer(config)
        return AbortingProducer(real, self.abort_rate, self.rng) if self.abort_rate else real  # type: ignore[return-value]

    def consumer(self, config: Mapping[str, Any]) -> ConsumerClient:
        return super().consumer(config)


def stalling(every: int, seconds: float) -> Any:
    """Make every ``every``-th batch's graph stage take ``seconds`` longer."""

    def prepare(pipeline: Pipeline) -> Pipeline:
        process, count = pipeline.process, [0]

        def slow(*args: Any, **kwargs: Any) -> Any:
            count[0] += 1
            if count[0] % every == 0:
                time.sleep(seconds)
            return process(*args, **kwargs)

        pipeline.process = slow  # type: ignore[method-assign]
        return pipeline

    return prepare


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    configure_logging(settings.log_level)
    rng = random.Random(int(os.environ.get("RTML_CHAOS_SEED", "0")))
    clients = FaultyClients(float(os.environ.get("RTML_CHAOS_ABORT_RATE", "0")), rng)
    every = int(os.environ.get("RTML_CHAOS_STALL_EVERY", "0"))
    prepare = stalling(every, float(os.environ.get("RTML_CHAOS_STALL_S", "0"))) if every else None
    return serve(settings, clients=clients, prepare=prepare)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
