"""Delivery guarantees of ``rtml-worker run`` against the real broker, judged by the one verifier.

* steady: 3 replicas, 12 partitions, 200,000 events: nothing lost, duplicated, wrong or out of order;
* 5 SIGKILLs of a random replica while events arrive (each restarted): at-least-once loses nothing (its
  duplicates are counted and reported); exactly-once loses nothing and duplicates nothing (read_committed);
* a rolling SIGTERM of every replica: nothing lost or duplicated, in both modes;
* negative control: with ``unsafe_commit_on_receipt`` 5 SIGKILLs must make the verifier see loss or
  duplicates, or the verifier proves nothing.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest
from harness import BackgroundProducer, end_offsets, plan_events, produce
from replicas import wait_committed
from scenario import Scenario

PARTITIONS = 12
REPLICAS = 3
STEADY_EVENTS = 200_000
CHAOS_EVENTS = 40_000
CHAOS_RATE = 1000.0  # events/s: the run lasts ~40 s; 5 kills, each after a readiness wait, take ~28 s
KILLS = 5
KILL_EVERY_S = 4.0
COMMIT_TIMEOUT_S = 300.0
DELIVERIES = ["at-least-once", "exactly-once"]


def finish(s: Scenario, sources: dict, started: float) -> None:
    """Wait until everything is committed, stop the replicas gracefully, print the timing."""
    waited = wait_committed(
        s.admin,
        s.group_id,
        s.input_topic,
        end_offsets(sources, s.partitions),
        s.fleet,
        timeout_s=COMMIT_TIMEOUT_S,
    )
    codes = s.fleet.sigterm_all()
    total = sum(len(o) for o in sources.values())
    elapsed = time.monotonic() - started
    print(f"{total} events committed {waited:.1f} s after the last was produced; {elapsed:.1f} s in all")
    assert set(codes.values()) == {0}, f"exit codes {codes}\n{s.fleet.logs()}"


def test_steady_run_answers_every_event_once_right_and_in_order(
    scenario: Callable[..., Scenario],
) -> None:
    s = scenario(partitions=PARTITIONS, replicas=REPLICAS)
    planned = plan_events(s.graph, STEADY_EVENTS, seed=21, schema_id=s.schema_id)
    s.fleet.start()
    started = time.monotonic()
    sources = produce(s.bootstrap_servers, s.input_topic, planned)
    print(f"produced {len(planned)} events in {time.monotonic() - started:.1f} s")
    finish(s, sources, started)
    report = s.verify(sources)
    assert report.total("inputs") == STEADY_EVENTS
    assert report.clean, report.render()


@pytest.mark.parametrize("delivery", DELIVERIES)
def test_sigkills_lose_nothing(scenario: Callable[..., Scenario], delivery: str) -> None:
    s = scenario(partitions=PARTITIONS, replicas=REPLICAS, settings={"delivery": delivery})
    planned = plan_events(s.graph, CHAOS_EVENTS, seed=22, schema_id=s.schema_id)
    s.fleet.start()
    started = time.monotonic()
    background = BackgroundProducer(s.bootstrap_servers, s.input_topic, planned, rate_per_s=CHAOS_RATE)
    rng = random.Random(5)
    for _ in range(KILLS):
        time.sleep(KILL_EVERY_S)
        s.fleet.check()
        killed = s.fleet.kill_random(rng)
        print(f"{time.monotonic() - started:5.1f} s: SIGKILL {killed.name} (start {killed.starts - 1})")
    assert background.running, "the kills must land while events still arrive: raise CHAOS_EVENTS"
    sources = background.result()
    finish(s, sources, started)
    report = s.verify(sources)
    print(f"{delivery}: {report.duplicated} input offsets answered more than once after {KILLS} SIGKILLs")
    assert report.lost == 0, report.render()
    assert report.wrong == report.out_of_order == report.misrouted == report.unknown == 0, report.render()
    if delivery == "exactly-once":
        assert report.duplicated == 0, report.render()


@pytest.mark.parametrize("delivery", DELIVERIES)
def test_rolling_sigterm_loses_and_duplicates_nothing(
    scenario: Callable[..., Scenario], delivery: str
) -> None:
    s = scenario(partitions=PARTITIONS, replicas=REPLICAS, settings={"delivery": delivery})
    planned = plan_events(s.graph, CHAOS_EVENTS, seed=23, schema_id=s.schema_id)
    s.fleet.start()
    started = time.monotonic()
    background = BackgroundProducer(s.bootstrap_servers, s.input_topic, planned, rate_per_s=CHAOS_RATE)
    for replica in s.fleet.replicas:
        time.sleep(KILL_EVERY_S)
        s.fleet.check()
        s.fleet.wait_ready([replica])  # a rolling restart waits for readiness; a SIGTERM mid-import exits -15
        replica.sigterm()
        code = replica.wait(60)
        assert code == 0, f"{replica.name} exited {code} on SIGTERM\n{replica.tail()}"
        replica.start()
        print(f"{time.monotonic() - started:5.1f} s: rolled {replica.name}")
    sources = background.result()
    finish(s, sources, started)
    report = s.verify(sources)
    assert report.clean, report.render()


def test_negative_control_unsafe_commit_on_receipt_is_caught(scenario: Callable[..., Scenario]) -> None:
    # Scores linger 1 s in librdkafka's queue while offsets are committed on receipt, so a kill of a replica
    # that is consuming loses what it had committed and not yet sent. One kill 8 s in found nothing in 2 of
    # 8 runs (lost 0, duplicated 0; one of them the CI of 2c83617, with the 5 ms default linger), though the
    # replica killed owned 4 partitions; why is not known. The control kills as often as the SIGKILL test.
    unsafe = {"unsafe_commit_on_receipt": True, "kafka": {"producer_extra": {"linger.ms": 1000}}}
    s = scenario(partitions=PARTITIONS, replicas=REPLICAS, settings=unsafe)
    planned = plan_events(s.graph, CHAOS_EVENTS, seed=24, schema_id=s.schema_id)
    s.fleet.start()
    started = time.monotonic()
    background = BackgroundProducer(s.bootstrap_servers, s.input_topic, planned, rate_per_s=CHAOS_RATE)
    rng = random.Random(6)
    for _ in range(KILLS):
        time.sleep(KILL_EVERY_S)
        s.fleet.kill_random(rng)
    sources = background.result()
    finish(s, sources, started)
    report = s.verify(sources)
    print(f"negative control: lost {report.lost}, duplicated {report.duplicated} after {KILLS} SIGKILLs")
    assert report.lost + report.duplicated > 0, "the verifier missed the unsafe commits:\n" + report.render()
