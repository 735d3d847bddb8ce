"""The circuit breaker against a real run: a graph that rejects every record is stopped early.

The graph is the car-insurance graph with one bad deploy in it: ``pricequote`` becomes -2 and its log1p NaN
just before the model, so the ONNX node rejects every row. With events trickling in (small batches), the
worker may dead-letter at most ``max_consecutive_invalid`` records per input partition; then it pauses,
``/readyz`` answers 503, it stays alive, and its committed offsets stop moving (once the outputs already in
flight are acknowledged) and never pass a record that was not dead-lettered.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from harness import BackgroundProducer, plan_events
from replicas import committed
from scenario import CarModels, Scenario
from verifier import read_outputs

PARTITIONS = 3
MAX_CONSECUTIVE_INVALID = 100
EVENTS = 4000
RATE = 150.0  # events/s: batches of a few records per partition, so some go out before the breaker trips
SETTLE_S = 4.0
GRACE_S = 2.0  # four commit intervals


def rejecting_graph(car_models: CarModels, folder: Path) -> Path:
    graph = json.loads(car_models.graph_path.read_text())
    at = [node["id"] for node in graph["nodes"]].index("model")
    graph["nodes"][at:at] = [
        {"kind": "expr", "id": "bad_price", "expr": "pricequote * 0 - 2", "output": "pricequote"},
        {"kind": "log1p", "id": "nan_price", "columns": ["pricequote"]},
    ]
    path = folder / "graph_rejects_all.json"
    path.write_text(json.dumps(graph))
    return path


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, s: Scenario) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        s.fleet.check()
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s\n{s.fleet.logs()}"
        time.sleep(0.2)


def test_breaker_stops_a_graph_that_rejects_everything(
    scenario: Callable[..., Scenario], car_models: CarModels, tmp_path: Path
) -> None:
    breaker = {"max_consecutive_invalid": MAX_CONSECUTIVE_INVALID, "max_invalid_ratio": 1.0,
               "window_records": 1000}  # fmt: skip
    s = scenario(
        partitions=PARTITIONS,
        replicas=1,
        graph=rejecting_graph(car_models, tmp_path),
        settings={"breaker": breaker},
    )
    planned = plan_events(s.graph, EVENTS, seed=41, schema_id=s.schema_id)
    assert all(p.expected is None for p in planned), "the offline scorer must reject every event"
    replica = s.fleet.replicas[0]
    replica.start()
    wait_for(lambda: replica.readyz() == 200, 60, "the replica was not ready", s)
    background = BackgroundProducer(s.bootstrap_servers, s.input_topic, planned, rate_per_s=RATE)
    wait_for(lambda: replica.readyz() == 503, 60, "the breaker did not open", s)
    assert background.running, "the breaker must open while events still arrive"
    # Outputs already on their way when the breaker opened may still be acknowledged and committed (within
    # a commit interval or two); after that nothing moves.
    time.sleep(GRACE_S)
    tripped = committed(s.admin, s.group_id, s.input_topic, PARTITIONS)
    time.sleep(SETTLE_S)
    later = committed(s.admin, s.group_id, s.input_topic, PARTITIONS)
    assert replica.alive and replica.readyz() == 503, replica.tail()
    sources = background.result()

    dead = read_outputs(s.bootstrap_servers, s.dead_letter_topic, "dead_letter")
    scores = read_outputs(s.bootstrap_servers, s.score_topic, "score")
    per_partition: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
    for out in dead:
        where = out.source()
        assert where is not None and where[0] == s.input_topic, dict(out.headers)
        per_partition[where[1]].append(where[2])
    produced = {p: len(sources.get(p, {})) for p in range(PARTITIONS)}
    counts = {p: len(offsets) for p, offsets in per_partition.items()}
    print(f"produced {produced}; dead-lettered {counts}")
    print(f"committed {GRACE_S} s after the breaker opened {tripped}, {SETTLE_S} s later {later}")
    assert not scores
    assert 0 < len(dead) <= MAX_CONSECUTIVE_INVALID * PARTITIONS
    for partition, offsets in per_partition.items():
        assert len(offsets) <= MAX_CONSECUTIVE_INVALID, f"partition {partition}: {len(offsets)} dead-lettered"
        assert sorted(offsets) == list(range(len(offsets))), (
            f"partition {partition}: not a prefix: {offsets[:10]}"
        )
        # Nothing committed past what went out, and nothing more after the breaker opened.
        assert later[partition] <= len(offsets), (partition, later[partition], len(offsets))
        assert later[partition] == tripped[partition], (tripped, later)
        assert produced[partition] > len(offsets) + 100, "events kept arriving after the breaker opened"
