"""The worker's HTTP endpoints (``/metrics``, ``/healthz``, ``/ready``) and the state sampler behind them.

The server runs on its own thread, so a scrape never waits for (or delays) a scoring batch, and a
stuck event loop is *reported* instead of silently timing out: the sampler, a task on the loop,
takes a :class:`~streams.metrics.Snapshot` every second, and ``/healthz`` answers 503 once the
newest snapshot is older than ``PRICING_METRICS_STALL_S``. ``/ready`` answers 200 only when the
catalog is read and non-empty, a model bundle is loaded and Faust's table recovery is done;
otherwise 503 with a JSON body naming what is missing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .faust_compat import sought_offsets
from .metrics import Snapshot, WorkerMetrics

log = logging.getLogger("pricing.health")


class MetricsServerError(RuntimeError):
    """The metrics server could not start (names the setting to change)."""


def serve(metrics: WorkerMetrics, host: str, port: int, stall_s: float) -> ThreadingHTTPServer:
    """Start the endpoints on ``host:port`` in a daemon thread; ``port`` 0 is refused (0 means disabled)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                silence = time.monotonic() - metrics.snapshot.monotonic
                ok = silence < stall_s
                self._json(200 if ok else 503, {"alive": ok, "event_loop_silence_s": round(silence, 3),
                                                "stall_s": stall_s})
            elif path == "/ready":
                missing = metrics.snapshot.readiness()
                self._json(503 if missing else 200, {"ready": not missing, "missing": missing})
            else:
                self._json(404, {"error": f"no such path {path!r}", "paths": ["/metrics", "/healthz", "/ready"]})

        def _json(self, code: int, body: dict[str, Any]) -> None:
            self._reply(code, orjson.dumps(body), "application/json")

        def _reply(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # a probe every few seconds would drown the worker's log

    if port == 0:
        raise MetricsServerError("PRICING_METRICS_PORT is 0 (disabled); nothing to serve")
    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        raise MetricsServerError(f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); set "
                                 f"PRICING_METRICS_PORT to a free port (0 disables) or PRICING_METRICS_HOST") from exc
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics (health /healthz, readiness /ready)", host, server.server_port)
    return server


def faust_snapshot(app: Any, *, catalog_caught_up: bool, catalog_items: int, scorer_version: str,
                   bundle_loaded_at: float | None, bundle_loaded: bool, topics: frozenset[str]) -> Snapshot:
    """The worker's state now, read from Faust's public objects (tables, monitor, consumer).

    Lag per assigned partition of ``topics``: the consumer's high-water mark (updated by every fetch
    response) minus the offset Faust last committed (its monitor's ``tp_committed_offsets``; before
    this process's first commit, the committed offset Faust sought to at assignment; 0 if the group
    never committed on that partition).
    """
    recovery = app.tables.recovery
    lag: dict[tuple[str, int], int] = {}
    consumer, monitor = app.consumer, app.monitor
    committed = dict(monitor.tp_committed_offsets or {})
    sought = sought_offsets(consumer)
    for tp in list(consumer.assignment()):
        if tp.topic not in topics:
            continue
        try:
            high = consumer.highwater(tp)
        except Exception:  # aiokafka: partition not (yet) fetched or no longer assigned
            high = None
        if high is None:
            high = monitor.tp_end_offsets.get(tp)
        done = committed.get(tp)
        if done is None:
            done = sought.get(tp)
        if high is not None:
            # never committed by the group: counted from offset 0 (exact unless retention removed the start)
            lag[(tp.topic, tp.partition)] = max(0, int(high) - int(done or 0))
    return Snapshot(time.monotonic(), catalog_caught_up, catalog_items, bundle_loaded, scorer_version,
                    bundle_loaded_at, recovery.completed.is_set(), bool(getattr(app, "in_recovery", False)), lag)


async def sample_forever(metrics: WorkerMetrics, take: Callable[[], Snapshot], every_s: float = 1.0) -> None:
    """Take a snapshot every ``every_s`` on the event loop (its freshness is ``/healthz``'s heartbeat)."""
    failed = False
    while True:
        try:
            metrics.update(take())
            failed = False
        except Exception:
            if not failed:  # log the first of a run of failures, not one a second
                log.exception("sampling the worker state failed; /ready and the gauges keep the last sample")
            failed = True
            # the loop is alive all the same: /healthz must not fail over a sampling bug
            metrics.update(dataclasses.replace(metrics.snapshot, monotonic=time.monotonic()))
        await asyncio.sleep(every_s)
