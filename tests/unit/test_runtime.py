"""The shutdown watchdog and the repeat filter (streams/runtime.py), and the worker hooks that arm
and install them (streams/faust_compat.py ``worker_class``)."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time

import faust

from streams.faust_compat import worker_class
from streams.runtime import EXIT_FORCED, RepeatFilter, ShutdownWatchdog, install_repeat_filter


def test_watchdog_forces_exit_of_a_stuck_process() -> None:
    # a process whose "graceful stop" never ends: the watchdog must end it, with a clear line
    code = ("import logging, time; logging.basicConfig(level=logging.INFO);"
            "from streams.runtime import ShutdownWatchdog;"
            "ShutdownWatchdog(0.5).arm('SIGTERM received'); time.sleep(30)")
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert done.returncode == EXIT_FORCED
    assert time.monotonic() - t0 < 10
    assert "shutdown did not finish within 0 s" in done.stderr or "within 1 s" in done.stderr, done.stderr
    assert "PRICING_SHUTDOWN_TIMEOUT_S" in done.stderr


def test_watchdog_arms_once_and_can_be_disarmed() -> None:
    exits: list[int] = []
    dog = ShutdownWatchdog(0.2, exit=exits.append)
    dog.arm("SIGTERM received")
    first = dog.armed_at
    dog.arm("SIGINT received")  # a second signal does not restart the countdown
    assert dog.armed_at == first
    time.sleep(0.5)
    assert exits == [EXIT_FORCED]
    quiet = ShutdownWatchdog(0.2, exit=exits.append)
    quiet.arm("SIGTERM received")
    quiet.disarm()
    time.sleep(0.4)
    assert exits == [EXIT_FORCED]


def _record(msg: str = "Unable connect to node with id %s: %s", level: int = logging.ERROR,
            name: str = "aiokafka.client") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, (1, "refused"), None)


def test_repeat_filter_bursts_then_summarises() -> None:
    now = [0.0]
    f = RepeatFilter(burst=3, interval_s=60.0, clock=lambda: now[0])
    kept = [f.filter(_record()) for _ in range(100)]
    assert kept == [True] * 3 + [False] * 97
    assert f.filter(_record("Failed fetch messages from %s: %s"))  # another kind has its own budget
    assert f.filter(_record(level=logging.INFO))  # below WARNING: never limited
    now[0] = 61.0
    rec = _record()
    assert f.filter(rec)
    assert "[suppressed 97 similar messages in the previous 60 s]" in rec.getMessage()


def test_repeat_filter_flush_logs_pending_summaries(caplog) -> None:
    now = [0.0]
    f = RepeatFilter(burst=1, interval_s=10.0, clock=lambda: now[0])
    for _ in range(5):
        f.filter(_record())
    assert f.flush() == 0  # the interval has not ended yet
    now[0] = 11.0
    with caplog.at_level(logging.WARNING, logger="pricing.worker"):
        assert f.flush() == 1
    assert "suppressed 4 similar messages of aiokafka.client" in caplog.text


def test_repeat_filter_decides_once_per_record_across_handlers() -> None:
    f = RepeatFilter(burst=1, interval_s=60.0)
    root = logging.Logger("test-root")
    a, b = logging.StreamHandler(), logging.StreamHandler()
    root.addHandler(a)
    root.addHandler(b)
    install_repeat_filter(root, f)
    install_repeat_filter(root, f)  # idempotent
    assert a.filters == [f] and b.filters == [f]
    rec = _record()
    assert a.filter(rec) and b.filter(rec)  # the same record passes both handlers, counted once
    assert not a.filter(_record())


def test_worker_class_calls_the_hooks_before_faust_stops(monkeypatch) -> None:
    signals: list[str] = []
    roots: list[logging.Logger] = []
    cls = worker_class(signals.append, roots.append)
    assert issubclass(cls, faust.Worker)
    stopped: list[object] = []

    class Probe(cls):  # stand-in for mode's own scheduling: record what reaches it
        def __init__(self) -> None:  # no real worker: only the overridden hooks are exercised
            pass

    # mode.Worker._schedule_shutdown is what the SIGTERM/SIGINT handlers call
    import mode

    monkeypatch.setattr(mode.Worker, "_schedule_shutdown", lambda self, sig: stopped.append(sig))
    Probe()._schedule_shutdown(signal.SIGTERM)
    assert signals == ["SIGTERM"] and stopped == [signal.SIGTERM]
    assert hasattr(faust.Worker, "on_setup_root_logger")  # the hook Faust calls once logging is set up
