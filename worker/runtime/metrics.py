"""The worker's Prometheus metrics: one `Metrics` per worker, each with its own registry.

The consumer loop calls the recording methods once per batch (or per rebalance, commit, lag poll), never once
per event; they never block on I/O and never raise for valid arguments. The HTTP thread calls `render()`.
prometheus_client's metric types are thread safe; the end-to-end histogram is ours and holds a lock.

Series (every name starts with ``rtml_``; counters end in ``_total``):

    rtml_events_in_total{topic}             events consumed
    rtml_events_out_total                   score records produced
    rtml_dead_lettered_total{stage}         events sent to the dead-letter topic, by `worker.errors.Stage`
    rtml_batch_size                         histogram, events per batch (1 .. 100 000)
    rtml_batch_seconds                      histogram, time to process one batch (100 µs .. 10 s)
    rtml_node_seconds{node}                 histogram, time per graph node per batch (ONNX nodes included)
    rtml_end_to_end_seconds                 histogram, event timestamp to produce, per event
    rtml_in_worker_seconds                  histogram, consume() returning the event to its score produced
    rtml_commit_seconds                     histogram, time per offset commit
    rtml_rebalances_total{kind}             rebalance callbacks: assign, revoke, lost
    rtml_rebalance_partitions_total{kind}   partitions moved by those callbacks
    rtml_consumer_lag{topic,partition}      high watermark minus position, per assigned partition
    rtml_paused_partitions                  partitions paused for backpressure
    rtml_assigned_partitions                partitions currently assigned
    rtml_breaker_open                       1 while the invalid-input breaker is open
    rtml_output_failures_total{kind}        outputs not delivered: "record" (the broker refused the record),
                                            "broker" (anything else: timeouts, missing topic, authorisation)
    rtml_rewinds_total                      at-least-once: failed outputs made the loop rewind its input
    rtml_transaction_aborts_total           exactly-once: transactions aborted (and their batch rewound)
    rtml_producer_renewals_total{cause}     producers replaced: "timed_out" (the coordinator aborted a
                                            transaction open past its timeout), "stuck" (a librdkafka
                                            call outlived its deadline), "abort_failed" (exactly-once),
                                            "implicit_ack" (see worker.runtime.delivery), "desynchronised"
                                            (a fatal out-of-sequence error), "outputs_held" (an abort due
                                            while librdkafka still held outputs)
    rtml_deployment_info{deployment,version,digest}  1 for the deployment's version this replica runs
    rtml_deployment_swaps_total             versions of a deployment swapped in
    rtml_deployment_refusals_total          versions (or records) of a deployment this replica refused
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Final, Literal, get_args

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from worker.errors import Stage

MetricName = Literal[
    "rtml_events_in_total",
    "rtml_events_out_total",
    "rtml_dead_lettered_total",
    "rtml_batch_size",
    "rtml_batch_seconds",
    "rtml_node_seconds",
    "rtml_end_to_end_seconds",
    "rtml_in_worker_seconds",
    "rtml_commit_seconds",
    "rtml_rebalances_total",
    "rtml_rebalance_partitions_total",
    "rtml_consumer_lag",
    "rtml_paused_partitions",
    "rtml_assigned_partitions",
    "rtml_breaker_open",
    "rtml_output_failures_total",
    "rtml_rewinds_total",
    "rtml_transaction_aborts_total",
    "rtml_producer_renewals_total",
    "rtml_deployment_info",
    "rtml_deployment_swaps_total",
    "rtml_deployment_refusals_total",
]
METRIC_NAMES: Final[tuple[MetricName, ...]] = get_args(MetricName)
RebalanceKind = Literal["assign", "revoke", "lost"]
FailureKind = Literal["record", "broker"]
# Why the producer was replaced. Exactly-once: the coordinator aborted a transaction open past its timeout,
# a librdkafka call outlived its deadline, an abort failed, a fatal out-of-sequence error desynchronised it,
# or an abort was due while it still held outputs (see worker.runtime.transactions). Either mode: an output
# was implicitly acknowledged (see worker.runtime.delivery).
RenewalKind = Literal["timed_out", "stuck", "abort_failed", "implicit_ack", "desynchronised", "outputs_held"]

# Upper bounds ("le") of the histogram buckets; +Inf is added by the histogram.
BATCH_SIZE_BUCKETS: Final = (
    1,
    2,
    5,
    10,
    20,
    50,
    100,
    200,
    500,
    1000,
    2000,
    5000,
    10_000,
    20_000,
    50_000,
    100_000,
)
SECONDS_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                          1.0, 2.5, 5.0, 10.0)  # fmt: skip
# End to end includes time spent waiting in the topic (lag), so it reaches further than a batch's time.
END_TO_END_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                             30.0, 60.0, 300.0, 900.0)  # fmt: skip


# In-worker latency is the worker's own share: fine buckets around the millisecond.
IN_WORKER_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01,
                            0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # fmt: skip


def _name(name: MetricName) -> str:
    """The name prometheus_client wants: counters are declared without the ``_total`` it appends."""
    return name.removesuffix("_total")


class Metrics:
    """Every series the worker exports, in a registry of its own (never the global one: tests make many)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._events_in = Counter(_name("rtml_events_in_total"), "Events consumed.", ["topic"], registry=r)
        self._events_out = Counter(_name("rtml_events_out_total"), "Score records produced.", registry=r)
        self._dead = Counter(
            _name("rtml_dead_lettered_total"), "Events sent to the dead-letter topic.", ["stage"], registry=r
        )
        self._batch_size = Histogram(
            "rtml_batch_size", "Events per batch.", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self._batch_seconds = Histogram(
            "rtml_batch_seconds", "Seconds to process one batch.", buckets=SECONDS_BUCKETS, registry=r
        )
        self._node_seconds = _NodeHistograms(
            "rtml_node_seconds", "Seconds per graph node per batch.", SECONDS_BUCKETS
        )
        r.register(self._node_seconds)
        self._end_to_end = _BatchHistogram(
            "rtml_end_to_end_seconds", "Seconds from the event's timestamp to its score being produced.",
            END_TO_END_BUCKETS,
        )  # fmt: skip
        r.register(self._end_to_end)
        self._in_worker = _BatchHistogram(
            "rtml_in_worker_seconds", "Seconds from consume() returning the event to its score produced.",
            IN_WORKER_BUCKETS,
        )  # fmt: skip
        r.register(self._in_worker)
        self._commit_seconds = Histogram(
            "rtml_commit_seconds", "Seconds per offset commit.", buckets=SECONDS_BUCKETS, registry=r
        )
        self._rebalances = Counter(
            _name("rtml_rebalances_total"), "Rebalance callbacks.", ["kind"], registry=r
        )
        self._rebalance_partitions = Counter(
            _name("rtml_rebalance_partitions_total"), "Partitions moved by rebalances.", ["kind"], registry=r
        )
        self._lag = Gauge(
            "rtml_consumer_lag", "High watermark minus position.", ["topic", "partition"], registry=r
        )
        self._lag_keys: set[tuple[str, int]] = set()
        self._lag_lock = threading.Lock()
        self._paused = Gauge("rtml_paused_partitions", "Partitions paused for backpressure.", registry=r)
        self._assigned = Gauge("rtml_assigned_partitions", "Partitions currently assigned.", registry=r)
        self._breaker = Gauge("rtml_breaker_open", "1 while the invalid-input breaker is open.", registry=r)
        self._output_failures = Counter(
            _name("rtml_output_failures_total"), "Outputs not delivered, by kind.", ["kind"], registry=r
        )
        self._rewinds = Counter(_name("rtml_rewinds_total"), "Rewinds after failed outputs.", registry=r)
        self._aborts = Counter(
            _name("rtml_transaction_aborts_total"), "Transactions aborted and rewound.", registry=r
        )
        self._renewals = Counter(
            _name("rtml_producer_renewals_total"), "Producers replaced, by cause.", ["cause"], registry=r
        )
        self._deployment = Gauge("rtml_deployment_info", "1 for the deployment's version this replica runs.",
                                 ["deployment", "version", "digest"], registry=r)  # fmt: skip
        self._swaps = Counter(
            _name("rtml_deployment_swaps_total"), "Deployment versions swapped in.", registry=r
        )
        self._refusals = Counter(
            _name("rtml_deployment_refusals_total"), "Deployment versions or records refused.", registry=r
        )
        # Known label values start at 0, so rate() and alerts see the series before the first event.
        for kind in get_args(FailureKind):
            self._output_failures.labels(kind=kind)
        for stage in get_args(Stage):
            self._dead.labels(stage=stage)
        for kind in get_args(RebalanceKind):
            self._rebalances.labels(kind=kind)
        for cause in get_args(RenewalKind):
            self._renewals.labels(cause=cause)
            self._rebalance_partitions.labels(kind=kind)

    def events_in(self, topic: str, n: int) -> None:
        """Count ``n`` events consumed from ``topic`` (one call per topic per batch)."""
        self._events_in.labels(topic=topic).inc(n)

    def events_out(self, n: int) -> None:
        """Count ``n`` score records produced."""
        self._events_out.inc(n)

    def dead_lettered(self, stage: Stage, n: int) -> None:
        """Count ``n`` events dead-lettered at ``stage``."""
        self._dead.labels(stage=stage).inc(n)

    def observe_batch(self, size: int, seconds: float) -> None:
        """Record one batch: its number of events and the seconds it took end to end in the worker."""
        self._batch_size.observe(size)
        self._batch_seconds.observe(seconds)

    def observe_node(self, node_id: str, seconds: float) -> None:
        """One node's time for one batch (fits the graph's ``on_node`` callback)."""
        self._node_seconds.observe(node_id, seconds)

    def observe_nodes(self, timings: Sequence[tuple[str, float]]) -> None:
        """Every node's time for one batch at once: one bucket search for the whole graph."""
        self._node_seconds.observe_all(timings)

    def observe_end_to_end(self, seconds: Sequence[float] | npt.NDArray[np.floating]) -> None:
        """Record the end-to-end latency of every event of a batch at once (vectorised).

        NaN (an event without a timestamp) and infinities are skipped; a negative value (the producer's
        clock ahead of ours) counts as 0 rather than pulling the sum down.
        """
        self._end_to_end.observe_many(np.asarray(seconds, dtype=np.float64))

    def observe_in_worker(self, seconds: Sequence[float] | npt.NDArray[np.floating]) -> None:
        """Per event of one batch, the time between consume() returning it and its score produced."""
        self._in_worker.observe_many(np.asarray(seconds, dtype=np.float64))

    def observe_commit(self, seconds: float) -> None:
        """Record the duration of one offset commit."""
        self._commit_seconds.observe(seconds)

    def rebalance(self, kind: RebalanceKind, partitions: int) -> None:
        """Count one rebalance callback of ``kind`` that moved ``partitions`` partitions."""
        self._rebalances.labels(kind=kind).inc()
        self._rebalance_partitions.labels(kind=kind).inc(partitions)

    def set_lag(self, lags: Mapping[tuple[str, int], int]) -> None:
        """Replace the lag series by ``lags`` ((topic, partition) -> events behind); drop absent ones."""
        with self._lag_lock:
            for topic, partition in self._lag_keys - lags.keys():
                self._lag.remove(topic, str(partition))
            for (topic, partition), lag in lags.items():
                self._lag.labels(topic=topic, partition=str(partition)).set(lag)
            self._lag_keys = set(lags)

    def set_paused(self, n: int) -> None:
        """Set the number of partitions paused for backpressure."""
        self._paused.set(n)

    def set_assigned(self, n: int) -> None:
        """Set the number of partitions currently assigned."""
        self._assigned.set(n)

    def breaker_open(self, open: bool) -> None:
        """Set whether the invalid-input breaker is open."""
        self._breaker.set(1 if open else 0)

    def output_failures(self, kind: FailureKind, n: int) -> None:
        """Count ``n`` outputs that could not be delivered, by who is at fault."""
        self._output_failures.labels(kind=kind).inc(n)

    def rewound(self) -> None:
        """Count one rewind of the input after failed outputs."""
        self._rewinds.inc()

    def aborted(self) -> None:
        """Count one aborted transaction."""
        self._aborts.inc()

    def producer_renewed(self, cause: RenewalKind) -> None:
        """Count one transactional producer replaced by a new one."""
        self._renewals.labels(cause=cause).inc()

    def deployment_running(self, label: str, digest: str) -> None:
        """This replica now runs ``label`` (``<name>@<version>``); the series of the one before goes."""
        self._deployment.clear()
        name, _, version = label.rpartition("@")
        self._deployment.labels(deployment=name, version=version, digest=digest[:12]).set(1)

    def deployment_stopped(self) -> None:
        """No version runs (the deployment was deleted)."""
        self._deployment.clear()

    def deployment_swapped(self) -> None:
        self._swaps.inc()

    def deployment_refused(self) -> None:
        self._refusals.inc()

    def render(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4) of every series; called by the HTTP thread."""
        return generate_latest(self.registry)


class _BatchHistogram:
    """A histogram fed a whole array at a time: bucket counts by numpy, not one ``observe`` per value.

    A custom collector because prometheus_client's `Histogram` only observes one value per call.
    Buckets follow Prometheus's "le" rule: a value equal to a bound counts in that bound's bucket.
    """

    def __init__(self, name: MetricName, documentation: str, bounds: Sequence[float]) -> None:
        self._name = name
        self._doc = documentation
        self._bounds = np.asarray(bounds, dtype=np.float64)
        # The same "le" spelling as prometheus_client's own histograms.
        go: Callable[[float], str] = floatToGoString
        self._labels = [go(b) for b in bounds] + ["+Inf"]
        self._counts = np.zeros(len(bounds) + 1, dtype=np.int64)  # per bucket, not cumulative
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: npt.NDArray[np.float64]) -> None:
        values = np.maximum(values[np.isfinite(values)], 0.0)
        # side="left": the first bound >= value, i.e. the "le" bucket; past the last bound is +Inf.
        counts = np.bincount(np.searchsorted(self._bounds, values, side="left"), minlength=len(self._counts))
        total = float(values.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._doc)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            cumulative = np.cumsum(self._counts)
            total = self._sum
        buckets = [(label, float(c)) for label, c in zip(self._labels, cumulative, strict=True)]
        yield HistogramMetricFamily(self._name, self._doc, buckets=buckets, sum_value=total)


class _NodeHistograms:
    """``rtml_node_seconds{node}``: per-node bucket counts, fed a batch's timings of all nodes at once."""

    def __init__(self, name: MetricName, documentation: str, bounds: Sequence[float]) -> None:
        self._name, self._doc = name, documentation
        self._bounds = np.asarray(bounds, dtype=np.float64)
        go: Callable[[float], str] = floatToGoString
        self._labels = [go(b) for b in bounds] + ["+Inf"]
        self._counts: dict[str, npt.NDArray[np.int64]] = {}
        self._sums: dict[str, float] = {}
        self._lock = threading.Lock()

    def observe(self, node: str, seconds: float) -> None:
        self.observe_all([(node, seconds)])

    def observe_all(self, timings: Sequence[tuple[str, float]]) -> None:
        if not timings:
            return
        buckets = np.searchsorted(self._bounds, [max(t, 0.0) for _, t in timings], side="left").tolist()
        with self._lock:
            for (node, seconds), bucket in zip(timings, buckets, strict=True):
                counts = self._counts.get(node)
                if counts is None:
                    counts = self._counts[node] = np.zeros(len(self._labels), dtype=np.int64)
                    self._sums[node] = 0.0
                counts[bucket] += 1
                self._sums[node] += seconds

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._doc, labels=["node"])

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._doc, labels=["node"])
        with self._lock:
            snapshot = [(node, np.cumsum(c), self._sums[node]) for node, c in self._counts.items()]
        for node, cumulative, total in snapshot:
            buckets = [(label, float(c)) for label, c in zip(self._labels, cumulative, strict=True)]
            family.add_metric([node], buckets, total)
        yield family
