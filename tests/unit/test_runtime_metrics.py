"""Metrics: the exposition text carries every series with the right labels and values."""

from __future__ import annotations

import math
from typing import get_args

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from worker.errors import Stage
from worker.runtime.metrics import END_TO_END_BUCKETS, METRIC_NAMES, Metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(metrics: Metrics) -> Samples:
    """Every sample of the rendered text, by (sample name, labels)."""
    text = metrics.render().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def test_every_declared_name_is_exported() -> None:
    families = Metrics().registry.collect()
    exported = {f"{f.name}_total" if f.type == "counter" else f.name for f in families}
    assert exported == set(METRIC_NAMES)
    assert all(name.startswith("rtml_") for name in METRIC_NAMES)


def test_counters_carry_their_labels() -> None:
    m = Metrics()
    m.events_in("events", 100)
    m.events_in("events", 20)
    m.events_in("other", 3)
    m.events_out(110)
    m.dead_lettered("decode", 7)
    m.dead_lettered("graph", 2)
    m.rebalance("assign", 6)
    m.rebalance("revoke", 2)
    m.rebalance("assign", 1)
    found = samples(m)
    assert value(found, "rtml_events_in_total", topic="events") == 120
    assert value(found, "rtml_events_in_total", topic="other") == 3
    assert value(found, "rtml_events_out_total") == 110
    assert value(found, "rtml_dead_lettered_total", stage="decode") == 7
    assert value(found, "rtml_dead_lettered_total", stage="graph") == 2
    assert value(found, "rtml_rebalances_total", kind="assign") == 2
    assert value(found, "rtml_rebalance_partitions_total", kind="assign") == 7
    assert value(found, "rtml_rebalance_partitions_total", kind="revoke") == 2


def test_known_label_values_start_at_zero() -> None:
    found = samples(Metrics())
    for stage in get_args(Stage):
        assert value(found, "rtml_dead_lettered_total", stage=stage) == 0
    for kind in ("assign", "revoke", "lost"):
        assert value(found, "rtml_rebalances_total", kind=kind) == 0


def test_batch_and_node_histograms() -> None:
    m = Metrics()
    m.observe_batch(500, 0.004)
    m.observe_batch(1, 0.0002)
    m.observe_node("scale", 0.001)
    m.observe_node("model", 0.003)
    m.observe_node("model", 0.02)
    m.observe_commit(0.05)
    found = samples(m)
    assert value(found, "rtml_batch_size_count") == 2
    assert value(found, "rtml_batch_size_sum") == 501
    assert value(found, "rtml_batch_size_bucket", le="1.0") == 1
    assert value(found, "rtml_batch_size_bucket", le="500.0") == 2
    assert value(found, "rtml_batch_seconds_bucket", le="0.00025") == 1
    assert value(found, "rtml_batch_seconds_sum") == pytest.approx(0.0042)
    assert value(found, "rtml_node_seconds_count", node="model") == 2
    assert value(found, "rtml_node_seconds_count", node="scale") == 1
    assert value(found, "rtml_node_seconds_bucket", node="model", le="0.005") == 1
    assert value(found, "rtml_commit_seconds_count") == 1


def test_gauges() -> None:
    m = Metrics()
    m.set_paused(3)
    m.set_assigned(12)
    m.breaker_open(True)
    found = samples(m)
    assert value(found, "rtml_paused_partitions") == 3
    assert value(found, "rtml_assigned_partitions") == 12
    assert value(found, "rtml_breaker_open") == 1
    m.breaker_open(False)
    assert value(samples(m), "rtml_breaker_open") == 0


def test_lag_series_follow_the_assignment() -> None:
    m = Metrics()
    m.set_lag({("events", 0): 10, ("events", 1): 0, ("other", 0): 5})
    found = samples(m)
    assert value(found, "rtml_consumer_lag", topic="events", partition="0") == 10
    assert value(found, "rtml_consumer_lag", topic="events", partition="1") == 0
    m.set_lag({("events", 1): 4})  # partitions 0 of both topics were revoked
    lag = {labels: v for (name, labels), v in samples(m).items() if name == "rtml_consumer_lag"}
    assert lag == {frozenset({("topic", "events"), ("partition", "1")}): 4}
    m.set_lag({})
    assert not any(name == "rtml_consumer_lag" for name, _ in samples(m))


def reference_histogram(values: list[float]) -> Samples:
    """prometheus_client's own Histogram, fed one value at a time under the documented NaN/negative rules."""
    registry = CollectorRegistry()
    h = Histogram("rtml_end_to_end_seconds", "reference", buckets=END_TO_END_BUCKETS, registry=registry)
    for v in values:
        if math.isfinite(v):
            h.observe(max(v, 0.0))
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(
            st.one_of(
                st.floats(min_value=-5, max_value=2000, allow_nan=False),
                st.sampled_from([*END_TO_END_BUCKETS, math.nan, math.inf, 0.0]),
            ),
            max_size=40,
        ),
        max_size=4,
    )
)
def test_end_to_end_matches_one_observe_per_value(batches: list[list[float]]) -> None:
    m = Metrics()
    for batch in batches:
        m.observe_end_to_end(np.array(batch, dtype=np.float64))
    found = {k: v for k, v in samples(m).items() if k[0].startswith("rtml_end_to_end_seconds")}
    expected = reference_histogram([v for batch in batches for v in batch])
    assert found.keys() == expected.keys()
    for key, want in expected.items():
        assert found[key] == pytest.approx(want, rel=1e-9, abs=1e-9), key


def test_end_to_end_accepts_a_plain_sequence() -> None:
    m = Metrics()
    m.observe_end_to_end([0.001, 0.002, 0.5])
    m.observe_end_to_end([])
    found = samples(m)
    assert value(found, "rtml_end_to_end_seconds_count") == 3
    assert value(found, "rtml_end_to_end_seconds_bucket", le="0.001") == 1
    assert value(found, "rtml_end_to_end_seconds_bucket", le="0.0025") == 2


def test_instances_do_not_share_series() -> None:
    a, b = Metrics(), Metrics()
    a.events_out(5)
    assert value(samples(a), "rtml_events_out_total") == 5
    assert value(samples(b), "rtml_events_out_total") == 0
