"""SIGTERM stops the worker within PRICING_SHUTDOWN_TIMEOUT_S, even with its broker gone, and a
restart after a normal SIGTERM loses nothing.

The broker-gone scenario runs on a second broker started here (own ports and data dir), so the
shared one keeps serving the other tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer

from streams.schemas import dumps, parse_price
from streams.settings import load_settings
from streams.tools.source import publish
from streams.topics import ensure_topics
from tests.integration import test_worker
from tests.integration.net import free_port
from tests.integration.test_worker import (
    CATALOG,
    Worker,
    assert_state_as_if_never_stopped,
    expected_ids,
    make_events,
    read_all,
    read_topic,
    send_events,
    wait_for_commit,
)

REPO = Path(__file__).resolve().parents[2]
deployment = test_worker.deployment  # the fixture: unique topics on the shared broker, a worker factory
TIMEOUT_S = 15.0  # PRICING_SHUTDOWN_TIMEOUT_S in these tests
MARGIN_S = 5.0  # interpreter exit after the stop, and the test's own polling



@pytest.fixture()
def own_broker(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A second single-node broker on free ports with its own data dir: (bootstrap, env for broker.py)."""
    env = {**os.environ, "KAFKA_PORT": str(free_port()), "KAFKA_CONTROLLER_PORT": str(free_port()),
           "KAFKA_DATA_DIR": str(tmp_path / "kafka")}
    cmd = [sys.executable, str(REPO / "deploy" / "kafka" / "broker.py")]
    up = subprocess.run([*cmd, "up"], env=env, capture_output=True, text=True, timeout=180)
    if up.returncode != 0:
        pytest.fail(f"second broker did not start:\n{up.stdout[-2000:]}\n{up.stderr[-2000:]}", pytrace=False)
    yield up.stdout.strip().splitlines()[-1], env
    subprocess.run([*cmd, "down"], env=env, capture_output=True, timeout=120)


def _stop(proc: subprocess.Popen, limit: float) -> float:
    """SIGTERM, then the seconds until the process exited (fails after ``limit`` s, killing it)."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"worker still running {limit:.0f} s after SIGTERM", pytrace=False)
    return time.monotonic() - t0


def _lines(log: Path) -> int:
    return len(log.read_text(errors="replace").splitlines())


def test_sigterm_with_the_broker_gone_stops_within_the_timeout(own_broker, model_dir: Path, tmp_path: Path) -> None:
    bootstrap, broker_env = own_broker
    tag = uuid.uuid4().hex[:8]
    env_settings = {
        "PRICING_KAFKA_BOOTSTRAP": bootstrap, "PRICING_APP_ID": f"sd-{tag}", "PRICING_PARTITIONS": "2",
        "PRICING_MODEL_DIR": str(model_dir), "PRICING_USER_HASH_KEY": "it-secret", "PRICING_TOP_K": "1",
        "PRICING_DATA_DIR": str(tmp_path / "w"), "PRICING_SHUTDOWN_TIMEOUT_S": str(TIMEOUT_S),
        "PRICING_SESSION_TIMEOUT_S": "6",
    }
    s = load_settings(env_settings)
    ensure_topics(s)
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    publish(producer, s.topic_catalog, [(c.item_id.encode(), dumps(c)) for c in CATALOG])
    producer.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRICING_")} | env_settings
    env.setdefault("PRICING_METRICS_PORT", "0")  # the default port may be taken by another worker here
    env["PYTHONUNBUFFERED"] = "1"  # the log lines are counted as they come
    log = tmp_path / "worker.log"
    worker = Worker(env, log, [])
    try:
        evs = make_events(n_users=3, per_user=4)
        send_events(s, [dumps(e) for e in evs])
        want = expected_ids(s, evs)
        read_topic(s, s.topic_prices, lambda r: want <= {parse_price(x.value).decision_id for x in r}, 120,
                   worker.tail)
        # the broker goes away (stopped the way an operator would) while the worker runs
        before = _lines(log)
        down = subprocess.run([sys.executable, str(REPO / "deploy" / "kafka" / "broker.py"), "down"],
                              env=broker_env, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr
        time.sleep(10)
        assert worker.alive(), worker.tail()
        while_down = _lines(log) - before
        # reconnect errors are rate-limited: unlimited, it was ~40-150 lines a second
        assert while_down < 150, worker.tail(60)
        at_signal = _lines(log)
        elapsed = _stop(worker.proc, TIMEOUT_S + MARGIN_S)
        after = _lines(log) - at_signal
        text = log.read_text(errors="replace")
        print(f"\nshutdown with the broker gone: exit {worker.proc.returncode} after {elapsed:.1f} s "
              f"(timeout {TIMEOUT_S:g} s); {while_down} log lines from stopping the broker to 10 s later, {after} after SIGTERM")
        assert "SIGTERM received: stopping" in text
        forced = "forcing exit" in text
        assert worker.proc.returncode == (70 if forced else 0), worker.tail(60)
        assert after < 400, worker.tail(80)
    finally:
        worker.kill(signal.SIGKILL)


def test_restart_after_sigterm_loses_nothing(deployment) -> None:
    s, start = deployment
    # long enough that a graceful stop after the first commit leaves part of it unprocessed: with 2,400
    # events the worker (~2k events/s) sometimes finished the whole stream before the stop
    evs = make_events(n_users=40, per_user=200)
    send_events(s, [dumps(e) for e in evs])
    want = expected_ids(s, evs)
    worker = start("a", PRICING_SHUTDOWN_TIMEOUT_S=str(TIMEOUT_S))

    def ids(recs: list) -> set[str]:
        return {parse_price(r.value).decision_id for r in recs}

    # a normal stop mid-stream (the broker is up): after the first commit, part of the stream unprocessed
    wait_for_commit(s, 60, worker.tail)
    elapsed = _stop(worker.proc, TIMEOUT_S + MARGIN_S)
    print(f"\nshutdown with the broker up: exit {worker.proc.returncode} after {elapsed:.1f} s")
    assert worker.proc.returncode == 0, worker.tail(60)
    assert "forcing exit" not in worker.log.read_text()
    assert not (want <= ids(read_all(s, s.topic_prices))), "stopped too late to test"
    worker = start("a", PRICING_SHUTDOWN_TIMEOUT_S=str(TIMEOUT_S))  # same data dir
    read_topic(s, s.topic_prices, lambda r: want <= ids(r), 180, worker.tail)
    assert_state_as_if_never_stopped(s, evs)
