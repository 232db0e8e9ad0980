"""A 3-broker KRaft cluster (``broker.py up --brokers 3``): one broker killed -9 while events flow.

The module starts its own cluster (own ports and data dir) and stops it at the end. Topics are
created by pricing-topics' code with replication factor 3 and min.insync.replicas 2; Faust's
changelog gets replication factor 3 too. A producer with acks=all keeps sending while node 2 is
killed and restarted; every trigger must be priced (by decision_id) and the worker never stops.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from streams.kafka_config import kafka_python_config
from streams.schemas import CatalogItem, ClickEvent, decision_id, dumps, parse_price
from streams.settings import load_settings
from streams.tools.source import keyed, publish
from streams.topics import changelog_topic, ensure_topics

REPO = Path(__file__).resolve().parents[2]
CATALOG = [CatalogItem(f"i{k}", f"cat{k % 3}", 10.0 + k, 4.0 + k / 2, 8.0 + k * 0.8, 12.0 + k * 1.2)
           for k in range(6)]
pytestmark = pytest.mark.cluster


def _round(r: int, users: int = 20) -> list[ClickEvent]:
    types = ["view", "click", "add_to_cart", "purchase"]
    return [ClickEvent(f"r{r}-u{u}", time.time() - 1, f"user-{u}", f"s{u}", types[(r + u) % 4], f"i{(u + r) % 6}",
                       9.0 + r % 3, 1, None) for u in range(users)]


def _wait_in_sync(admin: KafkaAdminClient, topics: list[str], replicas: int = 3, timeout: float = 90.0) -> None:
    """Every partition of ``topics`` has all its replicas in sync: a freshly started cluster on a loaded
    machine can take a while, and with min.insync.replicas=2 an acks=all send waits until it does."""
    deadline = time.monotonic() + timeout
    lagging: list[str] = []
    while time.monotonic() < deadline:
        lagging = [f"{d.get('topic', d.get('name'))}/{p['partition_index']} isr {p['isr_nodes']}" for d in admin.describe_topics(topics)
                   for p in d["partitions"] if len(p["isr_nodes"]) < replicas]
        if not lagging:
            return
        time.sleep(0.5)
    raise AssertionError(f"replicas not in sync after {timeout:.0f} s: {lagging[:5]}")


def _replication(admin: KafkaAdminClient, topic: str) -> set[int]:
    """Replica counts of the topic's partitions (waits out metadata that lags the creation)."""
    deadline = time.monotonic() + 15
    while True:
        parts = admin.describe_topics([topic])[0]["partitions"]
        if parts or time.monotonic() > deadline:
            return {len(p["replica_nodes"]) for p in parts}
        time.sleep(0.2)


def test_kill_9_one_of_three_brokers_while_events_flow(local_brokers, tmp_path: Path) -> None:
    cluster = local_brokers(brokers=3)
    tag = uuid.uuid4().hex[:8]
    pricing = {
        "PRICING_KAFKA_BOOTSTRAP": cluster.bootstrap, "PRICING_REPLICATION_FACTOR": "3",
        "PRICING_MIN_INSYNC_REPLICAS": "2", "PRICING_APP_ID": f"cl-{tag}", "PRICING_TOPIC_CLICKSTREAM": f"clicks-{tag}",
        "PRICING_TOPIC_CATALOG": f"catalog-{tag}", "PRICING_TOPIC_PRICES": f"prices-{tag}",
        "PRICING_TOPIC_DEAD_LETTER": f"dlq-{tag}", "PRICING_PARTITIONS": "4", "PRICING_TOP_K": "1",
        "PRICING_SESSION_TIMEOUT_S": "10", "PRICING_USER_HASH_KEY": "it-secret",
        "PRICING_DATA_DIR": str(tmp_path / "worker"), "PRICING_BATCH_WITHIN_S": "0.05",
        "PRICING_METRICS_PORT": "0",  # the default port may be taken by another worker on this machine
    }
    s = load_settings(pricing)
    ensure_topics(s)
    admin = KafkaAdminClient(**kafka_python_config(s))
    for topic in (s.topic_clickstream, s.topic_catalog, s.topic_prices, s.topic_dead_letter):
        assert _replication(admin, topic) == {3}, topic
    _wait_in_sync(admin, [s.topic_clickstream, s.topic_catalog, s.topic_prices, s.topic_dead_letter])
    producer = KafkaProducer(acks="all", retries=20, **kafka_python_config(s))
    assert publish(producer, s.topic_catalog, [(c.item_id.encode(), dumps(c)) for c in CATALOG]).failed == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRICING_")} | pricing
    log = tmp_path / "worker.log"
    worker = subprocess.Popen([sys.executable, "-m", "streams.app", "--deterministic-scorer"], cwd=REPO, env=env,
                              stdout=log.open("ab"), stderr=subprocess.STDOUT)
    sent: list[ClickEvent] = []
    failures: list[str] = []
    stop = threading.Event()

    def send_rounds() -> None:  # events keep flowing through the kill and the restart
        r = 0
        while not stop.is_set():
            evs = _round(r)
            done = publish(producer, s.topic_clickstream, keyed([dumps(e) for e in evs]))
            if done.failed:
                failures.append(f"round {r}: {done.failed} failed: {done.first_error}")
            sent.extend(evs)
            r += 1
            time.sleep(0.2)

    def worker_log() -> str:
        return log.read_text(errors="replace")[-5000:]

    sender = threading.Thread(target=send_rounds, daemon=True)
    try:
        sender.start()
        _wait_priced(s, lambda: {decision_id(e.event_id, e.item_id) for e in sent[:20] if e.type in s.triggers},
                     120, worker_log)
        os.kill(cluster.node_pid(2), signal.SIGKILL)
        time.sleep(5.0)
        assert worker.poll() is None, worker_log()
        cluster.up()  # restarts the killed node only
        time.sleep(3.0)
        stop.set()
        sender.join(timeout=60)
        assert not failures, failures
        want = {decision_id(e.event_id, e.item_id) for e in sent if e.type in s.triggers}
        _wait_priced(s, lambda: want, 180, worker_log)
        assert worker.poll() is None, worker_log()
        # Faust created its changelog with the settings' replication factor
        assert _replication(admin, changelog_topic(s)) == {3}
        print(f"cluster: {len(sent)} events, {len(want)} triggers priced through a kill -9 of node 2")
    finally:
        stop.set()
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        producer.close()
        admin.close()


def _wait_priced(s, want, timeout: float, logs) -> None:
    consumer = KafkaConsumer(enable_auto_commit=False, auto_offset_reset="earliest", **kafka_python_config(s))
    consumer.assign([TopicPartition(s.topic_prices, p) for p in range(s.partitions)])
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                seen |= {parse_price(r.value).decision_id for r in batch}
            target = want()
            if target and target <= seen:
                return
    finally:
        consumer.close()
    missing = want() - seen
    pytest.fail(f"{len(missing)} triggers unpriced after {timeout} s, e.g. {sorted(missing)[:5]}\n{logs()}",
                pytrace=False)
