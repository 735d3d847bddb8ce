"""Chaos: output-side poison, a record fault and never a worker fault.

* oversized envelope: poison inputs of about 1 MB (under the worker's input limit of 1 MiB) that do not
  decode; their dead-letter envelope is larger than the producer's ``message.max.bytes``: it is truncated,
  with a header saying so, and the worker goes on;
* a topic with a small ``max.message.bytes``: the dead-letter topic takes at most 4,000 bytes a batch and
  some poison inputs are larger; the broker refuses them (and the records batched with them), the worker
  rewinds, produces each refused record alone, truncates the ones that are too large;
* a deleted output topic: the score topic is deleted under load and created again 15 s later; meanwhile
  every score fails, nothing past them is committed, the replicas report not ready, and once the topic is
  back everything goes out (the scores the deleted topic held were read before it was deleted).

Expected: nothing lost, nothing wrong, no duplicate in exactly-once mode, no worker restart.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
from chaos_profile import DELIVERIES, RUNS, pick
from chaos_run import ChaosEnv, ChaosRun, Row, seeds
from harness import Planned

pytestmark = [pytest.mark.chaos, pytest.mark.chaos_short, pytest.mark.timeout(pick(900, 2700))]
EVENTS = pick(6_000, 10_000)
RATE = 400.0
DELETED_S = 15.0


def with_big_poison(planned: list[Planned], size: int, every: int, seed: int) -> list[Planned]:
    """Every ``every``-th event replaced by ``size`` bytes that are no Avro record (dead-lettered)."""
    rng = np.random.default_rng(seed)
    out = list(planned)
    for i in range(every // 2, len(out), every):
        garbage = b"\x01" + rng.bytes(size - 1)  # a wrong magic byte: a decode error at once
        out[i] = replace(out[i], value=garbage, expected=None, poison="oversized")
    return out


@pytest.mark.parametrize("delivery", DELIVERIES)
def test_chaos_oversized_dead_letters_are_truncated(chaos_env: ChaosEnv, delivery: str) -> None:
    row = Row.of(f"output poison: oversized envelope ({delivery})")
    for seed in seeds(21, RUNS):
        run = ChaosRun(chaos_env, seed=seed, events=EVENTS, rate=RATE, settings={"delivery": delivery})
        with run:
            run.planned = with_big_poison(run.planned, 1_040_000, every=EVENTS // 5, seed=seed)
            run.fault(f"{sum(p.poison == 'oversized' for p in run.planned)} inputs of 1,040,000 bytes")
            run.start()
            result = run.finish()
        row.add(result)
    row.check(delivery)


@pytest.mark.parametrize("delivery", DELIVERIES)
def test_chaos_a_dead_letter_topic_with_a_small_limit(chaos_env: ChaosEnv, delivery: str) -> None:
    row = Row.of(f"output poison: max.message.bytes 4000 ({delivery})")
    for seed in seeds(22, RUNS):
        run = ChaosRun(
            chaos_env, seed=seed, events=EVENTS, rate=RATE, settings={"delivery": delivery},
            topic_config={"dead": {"max.message.bytes": "4000"}},
        )  # fmt: skip
        with run:
            run.planned = with_big_poison(run.planned, 6_000, every=EVENTS // 10, seed=seed)
            run.fault(f"{sum(p.poison == 'oversized' for p in run.planned)} inputs of 6,000 bytes")
            run.start()
            result = run.finish()
        row.add(result)
    row.check(delivery)


@pytest.mark.parametrize("delivery", DELIVERIES)
def test_chaos_a_deleted_output_topic(chaos_env: ChaosEnv, delivery: str) -> None:
    row = Row.of(f"output poison: score topic deleted {DELETED_S:.0f} s ({delivery})")
    for seed in seeds(23, RUNS):
        run = ChaosRun(chaos_env, seed=seed, events=EVENTS, rate=RATE, settings={"delivery": delivery})
        with run:
            run.start(load=False)
            split = EVENTS // 3
            run.wait_committed(run.load(run.planned[:split]).result())
            earlier = run.scores_now()  # the deleted topic's scores, all delivered and committed
            chaos_env.delete_topic(run.topics["scores"])
            run.fault(f"score topic deleted at {run.elapsed():.0f} s")
            run.load(run.planned[split:])
            time.sleep(DELETED_S - 1)
            not_ready = [r.name for r in run.fleet.replicas if r.alive and r.readyz() != 200]
            chaos_env.recreate_topic(run.topics["scores"], run.partitions)
            result = run.finish(earlier=earlier)
        row.add(result)
        assert not_ready, "the replicas stayed ready while every score failed"
    # A recreated partition has no producer state, so the broker may take a batch before the one it refused
    # (NOT_LEADER); that one, implicitly acked by librdkafka, is produced again after it. Exactly-once aborts.
    row.check(delivery, in_order=delivery == "exactly-once")
