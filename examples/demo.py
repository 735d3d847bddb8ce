"""`make demo`: the whole journey through a real local Kafka, Schema Registry and S3-compatible store.

1. create the topics; 2. train the car-insurance models (logistic regression and gradient boosting), upload
them to the model store on S3Proxy, write their graphs; 3. publish the logistic regression as version 1 of
the deployment ``car-insurance`` (every check before anything is written); 4. start two worker replicas that
follow the deployment, each with a model cache of its own; 5. produce generated events (a few of them
poison) at a steady rate, and meanwhile publish the gradient boosting with ``--wait``, then roll back with
``--wait``; 6. read the scores and dead-letter records back: throughput, end-to-end latency, and per
partition the offsets where the scores switched version; 7. ``deploy status`` and ``deploy history``;
8. stop the replicas with SIGTERM (drain, commit, exit 0).

`make demo` wraps this in `scripts/services.py run`, so the services are started and stopped around it unless
they were already running (their AWS_* variables point the model store at S3Proxy). Run state (graphs,
config, caches, replica logs) goes to `.demo/`.
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from examples.car_insurance.generate import generate
from worker.testing import WorkerProcess, WorkerProcessError

# Topic name -> partitions; docker-compose.yml creates the same ones.
TOPICS = {"car-insurance-events": 12, "car-insurance-scores": 12, "car-insurance-dlq": 3}
EVENTS, SCORES, DLQ = TOPICS
ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".demo"
N_EVENTS = 60_000
RATE_PER_S = 3_000
POISON_EVERY = 500
DEPLOYMENT = "car-insurance"
STORE = f"s3://{os.environ.get('RTML_S3_BUCKET', 'rtml')}/models"


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def ensure_topics(admin: AdminClient) -> None:
    existing = admin.list_topics(timeout=10).topics
    missing = [NewTopic(name, n, 1) for name, n in TOPICS.items() if name not in existing]
    for future in admin.create_topics(missing, operation_timeout=30).values() if missing else ():
        future.result(timeout=30)


def train() -> Path:
    out = STATE / "out"
    subprocess.run([sys.executable, "-m", "examples.car_insurance.train", "--out", str(out),
                    "--models", STORE, "--rows", "10000"], check=True)  # fmt: skip
    return out


def deploy(config: Path, *args: str) -> None:
    """``rtml-worker deploy ARGS --config CONFIG``, its output shown; a failure stops the demo."""
    command = [sys.executable, "-m", "worker", "deploy", *args, "--config", str(config)]
    print("$ rtml-worker deploy " + " ".join(args), flush=True)
    if subprocess.run(command, check=False).returncode != 0:
        sys.exit(f"demo: `rtml-worker deploy {' '.join(args)}` failed")


def write_config(bootstrap: str, registry_url: str) -> Path:
    config = STATE / "worker.toml"
    config.write_text(f"""\
group_id = "rtml-demo"
deployment = "{DEPLOYMENT}"
model_store = "{STORE}"
metrics_port = 0
metrics_host = "127.0.0.1"

[kafka]
bootstrap_servers = "{bootstrap}"

[schema_registry]
url = "{registry_url}"

[input]
topics = ["{EVENTS}"]
reader_schema = "{ROOT / "schemas" / "car_insurance_event.avsc"}"

[output]
topic = "{SCORES}"
schema = "{ROOT / "schemas" / "car_insurance_score.avsc"}"

[dead_letter]
topic = "{DLQ}"

[batch]
max_records = 1000
max_wait_ms = 0
""")
    return config


def start_replica(config: Path, index: int) -> WorkerProcess:
    """A replica with a model cache of its own, as on a machine of its own."""
    cache = {"RTML_MODEL_CACHE": str(STATE / f"cache-{index}")}
    return WorkerProcess.start(config, STATE / f"replica-{index}.log", env=cache)


def wait_ready(replica: WorkerProcess, timeout_s: float = 60) -> int:
    """The replica's metrics port (from its log), once /readyz answers 200."""
    try:
        replica.wait_ready(timeout_s)
    except WorkerProcessError as exc:
        sys.exit(f"demo: replica not ready after {timeout_s:.0f}s; see {replica.log_path}\n{exc}")
    return replica.port()


def produce(
    bootstrap: str, registry_url: str, run_id: str, marks: list[threading.Event] | None = None
) -> dict[str, float]:
    """Events at RATE_PER_S; every POISON_EVERY-th is garbage. Returns ecid -> send time. The i-th of
    ``marks`` is set once (i + 1) / 4 of the events are sent."""
    at = {N_EVENTS * (k + 1) // 4: mark for k, mark in enumerate(marks or [])}
    schema_text = (ROOT / "schemas" / "car_insurance_event.avsc").read_text()
    with SchemaRegistryClient({"url": registry_url}) as registry:
        schema_id = registry.register_schema(f"{EVENTS}-value", Schema(schema_text, "AVRO"))
    parsed = fastavro.parse_schema(json.loads(schema_text))
    header = b"\x00" + struct.pack(">I", schema_id)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    sent: dict[str, float] = {}
    events = generate(N_EVENTS, seed=int(time.time()))  # before the clock starts: pacing counts from here
    started = time.monotonic()
    for i, event in enumerate(events):
        event["ecid"] = f"{run_id}-{i}"
        buffer = io.BytesIO(header)
        buffer.seek(5)
        fastavro.schemaless_writer(buffer, parsed, event)
        value = buffer.getvalue() if i % POISON_EVERY else b"\x07not avro"
        while (ahead := started + i / RATE_PER_S - time.monotonic()) > 0:
            producer.poll(min(ahead, 0.01))
        sent[event["ecid"]] = time.time()
        producer.produce(EVENTS, value, event["ecid"].encode())
        if i in at:
            at[i].set()
    producer.flush(30)
    return sent


def collect(bootstrap: str, sent: dict[str, float], run_id: str) -> tuple[list[dict[str, Any]], int]:
    """Scores (with their latency) and the dead-letter count of this run's events."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"demo-reader-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed"})  # fmt: skip
    consumer.subscribe([SCORES, DLQ])
    scores: list[dict[str, Any]] = []
    dead = 0
    expected_dead = len(range(0, N_EVENTS, POISON_EVERY))
    deadline = time.monotonic() + 120
    schemas: dict[int, Any] = {}
    with SchemaRegistryClient({"url": os.environ["SCHEMA_REGISTRY_URL"]}) as registry:
        while len(scores) + dead < len(sent) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                key = (msg.key() or b"").decode()
                if msg.error() is not None or not key.startswith(run_id):
                    continue
                if msg.topic() == DLQ:
                    dead += 1
                    continue
                schema_id = struct.unpack(">I", msg.value()[1:5])[0]
                if schema_id not in schemas:
                    schemas[schema_id] = fastavro.parse_schema(
                        json.loads(registry.get_schema(schema_id).schema_str)
                    )
                record = fastavro.schemaless_reader(io.BytesIO(msg.value()[5:]), schemas[schema_id])
                record["latency_ms"] = msg.timestamp()[1] - sent[key] * 1000
                headers = {k: (v or b"").decode() for k, v in msg.headers() or []}
                record["_version"] = headers.get("rtml.deployment", "?")
                record["_source"] = (
                    int(headers["rtml.source.partition"]),
                    int(headers["rtml.source.offset"]),
                )
                scores.append(record)
    consumer.close()
    if dead != expected_dead:
        print(f"demo: expected {expected_dead} dead-letter records, read {dead}")
    return scores, dead


def switches(scores: list[dict[str, Any]]) -> None:
    """Per input partition, the offsets where the scores changed version, in offset order."""
    by_partition: dict[int, list[tuple[int, str]]] = {}
    for record in scores:
        partition, offset = record["_source"]
        by_partition.setdefault(partition, []).append((offset, record["_version"]))
    for partition in sorted(by_partition):
        runs: list[str] = []
        last = None
        for offset, version in sorted(by_partition[partition]):
            if version != last:
                runs.append(f"{version} from offset {offset}")
                last = version
        print(f"  partition {partition:2d}: " + ", then ".join(runs))


def main() -> int:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    registry_url = os.environ.get("SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081/apis/ccompat/v7")
    os.environ["SCHEMA_REGISTRY_URL"] = registry_url
    STATE.mkdir(exist_ok=True)
    say("1. topics")
    ensure_topics(AdminClient({"bootstrap.servers": bootstrap}))
    print(", ".join(f"{name} ({n} partitions)" for name, n in TOPICS.items()))
    say(f"2. train the car-insurance models, upload them to {STORE}, write their graphs")
    out = train()
    config = write_config(bootstrap, registry_url)
    say(f"3. publish the logistic regression as the first version of {DEPLOYMENT}")
    subprocess.run(
        [sys.executable, "-m", "worker", "deploy", "delete", DEPLOYMENT, "--config", str(config)],
        capture_output=True,
        check=False,
    )  # a fresh history for the demo, if an earlier run left one
    deploy(config, "publish", DEPLOYMENT, str(out / "graph_lr.json"), "--message", "logistic regression")
    say("4. start two worker replicas following the deployment (one consumer group, a model cache each)")
    replicas = [start_replica(config, i) for i in range(2)]
    try:
        ports = [wait_ready(replica) for replica in replicas]
        print(f"ready: metrics and health on ports {ports}")
        say(
            f"5. produce {N_EVENTS} events at {RATE_PER_S}/s, one in {POISON_EVERY} poison; a quarter of the "
            "way through publish the gradient boosting, half way roll back, each with --wait"
        )
        run_id = uuid.uuid4().hex[:8]
        started = time.time()
        result: dict[str, dict[str, float]] = {}
        marks = [threading.Event(), threading.Event()]
        producing = threading.Thread(
            target=lambda: result.update(sent=produce(bootstrap, registry_url, run_id, marks))
        )
        producing.start()
        marks[0].wait(120)
        deploy(config, "publish", DEPLOYMENT, str(out / "graph_gbt.json"), "--message", "gradient boosting",
               "--wait")  # fmt: skip
        marks[1].wait(120)
        deploy(config, "rollback", DEPLOYMENT, "--wait")
        producing.join()
        sent = result["sent"]
        say("6. read the scores back")
        scores, dead = collect(bootstrap, sent, run_id)
        elapsed = time.time() - started
        print("where the scores switched version (the header rtml.deployment of each score):")
        switches(scores)
        say("7. the deployment as the replicas report it, and its history")
        deploy(config, "status", DEPLOYMENT)
        deploy(config, "history", DEPLOYMENT)
    finally:
        say("8. stop the replicas (SIGTERM: drain, commit, exit)")
        for replica in replicas:
            replica.signal(signal.SIGTERM)  # all drain at once
        codes = [replica.wait(60) for replica in replicas]
        print(f"exit codes {codes}")
    for record in scores[:3]:
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items() if k[0] != "_"}
        print(json.dumps(shown, default=str))
    latency = np.array([s["latency_ms"] for s in scores])
    print(f"\nsummary: {len(scores)} scored + {dead} dead-lettered of {len(sent)} events in {elapsed:.1f}s "
          f"({(len(scores) + dead) / elapsed:.0f} events/s at a {RATE_PER_S}/s offered rate); "
          f"end-to-end latency p50 {np.percentile(latency, 50):.1f} ms, "
          f"p99 {np.percentile(latency, 99):.1f} ms")  # fmt: skip
    return 0 if len(scores) + dead == len(sent) and codes == [0, 0] else 1


if __name__ == "__main__":
    sys.exit(main())
