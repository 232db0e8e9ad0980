"""``pricing-monitor``: one live page of what the pricing workers are doing.

``GET /`` is a self-contained HTML page (inline CSS, JS and SVG: no CDN, works offline) that polls
``GET /api/state`` every few seconds. The state comes from the workers' ``/metrics``
(``--worker-url``, repeatable) and from the ``prices``, ``clickstream`` and ``catalog`` topics
named by the ``PRICING_*`` settings, read outside any consumer group from the end (default),
``--since`` a time, or ``--from-beginning``. See docs/operations.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from ..settings import cli_settings
from ..version import add_version
from .monitor_data import MetricsHistory, TopicFollower
from .monitor_page import PAGE

log = logging.getLogger("pricing.monitor")


class Monitor:
    """Polls the workers on a thread, follows the topics on another, and assembles the page's state."""

    def __init__(self, history: MetricsHistory, follower: TopicFollower | None, refresh_s: float) -> None:
        self.history, self.follower, self.refresh_s = history, follower, refresh_s
        self.stop = threading.Event()
        self._cache: tuple[float, bytes] = (0.0, b"")
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the scraping and topic threads (daemons)."""
        threading.Thread(target=self._poll, name="scrape", daemon=True).start()
        if self.follower is not None:
            threading.Thread(target=self.follower.run, args=(self.stop,), name="topics", daemon=True).start()

    def _poll(self) -> None:
        while not self.stop.is_set():
            with self._lock:
                self.history.poll()
            self.stop.wait(self.refresh_s)

    def state_json(self) -> bytes:
        """The JSON the page polls; computed at most once a second however many tabs are open."""
        now = time.time()
        if now - self._cache[0] >= 1.0:
            with self._lock:
                state: dict[str, Any] = {"now": now, "refresh_s": self.refresh_s, **self.history.state()}
            state["topics"] = self.follower.state() if self.follower is not None else None
            self._cache = (now, orjson.dumps(state, option=orjson.OPT_SERIALIZE_NUMPY))
        return self._cache[1]


def serve(monitor: Monitor, host: str, port: int) -> ThreadingHTTPServer:
    """The page and its JSON on ``host:port`` (``server.serve_forever()`` is the caller's)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/":
                self._reply(200, PAGE.encode(), "text/html; charset=utf-8")
            elif path == "/api/state":
                self._reply(200, monitor.state_json(), "application/json")
            else:
                self._reply(404, b'{"error":"not found","paths":["/","/api/state"]}', "application/json")

        def _reply(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # one request every few seconds per open tab

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    """``pricing-monitor``: a live page of throughput, latency, dead letters, prices and arms."""
    p = argparse.ArgumentParser(prog="pricing-monitor", description=main.__doc__,
                                epilog="Topics and broker: PRICING_* environment variables (see `pricing-settings`). "
                                       "Page: http://HOST:PORT/, its data: /api/state.")
    add_version(p)
    p.add_argument("--worker-url", action="append", default=[], metavar="URL",
                   help="a worker's metrics base URL, e.g. http://127.0.0.1:9400 (repeat for each worker)")
    p.add_argument("--port", type=int, default=8088, help="port of the page (default 8088)")
    p.add_argument("--host", default="0.0.0.0",
                   help="address of the page (default 0.0.0.0, as in a container; 127.0.0.1 keeps it local)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--since", type=float, metavar="EPOCH_S",
                       help="read the topics from this time (record timestamps) instead of their end")
    start.add_argument("--from-beginning", action="store_true", help="read the topics from their beginning")
    p.add_argument("--no-topics", action="store_true", help="workers' metrics only (no Kafka reader)")
    p.add_argument("--window-s", type=float, default=86400.0,
                   help="a purchase counts for a view of the same user and item at most this long before it")
    p.add_argument("--refresh-s", type=float, default=3.0, help="seconds between scrapes and page refreshes")
    p.add_argument("--max-rows", type=int, default=200_000,
                   help="newest views, purchases and decisions kept for the arms table (memory: ~100 MB at 200,000)")
    args = p.parse_args(argv)
    if not args.worker_url and args.no_topics:
        p.error("nothing to show: give --worker-url, or drop --no-topics")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    follower = None
    if not args.no_topics:
        since = 0.0 if args.from_beginning else args.since
        follower = TopicFollower(cli_settings(), since=since, window_s=args.window_s, max_rows=args.max_rows)
    monitor = Monitor(MetricsHistory(args.worker_url), follower, args.refresh_s)
    try:
        server = serve(monitor, args.host, args.port)
    except OSError as exc:
        print(f"error: cannot serve the page on {args.host}:{args.port} ({exc.strerror or exc}); use --port",
              file=sys.stderr)
        return 2
    monitor.start()
    log.info("monitor on http://%s:%d/ (workers: %s)", args.host, server.server_port,
             ", ".join(args.worker_url) or "none")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        monitor.stop.set()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
