"""The worker's Prometheus metrics: counters fed once per batch, state sampled once per second.

Two paths, both off the per-event path:

* ``on_batch`` runs once per scoring batch with the pipeline's own ``BatchOutput.counts``
  (counted where the events are parsed and priced) and the batch's record timestamps; the
  latency histogram takes the whole batch in one numpy call (:class:`BulkHistogram`);
* ``update(snapshot)`` stores a :class:`Snapshot` of catalog, model, recovery and consumer lag,
  taken on the event loop every second (:mod:`streams.health`); gauges are rendered from the
  latest one at scrape time, so a revoked partition's lag disappears with the next sample.

Every metric lives in the object's own ``CollectorRegistry`` (tests build as many as they like).

>>> m = WorkerMetrics()
>>> m.on_batch({"event.view": 3, "dead_letter.NOT_JSON": 1, "price.control": 2, "reason.CONTROL": 2},
...            records=4, seconds=0.002, record_ts=[99.5, 99.9, 100.0, 100.0], done_at=100.0)
>>> m.value("pricing_events_total", type="view"), m.value("pricing_decision_latency_seconds_count")
(3.0, 4.0)
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
BATCH_SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# BatchOutput.counts key prefix -> (counter name, help, label); keys without a known prefix go to the last one
_COUNTERS = {
    "event": ("pricing_events", "valid clickstream events, by event type", "type"),
    "dead_letter": ("pricing_dead_letters", "records sent to the dead-letter topic, by error code", "code"),
    "price": ("pricing_prices", "price decisions sent, by experiment arm", "arm"),
    "reason": ("pricing_price_reasons", "price decisions by reason (a treatment price can carry several; control "
               "prices carry CONTROL)", "reason"),
    "skipped": ("pricing_skipped_triggers", "trigger events whose own item was not priced, by reason", "reason"),
    "catalog_dead_letter": ("pricing_catalog_dead_letters", "catalog records rejected and sent to the dead-letter "
                            "topic, by error code (the item keeps its last valid record)", "code"),
    "": ("pricing_pipeline_counts", "pipeline counts with no metric of their own", "key"),
}


class BulkHistogram(Collector):
    """A Prometheus histogram that takes a whole array per call (one numpy pass, not one lock per value)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = np.asarray(buckets, np.float64)
        self._counts = np.zeros(len(self.bounds) + 1, np.int64)  # last: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()  # the scrape runs on the HTTP thread
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        """Add every value of ``values`` (seconds, any shape)."""
        if values.size == 0:
            return
        # side="left": a value equal to a bound belongs to that bound's bucket ("le")
        add = np.bincount(np.searchsorted(self.bounds, values.ravel(), side="left"), minlength=len(self._counts))
        total = float(values.sum())
        with self._lock:
            self._counts += add
            self._sum += total

    def collect(self) -> Iterator[Metric]:
        """The cumulative buckets, sum and count."""
        with self._lock:
            cum, total = np.cumsum(self._counts), self._sum
        buckets = [(repr(float(b)), float(c)) for b, c in zip(self.bounds, cum[:-1], strict=True)]
        yield HistogramMetricFamily(self.name, self.documentation, buckets=[*buckets, ("+Inf", float(cum[-1]))],
                                    sum_value=total)

    def describe(self) -> Iterable[Metric]:
        """Names only, so the registry can refuse duplicates without collecting."""
        return [HistogramMetricFamily(self.name, self.documentation)]


@dataclass(frozen=True)
class Snapshot:
    """The worker's state at one moment, sampled on its event loop (``monotonic`` is that moment)."""

    monotonic: float
    catalog_caught_up: bool = False
    catalog_items: int = 0
    bundle_loaded: bool = False
    model_version: str = ""
    model_loaded_at: float | None = None  # wall time the bundle in use was loaded
    recovery_done: bool = False
    recovering: bool = False
    lag: Mapping[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> records

    def readiness(self) -> dict[str, str]:
        """What is missing for readiness, by check; empty when ready."""
        missing = {}
        if not self.catalog_caught_up:
            missing["catalog"] = "catalog topic not read to its end yet"
        elif self.catalog_items == 0:
            missing["catalog"] = "catalog is empty"
        if not self.bundle_loaded:
            missing["bundle"] = "no model bundle loaded"
        if not self.recovery_done or self.recovering:
            missing["recovery"] = "table recovery in progress" if self.recovering else "table recovery not done yet"
        return missing


class WorkerMetrics(Collector):
    """Every metric of one worker; see docs/operations.md for names and labels."""

    def __init__(self, registry: CollectorRegistry | None = None, *, clock: Any = time.time) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.clock, r = clock, self.registry
        # the pipeline's counts summed in a plain Counter (a dict update per batch, no lock per label set);
        # rendered as Prometheus counters at scrape time
        self._totals: Counter[str] = Counter()
        self.batch_size = Histogram("pricing_batch_size", "records per scoring batch", buckets=BATCH_SIZE_BUCKETS,
                                    registry=r)
        self.batch_seconds = Histogram("pricing_batch_seconds", "time in Pipeline.process per batch",
                                       buckets=BATCH_SECONDS_BUCKETS, registry=r)
        self.latency = BulkHistogram("pricing_decision_latency_seconds", "per record: its Kafka timestamp to the "
                                     "moment its batch's prices and dead letters were acknowledged by Kafka",
                                     LATENCY_BUCKETS, r)
        self.snapshot = Snapshot(monotonic=time.monotonic())
        r.register(self)

    def on_batch(self, counts: Mapping[str, int], *, records: int, seconds: float, record_ts: Sequence[float],
                 done_at: float) -> None:
        """One batch's worth: the pipeline's counts, its size and time, and the latency of each record."""
        self._totals.update(counts)
        self._totals[" records"] += records  # a key no pipeline count can have
        self.batch_size.observe(records)
        self.batch_seconds.observe(seconds)
        ts = np.array(record_ts, np.float64)  # a missing timestamp (None) becomes NaN
        ts = ts[ts > 0]  # records without a timestamp are left out
        self.latency.observe_many(np.maximum(done_at - ts, 0.0))  # clocks of producer and worker may differ

    def count(self, counts: Mapping[str, int]) -> None:
        """Counts from outside a scoring batch (e.g. ``catalog_dead_letter.<code>`` from the catalog loader).

        >>> m = WorkerMetrics()
        >>> m.count({"catalog_dead_letter.MISSING_FIELD": 2})
        >>> m.value("pricing_catalog_dead_letters_total", code="MISSING_FIELD"), m.value("pricing_records_total")
        (2.0, 0.0)
        """
        self._totals.update(counts)

    def _counters(self) -> Iterator[Metric]:
        totals = dict(self._totals)  # one C-level copy: safe while the loop thread adds to it
        yield CounterMetricFamily("pricing_records", "clickstream records consumed", float(totals.pop(" records", 0)))
        yield CounterMetricFamily("pricing_replayed_events", "events already applied before a restart (prices "
                                  "re-sent, state unchanged)", float(totals.pop("replayed", 0)))
        families = {p: CounterMetricFamily(name, doc, labels=[label]) for p, (name, doc, label) in _COUNTERS.items()}
        for key, n in sorted(totals.items()):
            prefix, _, label = key.partition(".")
            if prefix in families and label:
                families[prefix].add_metric([label], float(n))
            else:
                families[""].add_metric([key], float(n))
        yield from families.values()

    def update(self, snapshot: Snapshot) -> None:
        """Store the latest state sample (one reference assignment: safe against a concurrent scrape)."""
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """Gauges from the latest snapshot; the model's age is computed now."""
        yield from self._counters()
        snap = self.snapshot
        yield _gauge("pricing_catalog_items", "items in the catalog held by this worker", snap.catalog_items)
        info = GaugeMetricFamily("pricing_model_info", "the model bundle in use (value 1)", labels=["version"])
        if snap.model_version:
            info.add_metric([snap.model_version], 1.0)
        yield info
        if snap.model_loaded_at is not None:
            yield _gauge("pricing_model_loaded_timestamp_seconds", "when the bundle in use was loaded (Unix time)",
                         snap.model_loaded_at)
            yield _gauge("pricing_model_age_seconds", "seconds since the bundle in use was loaded",
                         max(0.0, self.clock() - snap.model_loaded_at))
        yield _gauge("pricing_recovering", "1 while Faust restores the user table from its changelog",
                     float(snap.recovering))
        ready = GaugeMetricFamily("pricing_ready", "1 when the readiness check passes, by check", labels=["check"])
        missing = snap.readiness()
        for check in ("catalog", "bundle", "recovery"):
            ready.add_metric([check], float(check not in missing))
        yield ready
        lag = GaugeMetricFamily("pricing_consumer_lag", "records of an assigned partition not yet committed "
                                "(end offset minus committed offset)", labels=["topic", "partition"])
        for (topic, partition), n in sorted(snap.lag.items()):
            lag.add_metric([topic, str(partition)], float(n))
        yield lag
        yield _gauge("pricing_event_loop_silence_seconds", "seconds since the worker's event loop last sampled "
                     "its state (about 1 when healthy)", time.monotonic() - snap.monotonic)

    def describe(self) -> Iterable[Metric]:
        """Nothing to describe up front: the gauges depend on the snapshot."""
        return []

    def value(self, name: str, **labels: str) -> float | None:
        """One sample's value by full name and labels (tests and tools), None if absent."""
        return self.registry.get_sample_value(name, labels)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)
