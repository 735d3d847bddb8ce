"""Chaos on the broker side: leaders bounced, networks partitioned.

* leader bounces, on the three-broker stack (replication factor 3, ``min.insync.replicas`` 2): the leader
  of the score topic's partition 0 is SIGKILLed (and restarted on its data) or SIGSTOPped (and SIGCONTed),
  in turns, for ``message.timeout.ms`` ± 1 s; at-least-once sets that to 10 s here (its default is no local
  timeout at all), exactly-once has it from ``transaction.timeout.ms``. After each fault the broker is waited
  back into the in-sync replicas; the time until the backlog the fault left is scored again is measured;
* network partitions, through fault proxies the test controls: between the replicas and every broker (the
  replicas bootstrap at the PROXIED listeners), or between the replicas and the registry (with a writer schema
  they have not seen arriving meanwhile): a blackhole of 10 s, 300 ms of latency for 10 s, then connection
  resets for 5 s.

Expected: nothing lost or wrong, no duplicate in exactly-once mode, no worker restart, and after each leader
bounce the throughput back within 15 s.
"""

from __future__ import annotations

import random
import time

import pytest
from chaos_profile import DELIVERIES, FULL, RUNS, pick
from chaos_run import ChaosEnv, ChaosRun, Row, seeds
from faultproxy import FaultProxy, ProxyGroup
from test_chaos_registry import rewritten, second_writer

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(pick(1200, 7200))]
RECOVERY_LIMIT_S = 15.0
MESSAGE_TIMEOUT_MS = 10_000


@pytest.mark.chaos_short
@pytest.mark.parametrize("delivery", DELIVERIES)
def test_chaos_leader_bounces(chaos_env: ChaosEnv, chaos_stack: object, delivery: str) -> None:
    cycles = pick(2, 20)
    row = Row.of(f"leader bounces: SIGKILL/SIGSTOP {cycles}x, timeout ± 1 s ({delivery})")
    settings: dict[str, object] = {"delivery": delivery}
    if delivery == "at-least-once":
        settings["kafka"] = {"producer_extra": {"message.timeout.ms": MESSAGE_TIMEOUT_MS}}
    cluster = chaos_env.cluster
    worst = 0.0
    deepest = 0.0  # the largest backlog a fault left, in seconds of load
    for seed in seeds(51, RUNS):
        rng = random.Random(seed)
        rate = 300.0
        run = ChaosRun(
            chaos_env, seed=seed, events=int(rate * (cycles * 35 + 30)), rate=rate, settings=settings
        )
        with run:
            run.start()
            time.sleep(5)
            for cycle in range(cycles):
                leader = cluster.leader_of(run.topics["scores"], 0)
                length = MESSAGE_TIMEOUT_MS / 1000 + rng.choice((-1.0, 0.0, 1.0))
                before = run.progress.lag()
                run.progress.peak_lag()
                if cycle % 2 == 0:
                    cluster.sigkill(leader)
                    time.sleep(length)
                    cluster.restart(leader)
                else:
                    cluster.sigstop(leader)
                    time.sleep(length)
                    cluster.sigcont(leader)
                healed = time.monotonic()
                caught_up = lambda b=before + 2 * rate, r=run: r.progress.lag() <= b  # noqa: E731
                run.wait(caught_up, "the backlog scored again", 120)
                took = time.monotonic() - healed
                worst = max(worst, took)
                run.fault(f"{'SIGKILL' if cycle % 2 == 0 else 'SIGSTOP'} of broker {leader} "
                          f"for {length:.0f} s: scored again {took:.1f} s after")  # fmt: skip
                print(f"seed {seed} cycle {cycle}: {run.notes[-1]}", flush=True)
                deepest = max(deepest, run.progress.peak_lag() / rate)
                cluster.wait_in_sync(run.topics["scores"], 120)
            result = run.finish()
        row.add(result)
    row.notes.append(f"backlog at most {deepest:.1f} s of load during a fault; "
                     f"scored again at most {worst:.1f} s after a fault ended")  # fmt: skip
    # at-least-once with a finite message.timeout.ms: a timed-out head is replayed after its tail
    row.check(delivery, in_order=delivery == "exactly-once")  # loss, duplicates, order: whatever the time
    if worst > RECOVERY_LIMIT_S:
        late = f"the backlog took {worst:.1f} s to be scored again, over the {RECOVERY_LIMIT_S:.0f} s bound"
        row.passed = False  # a claim did not hold: no row is kept
        row.notes.insert(0, f"FAILED its recovery bound: {late}")
        if delivery == "exactly-once":
            # A known fault, not yet fixed: after a SIGKILL of the group coordinator's broker librdkafka's
            # send_offsets_to_transaction can stay blocked (#5456, #5511) until the watchdog gives the
            # producer up at the transaction's deadline, about 17 s after it began.
            pytest.xfail(f"{late} (librdkafka #5456/#5511: a send_offsets_to_transaction stuck)")
        pytest.fail(late)


PARTITION_TARGETS = ("broker", "registry")


@pytest.mark.parametrize("target", PARTITION_TARGETS)
@pytest.mark.parametrize("delivery", DELIVERIES if FULL else DELIVERIES[:1])
def test_chaos_network_partitions(
    chaos_env: ChaosEnv, chaos_stack: object, delivery: str, target: str
) -> None:
    row = Row.of(f"network partition worker-{target}: blackhole, latency, reset ({delivery})")
    for seed in seeds(52 if target == "broker" else 53, RUNS):
        with _proxies(chaos_env, chaos_stack, target) as (proxy, settings):
            run = ChaosRun(chaos_env, seed=seed, events=pick(12_000, 16_000), rate=300.0,
                           settings={"delivery": delivery, **settings})  # fmt: skip
            with run:
                if target == "registry":  # the registry is asked only for writer schemas not seen yet
                    new_id = second_writer(chaos_env.registry_url, f"{run.topics['input']}-value")
                    run.planned = rewritten(run.planned, new_id, len(run.planned) // 4)
                run.start()
                run.wait_progress(0.15)
                slow = lambda p=proxy: p.latency(300)  # noqa: E731
                faults = (
                    ("blackhole", 10, proxy.blackhole),
                    ("latency 300 ms", 10, slow),
                    ("reset", 5, proxy.reset),
                )
                for fault, seconds, apply in faults:
                    apply()
                    run.fault(f"{fault} at {run.elapsed():.0f} s for {seconds} s")
                    time.sleep(seconds)
                    proxy.pass_through()
                    time.sleep(5)
                result = run.finish()
        row.add(result)
    row.check(delivery)


class _proxies:  # noqa: N801 - a context manager used as a function
    """The fault proxy (or group) for ``target`` and the worker settings that route through it."""

    def __init__(self, env: ChaosEnv, stack: object, target: str) -> None:
        self.env, self.stack, self.target = env, stack, target

    def __enter__(self) -> tuple[FaultProxy | ProxyGroup, dict[str, object]]:
        if self.target == "broker":
            self.proxy: FaultProxy | ProxyGroup = ProxyGroup(self.stack.proxy_routes())  # type: ignore[attr-defined]
            bootstrap = self.stack.proxied_bootstrap  # type: ignore[attr-defined]
            return self.proxy, {"kafka": {"bootstrap_servers": bootstrap}}
        port = int(self.env.registry_url.split(":")[2].split("/")[0])
        self.proxy = FaultProxy(0, "127.0.0.1", port)
        return self.proxy, {"schema_registry": {"url": f"http://127.0.0.1:{self.proxy.port}/apis/ccompat/v7"}}

    def __exit__(self, *_: object) -> None:
        self.proxy.close()
