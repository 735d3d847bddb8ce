"""Chaos in exactly-once mode: injected aborts, and two live replicas sharing one transactional id.

* random aborts: every replica's ``commit_transaction`` fails (abortably) 5 % of the time before it reaches
  the broker (tests/chaos/faulty_worker.py); the transaction is aborted for real and its batch rewound;
* fencing: a second replica is started with the first one's ``transactional_id``; the first is fenced at
  its next transactional call and must exit non-zero within 5 s, saying why; the second goes on.

Expected: nothing lost, duplicated or wrong; the aborted transactions' records are never seen by a
read_committed reader; no worker restart (the fenced exit is the scenario's expected outcome).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from chaos_profile import RUNS, pick
from chaos_run import ChaosEnv, ChaosRun, Row, seeds

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(pick(600, 1800))]
FAULTY = [sys.executable, str(Path(__file__).with_name("faulty_worker.py"))]
EXACTLY_ONCE = {"delivery": "exactly-once"}


def test_chaos_random_transaction_aborts(chaos_env: ChaosEnv) -> None:
    row = Row.of("random transaction aborts, 5 % (exactly-once)")
    for seed in seeds(31, RUNS):
        run = ChaosRun(chaos_env, seed=seed, events=pick(8_000, 20_000), rate=500.0, settings=EXACTLY_ONCE,
                       command=FAULTY, replica_env={"RTML_CHAOS_ABORT_RATE": "0.05",
                                                    "RTML_CHAOS_SEED": str(seed)})  # fmt: skip
        with run:
            run.start()
            result = run.finish()
        aborts = sum(replica_aborts(r.log_lines()) for r in run.fleet.replicas)
        result.faults += aborts
        row.add(result)
        assert aborts > 0, "no transaction was aborted: the fault was not injected"
    row.check("exactly-once")


def replica_aborts(lines: list[str]) -> int:
    return sum("transaction aborted" in line for line in lines)


@pytest.mark.chaos_short
def test_chaos_two_replicas_with_one_transactional_id(chaos_env: ChaosEnv) -> None:
    row = Row.of("fencing: two live replicas, one transactional id")
    for seed in seeds(32, RUNS):
        # 30 s of load: the second replica takes up to ~12 s to start here, and a first one that has run
        # out of input makes no transactional call, so it would never learn it was fenced.
        run = ChaosRun(chaos_env, seed=seed, events=pick(12_000, 16_000), rate=400.0, settings=EXACTLY_ONCE,
                       replicas=2)  # fmt: skip
        with run:
            first, second = run.fleet.replicas
            second.env["RTML_TRANSACTIONAL_ID"] = first.env["RTML_TRANSACTIONAL_ID"]
            run.start(replicas=1)
            run.wait_progress(0.2)
            first.expected_exit = True  # its exit is the point: the supervisor must not start it again
            second.start()
            run.wait(lambda r=second: initialised(r.log_lines()), f"{second.name}'s transactions", 60)
            started = time.monotonic()  # the newcomer's init_transactions has fenced the first
            run.fault(f"a second replica with {first.name}'s transactional id at {run.elapsed():.0f} s")
            run.wait(lambda r=first: not r.alive, f"{first.name} to exit once fenced", 60)
            fenced_after = time.monotonic() - started
            code, reason = first.returncode, [line for line in first.log_lines() if "fenced" in line]
            result = run.finish()
        row.add(result)
        row.notes.append(f"fenced replica exited {code} after {fenced_after:.1f} s")
        assert code not in (0, None) and reason, f"exit {code}, no line naming the fencing\n{first.tail()}"
        assert fenced_after < 5, f"the fenced replica ran on for {fenced_after:.1f} s"
    row.check("exactly-once")


def initialised(lines: list[str]) -> bool:
    return any("transactions initialised" in line for line in lines)
