"""What ``pricing-monitor`` shows, from two sources: the workers' ``/metrics`` and the topics.

* :class:`MetricsHistory` scrapes every worker, sums the counters across workers and keeps the last
  minutes of samples: throughput is the rate between samples, latency percentiles come from the
  histogram's bucket increase over the last minute (as Prometheus' ``histogram_quantile`` would).
* :class:`TopicFollower` reads ``prices``, ``clickstream`` and ``catalog`` outside any consumer
  group (a thread): price/base histograms per arm, model versions as the price events name them,
  and exposures and purchases joined exactly as :mod:`streams.tools.evaluate` joins them (a view's own
  decision by ``decision_id``; purchases credited by :func:`streams.tools.evaluate.attribute`).

>>> histogram_quantile(0.5, [(0.1, 0.0), (0.2, 10.0), (math.inf, 10.0)])
0.15
"""

from __future__ import annotations

import math
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from ..schemas import SchemaError, decision_id, parse_catalog, parse_click, parse_price
from ..settings import Settings
from .evaluate import ARMS, Exposures, Purchases, attribute

PENDING_S = 10.0  # views younger than this (event time) without a decision yet are left out, not "none"
RATIO_EDGES = np.round(np.linspace(0.75, 1.25, 21), 4)  # price / base bins; the guardrail is +-20 % by default


def _increase(now: float, before: float) -> float:
    """A counter's increase; a counter below its previous value was reset (a restarted worker), as in Prometheus."""
    return now - before if now >= before else now


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Quantile ``q`` from cumulative ``(le, count)`` buckets, linear within a bucket; None if empty."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank, lo, below = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lo  # above the last finite bound: report that bound, as Prometheus does
            return round(lo + (le - lo) * (rank - below) / max(count - below, 1e-12), 6)
        lo, below = le, count
    return lo


@dataclass
class Scrape:
    """One worker's metrics at one moment (counters as read, not rates)."""

    url: str
    at: float
    up: bool
    error: str = ""
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    def total(self, name: str) -> float:
        """Sum of every sample of ``name`` (all label sets)."""
        return sum(v for (n, _), v in self.samples.items() if n == name)

    def by(self, name: str, label: str) -> dict[str, float]:
        """Samples of ``name`` keyed by one label's value."""
        return {dict(lb)[label]: v for (n, lb), v in self.samples.items() if n == name}


def scrape(url: str, timeout: float = 2.0) -> Scrape:
    """GET ``<url>/metrics``; a worker that does not answer is ``up=False`` with the reason."""
    now = time.time()
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=timeout) as r:
            text = r.read().decode()
    except OSError as exc:
        return Scrape(url, now, False, str(exc))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    return Scrape(url, now, True, "", samples)


class MetricsHistory:
    """The last ``keep_s`` seconds of scrapes of every worker, and what the page shows from them."""

    def __init__(self, urls: list[str], keep_s: float = 600.0, fetch: Callable[[str], Scrape] = scrape) -> None:
        self.urls, self.keep_s, self.fetch = urls, keep_s, fetch
        self.rounds: deque[tuple[float, list[Scrape]]] = deque()
        self.model_changes: list[dict[str, Any]] = []
        self._versions: dict[str, str] = {}

    def poll(self) -> None:
        """Scrape every worker once; note model version changes."""
        now, got = time.time(), [self.fetch(u) for u in self.urls]
        self.rounds.append((now, got))
        while self.rounds and self.rounds[0][0] < now - self.keep_s:
            self.rounds.popleft()
        for s in got:
            version = next(iter(s.by("pricing_model_info", "version")), "") if s.up else ""
            if version and self._versions.get(s.url) != version:
                self.model_changes.append({"at": now, "worker": s.url, "from": self._versions.get(s.url),
                                           "to": version})
                self._versions[s.url] = version

    def _sum(self, scrapes: Iterable[Scrape], name: str) -> float:
        return sum(s.total(name) for s in scrapes if s.up)

    def state(self, latency_window_s: float = 60.0) -> dict[str, Any]:
        """Rates, latency percentiles, dead letters, per-worker status, for the JSON endpoint."""
        if not self.rounds:
            return {"workers": [], "series": [], "latency": {}, "dead_letters": {}, "totals": {}}
        now, last = self.rounds[-1]
        names = ("pricing_records_total", "pricing_prices_total", "pricing_dead_letters_total")
        series = []
        for (t0, before), (t1, after) in zip(self.rounds, list(self.rounds)[1:], strict=False):
            if t1 > t0:
                old = {s.url: s for s in before if s.up}
                rates = [sum(_increase(s.total(n), old[s.url].total(n) if s.url in old else 0.0)
                             for s in after if s.up) / (t1 - t0) for n in names]
                series.append([round(t1, 3), *(round(r, 2) for r in rates)])
        base = next((s for t, s in self.rounds if t >= now - latency_window_s), self.rounds[0][1])
        buckets = self._latency_buckets(last, base if base is not last else [])
        if not buckets or buckets[-1][1] == 0:  # nothing new in the window: since the workers started
            buckets, latency_window_s = self._latency_buckets(last, []), math.inf
        dead: dict[str, float] = {}
        for s in last:
            for code, v in (s.by("pricing_dead_letters_total", "code") if s.up else {}).items():
                dead[code] = dead.get(code, 0.0) + v
        return {
            "workers": [self._worker(s) for s in last], "series": series, "model_changes": self.model_changes[-20:],
            "latency": {"window_s": None if math.isinf(latency_window_s) else latency_window_s,
                        "count": buckets[-1][1] if buckets else 0,
                        **{f"p{int(q * 100)}": histogram_quantile(q, buckets) for q in (0.5, 0.95, 0.99)}},
            "dead_letters": dict(sorted(dead.items())),
            "totals": {n: self._sum(last, f"pricing_{n}_total") for n in ("records", "prices", "dead_letters")},
        }

    @staticmethod
    def _latency_buckets(now: list[Scrape], then: list[Scrape]) -> list[tuple[float, float]]:
        acc: dict[float, float] = {}
        for sign, scrapes in ((1.0, now), (-1.0, then)):
            for s in scrapes:
                for le, v in (s.by("pricing_decision_latency_seconds_bucket", "le") if s.up else {}).items():
                    acc[float(le)] = acc.get(float(le), 0.0) + sign * v
        return [(le, max(0.0, v)) for le, v in sorted(acc.items())]

    @staticmethod
    def _worker(s: Scrape) -> dict[str, Any]:
        if not s.up:
            return {"url": s.url, "up": False, "error": s.error}
        return {"url": s.url, "up": True, "version": next(iter(s.by("pricing_model_info", "version")), ""),
                "loaded_at": s.total("pricing_model_loaded_timestamp_seconds") or None,
                "ready": {k: bool(v) for k, v in s.by("pricing_ready", "check").items()},
                "lag": s.total("pricing_consumer_lag"), "catalog_items": s.total("pricing_catalog_items")}


class TopicFollower:
    """Reads prices, clickstream and catalog in a thread; ``state()`` joins them like the evaluation."""

    def __init__(self, s: Settings, *, since: float | None, window_s: float, max_rows: int = 1_000_000) -> None:
        self.s, self.since, self.window_s = s, since, window_s
        self._lock = threading.Lock()
        self.decisions: dict[str, tuple[str, float, float]] = {}  # decision_id -> (arm, price, base)
        self.views: deque[tuple[str, str, str, float, float]] = deque(maxlen=max_rows)
        self.buys: deque[tuple[str, str, float, int, float]] = deque(maxlen=max_rows)
        self.cost: dict[str, float] = {}
        self.ratio_counts = {a: np.zeros(len(RATIO_EDGES) + 1, np.int64) for a in ARMS}
        self.versions: dict[str, float] = {}  # model version -> wall time first seen on the prices topic
        self.read = {"prices": 0, "clickstream": 0, "catalog": 0}
        self.max_rows, self.error = max_rows, ""

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set (the thread's target)."""
        from kafka import KafkaConsumer, TopicPartition

        from ..topics import kafka_client_config

        consumer = KafkaConsumer(enable_auto_commit=False, group_id=None, **kafka_client_config(self.s))
        try:
            topics = {self.s.topic_prices: self._on_price, self.s.topic_clickstream: self._on_click,
                      self.s.topic_catalog: self._on_catalog}
            tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
            consumer.assign(tps)
            live = [tp for tp in tps if tp.topic != self.s.topic_catalog]
            consumer.seek_to_beginning(*[tp for tp in tps if tp.topic == self.s.topic_catalog])  # all unit costs
            if self.since is None:
                consumer.seek_to_end(*live)
            else:
                found = consumer.offsets_for_times({tp: int(self.since * 1000) for tp in live})
                for tp in live:
                    if found.get(tp) is None:
                        consumer.seek_to_end(tp)
                    else:
                        consumer.seek(tp, found[tp].offset)
            while not stop.is_set():
                for tp, msgs in consumer.poll(timeout_ms=500, max_records=20_000).items():
                    with self._lock:
                        for m in msgs:
                            if m.value is not None:
                                try:
                                    topics[tp.topic](m.value)
                                except SchemaError:
                                    pass  # the worker dead-letters these; the monitor shows its count
        except Exception as exc:  # shown on the page instead of a silent dead thread
            self.error = f"topic reader stopped: {exc!r}"
            raise
        finally:
            consumer.close()

    def _on_price(self, value: bytes) -> None:
        p = parse_price(value)
        self.read["prices"] += 1
        if p.arm in self.ratio_counts and p.base_price > 0:
            self.ratio_counts[p.arm][np.searchsorted(RATIO_EDGES, p.price / p.base_price, side="right")] += 1
        self.versions.setdefault(p.model_version, time.time())
        self.decisions[p.decision_id] = (p.arm, p.price, p.base_price)
        if len(self.decisions) > self.max_rows:  # oldest first: dicts keep insertion order
            del self.decisions[next(iter(self.decisions))]

    def _on_click(self, value: bytes) -> None:
        ev = parse_click(value, now=math.inf)
        self.read["clickstream"] += 1
        if ev.type == "view":
            self.views.append((ev.user_id, ev.item_id, ev.event_id, ev.price, ev.ts))
        elif ev.type == "purchase":
            self.buys.append((ev.user_id, ev.item_id, ev.price, ev.quantity, ev.ts))

    def _on_catalog(self, value: bytes) -> None:
        c = parse_catalog(value)
        self.read["catalog"] += 1
        self.cost[c.item_id] = c.unit_cost

    def state(self) -> dict[str, Any]:
        """Price/base histograms, per-arm exposures, conversion and profit so far, model versions."""
        with self._lock:
            views, buys, cost = list(self.views), list(self.buys), dict(self.cost)
            # a view's decision comes a moment after the view: a recent view without one is pending, not "none"
            pending_after = time.time() - PENDING_S
            rows = [(u, i, *(d or ("none", p, p)), ts) for u, i, e, p, ts in views
                    if (d := self.decisions.get(decision_id(e, i))) is not None or ts < pending_after]
            ratio = {a: c.tolist() for a, c in self.ratio_counts.items()}
            versions, read = dict(self.versions), dict(self.read)
        exp = Exposures(np.array([r[0] for r in rows], object), np.array([r[1] for r in rows], object),
                        np.array([r[2] for r in rows], object), np.array([r[3] for r in rows], float),
                        np.array([r[4] for r in rows], float), np.array([cost.get(r[1], math.nan) for r in rows]),
                        np.array([r[5] for r in rows], float))
        pur = Purchases(np.array([b[0] for b in buys], object), np.array([b[1] for b in buys], object),
                        np.array([b[2] for b in buys], float), np.array([b[3] for b in buys], np.int64),
                        np.array([b[4] for b in buys], float))
        attribute(exp, pur, self.window_s)
        assert exp.bought is not None and exp.revenue is not None and exp.profit is not None
        arms = {}
        for a in (*ARMS, "none"):
            m = exp.arm == a
            n, bought = int(m.sum()), int(np.count_nonzero(exp.bought[m]))
            profit = float(np.nansum(exp.profit[m]))
            arms[a] = {"exposures": n, "purchases": bought, "conversion": bought / n if n else None,
                       "revenue": round(float(exp.revenue[m].sum()), 2), "profit": round(profit, 2),
                       "profit_per_exposure": round(profit / n, 4) if n else None}
        return {"ratio_edges": RATIO_EDGES.tolist(), "ratio_counts": ratio, "arms": arms, "read": read,
                "purchases_seen": len(buys), "window_s": self.window_s, "error": self.error,
                "model_versions": [{"version": v, "first_seen": t} for v, t in sorted(versions.items(),
                                                                                      key=lambda kv: kv[1])]}
