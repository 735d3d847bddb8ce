"""A new graph takes over at a batch boundary, without a restart: the deployment path builds on this."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

from harness import plan_events, produce
from scenario import Scenario
from verifier import read_outputs

from worker.runtime.build import build_pipeline, registry_client
from worker.runtime.config import load_settings
from worker.runtime.health import Health
from worker.runtime.loop import Worker
from worker.runtime.metrics import Metrics

EVENTS = 300


def wait_for_scores(s: Scenario, n: int, timeout_s: float = 60.0) -> list[bytes]:
    """The graph digests of the first ``n`` scores, once there are that many."""
    deadline = time.monotonic() + timeout_s
    while True:
        scores = read_outputs(s.bootstrap_servers, s.score_topic, "score", timeout_s=timeout_s)
        if len(scores) >= n or time.monotonic() > deadline:
            assert len(scores) == n, f"{len(scores)} scores, expected {n}"
            return [o.headers["rtml.graph.digest"] for o in sorted(scores, key=lambda o: o.source() or ())]
        time.sleep(0.2)


def test_a_new_graph_takes_over_at_a_batch_boundary(
    scenario: Callable[..., Scenario], tmp_path: Path
) -> None:
    s = scenario(partitions=2, replicas=1)
    settings = load_settings(s.config)
    registry = registry_client(settings)
    first = build_pipeline(settings, registry)
    spec = json.loads(Path(settings.graph).read_text())
    spec["name"] += "-v2"
    (tmp_path / "v2.json").write_text(json.dumps(spec))
    second = build_pipeline(settings.model_copy(update={"graph": tmp_path / "v2.json"}), registry)
    assert first.graph.digest != second.graph.digest

    worker = Worker(settings, first, Metrics(), Health(settings.stall_after_s))
    thread = threading.Thread(target=worker.run, name="worker")
    thread.start()
    try:
        produce(
            s.bootstrap_servers, s.input_topic, plan_events(s.graph, EVENTS, seed=1, schema_id=s.schema_id)
        )
        before = wait_for_scores(s, EVENTS)
        swapped = worker.swap_pipeline(second)
        assert swapped.result(timeout=10) is True  # an idle worker takes it at once
        produce(
            s.bootstrap_servers, s.input_topic, plan_events(s.graph, EVENTS, seed=2, schema_id=s.schema_id)
        )
        after = wait_for_scores(s, 2 * EVENTS)
    finally:
        worker.stop()
        thread.join(60)
    assert not thread.is_alive()
    assert set(before) == {first.graph.digest.encode()}
    new = [d for d in after if d == second.graph.digest.encode()]
    assert len(new) == EVENTS, "every event after the swap is scored by the new graph, none before it"
