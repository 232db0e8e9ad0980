"""Process-level robustness of the worker: a bounded shutdown and a bounded log.

* :class:`ShutdownWatchdog`: armed on SIGTERM/SIGINT; if the graceful stop (Faust's: agents finish
  their batch, offsets committed, tables flushed) has not ended the process after
  ``PRICING_SHUTDOWN_TIMEOUT_S``, it logs why and force-exits with :data:`EXIT_FORCED`. A thread, not
  a task: it must fire even when the event loop is stuck waiting on a broker that is gone.
  Nothing is lost by the forced exit: offsets are committed only after the prices of their
  events are in Kafka, so a restart re-prices the uncommitted tail with the same decision ids.
* :class:`RepeatFilter`: a logging filter that lets the first ``burst`` records of a kind (logger,
  level, message template) through per ``interval_s``, then one summary. Without it, a worker whose
  broker is gone wrote ~40-150 identical reconnect errors a second.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

EXIT_FORCED = 70  # EX_SOFTWARE: the process did not stop by itself within the timeout
# EX_TEMPFAIL: a batch failed (e.g. its prices could not be delivered) and was left uncommitted; a
# restart prices it again
EXIT_BATCH_FAILED = 75

log = logging.getLogger("pricing.worker")


class ShutdownWatchdog:
    """Force-exits the process ``timeout_s`` after :meth:`arm` unless it ended by then."""

    def __init__(self, timeout_s: float, *, exit: Callable[[int], object] = os._exit) -> None:
        self.timeout_s, self._exit = timeout_s, exit
        self._timer: threading.Timer | None = None
        self.armed_at: float | None = None

    def arm(self, reason: str) -> None:
        """Start the countdown (once; later calls, e.g. a second SIGTERM, change nothing)."""
        if self._timer is not None:
            return
        self.armed_at = time.monotonic()
        log.info("%s: stopping; forced exit in %.0f s if the stop does not finish (PRICING_SHUTDOWN_TIMEOUT_S)",
                 reason, self.timeout_s)
        self._timer = threading.Timer(self.timeout_s, self._fire)
        self._timer.daemon = True  # never keeps a process alive that finished its stop
        self._timer.name = "shutdown-watchdog"
        self._timer.start()

    def disarm(self) -> None:
        """Cancel the countdown (the stop finished)."""
        if self._timer is not None:
            self._timer.cancel()

    def _fire(self) -> None:
        log.critical("shutdown did not finish within %.0f s (PRICING_SHUTDOWN_TIMEOUT_S), most likely because the "
                     "Kafka brokers are unreachable; forcing exit %d. Events not yet committed are priced again "
                     "after a restart (same decision ids)", self.timeout_s, EXIT_FORCED)
        for handler in logging.getLogger().handlers:  # os._exit skips the interpreter's own flush
            try:
                handler.flush()
            except Exception:  # noqa: BLE001 - a broken handler must not stop the exit
                pass
        self._exit(EXIT_FORCED)


class RepeatFilter(logging.Filter):
    """Rate-limits repeated log records of one kind: ``burst`` per ``interval_s``, then a summary.

    A kind is (logger name, level, unformatted message), so "Unable connect to node %s" is one
    kind for every node. Records below ``min_level`` always pass. The summary is appended to the
    first record let through in the next interval, and :meth:`flush` logs the ones still pending.

    >>> f = RepeatFilter(burst=2, interval_s=60.0, clock=lambda: 0.0)
    >>> rec = lambda: logging.LogRecord("aiokafka", logging.ERROR, "", 0, "Unable connect to %s", ("n1",), None)
    >>> [f.filter(rec()) for _ in range(4)]
    [True, True, False, False]
    """

    def __init__(self, burst: int = 5, interval_s: float = 60.0, *, min_level: int = logging.WARNING,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst, self.interval_s, self.min_level, self.clock = burst, interval_s, min_level, clock
        self._kinds: dict[tuple[str, int, str], list[float]] = {}  # kind -> [window start, passed, suppressed]
        self._lock = threading.Lock()  # aiokafka logs from Faust's consumer and producer threads too

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is written (decided once per record, whatever the number of handlers)."""
        decided = getattr(record, "_repeat_filter", None)
        if decided is not None:
            return bool(decided)
        keep = True
        if record.levelno >= self.min_level:
            keep = self._decide(record)
        record._repeat_filter = keep
        return keep

    def _decide(self, record: logging.LogRecord) -> bool:
        kind = (record.name, record.levelno, str(record.msg)[:200])
        now = self.clock()
        with self._lock:
            state = self._kinds.get(kind)
            if state is None or now - state[0] >= self.interval_s:
                suppressed = int(state[2]) if state else 0
                if len(self._kinds) > 1000:  # arbitrary messages must not grow memory
                    self._kinds.clear()
                self._kinds[kind] = [now, 1, 0]
                if suppressed:
                    record.msg = f"{record.msg} [suppressed {suppressed} similar messages in the previous " \
                                 f"{self.interval_s:.0f} s]"
                return True
            if state[1] < self.burst:
                state[1] += 1
                return True
            state[2] += 1
            return False

    def flush(self, logger: logging.Logger = log) -> int:
        """Log one line per kind whose interval has ended with suppressed records; returns how many."""
        now, lines = self.clock(), []
        with self._lock:
            for kind, state in list(self._kinds.items()):
                if state[2] and now - state[0] >= self.interval_s:
                    lines.append((kind, int(state[2])))
                    del self._kinds[kind]
        for (name, _, msg), n in lines:
            logger.warning("suppressed %d similar messages of %s: %r", n, name, msg[:120])
        return len(lines)


def install_repeat_filter(root: logging.Logger, repeat: RepeatFilter) -> None:
    """Put ``repeat`` on every handler of ``root`` (handler filters see propagated records; logger
    filters would not)."""
    for handler in root.handlers:
        if repeat not in handler.filters:
            handler.addFilter(repeat)
