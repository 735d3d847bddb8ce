"""Chaos: a registry outage of 30 s under load, with max.poll.interval.ms at 15 s and a SIGKILL during it.

The replicas reach the registry through a fault proxy. Partway through the run the producer switches to a
writer schema the replicas have not seen yet (the event schema with one more optional field), and the proxy
blackholes the registry just before, for 30 s: every replica must wait for it, partitions paused, not ready,
still serving its group (``max.poll.interval.ms`` is half the outage). One replica is SIGKILLed during the
outage and started again: it has to wait for the registry at start too. Then the registry comes back.

Expected: nothing lost, nothing wrong (no event dead-lettered for the outage), no duplicate in exactly-once
mode, no worker restart.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import replace

import pytest
from chaos_profile import DELIVERIES, RUNS, pick
from chaos_run import ChaosEnv, ChaosRun, Row, seeds
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from faultproxy import FaultProxy
from harness import EVENT_SCHEMA, Planned

pytestmark = [pytest.mark.chaos, pytest.mark.chaos_short, pytest.mark.timeout(pick(600, 1800))]
OUTAGE_S = 30.0
EVENTS = pick(12_000, 15_000)
RATE = 400.0
SWITCH_AT = 0.3  # of the events: from there on, the new writer schema


def second_writer(registry_url: str, subject: str) -> int:
    """Register the event schema with one more optional field under ``subject``; its id."""
    schema = json.loads(EVENT_SCHEMA.read_text())
    schema["fields"].append({"name": "chaos_note", "type": ["null", "string"], "default": None})
    with SchemaRegistryClient({"url": registry_url}) as client:
        return int(client.register_schema(subject, Schema(json.dumps(schema), "AVRO")))


def rewritten(planned: list[Planned], schema_id: int, start: int) -> list[Planned]:
    """From ``start`` on, the events framed with ``schema_id``; their body gains the new field's null."""
    header = b"\x00" + struct.pack(">I", schema_id)
    out = planned[:start]
    for record in planned[start:]:
        framed = record.poison in (None, "nan_features")
        out.append(replace(record, value=header + record.value[5:] + b"\x00") if framed else record)
    return out


@pytest.mark.parametrize("delivery", DELIVERIES)
def test_chaos_registry_outage(chaos_env: ChaosEnv, delivery: str) -> None:
    row = Row.of(f"registry outage {OUTAGE_S:.0f} s, SIGKILL in it ({delivery})")
    registry_port = int(chaos_env.registry_url.split(":")[2].split("/")[0])
    for seed in seeds(11, RUNS):
        with FaultProxy(0, "127.0.0.1", registry_port) as proxy:
            url = f"http://127.0.0.1:{proxy.port}/apis/ccompat/v7"
            settings = {"delivery": delivery, "schema_registry": {"url": url},
                        "kafka": {"max_poll_interval_ms": 15_000}}  # fmt: skip
            run = ChaosRun(chaos_env, seed=seed, events=EVENTS, rate=RATE, settings=settings)
            with run:
                new_id = second_writer(chaos_env.registry_url, f"{run.topics['input']}-value")
                run.planned = rewritten(run.planned, new_id, int(EVENTS * SWITCH_AT))
                run.start()
                run.wait_progress(SWITCH_AT * 0.5)
                proxy.blackhole()
                run.fault(f"registry blackholed at {run.elapsed():.0f} s")
                time.sleep(OUTAGE_S / 2)
                run.kill(run.replica(0))
                time.sleep(OUTAGE_S / 2)
                proxy.pass_through()
                result = run.finish()
        row.add(result)
        assert not result.went_back, result.went_back
        assert result.report.duplicated <= result.duplicate_bound, result
    row.check(delivery)
