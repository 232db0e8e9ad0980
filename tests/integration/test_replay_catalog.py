"""Replay and the catalog applier against the real broker, through their command lines."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streams.schemas import PriceEvent, decision_id, dumps, parse_catalog, parse_click, parse_dead_letter, parse_price
from streams.settings import load_settings
from streams.tools.source import csv_records, publish
from streams.topics import ensure_topics

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "tests" / "data" / "replay_public_sample.csv"


def cli(module: str, bootstrap: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRICING_")}
    env["PRICING_KAFKA_BOOTSTRAP"] = bootstrap
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def read_all(bootstrap: str, topic: str, n: int) -> list:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=5_000)
    out = []
    for msg in consumer:
        out.append(msg)
        if len(out) >= n:
            break
    consumer.close()
    return out


def test_replay_a_public_csv_keyed_by_user_in_order(bootstrap: str, topic_factory) -> None:
    clicks, catalog = topic_factory(1, prefix="replay"), topic_factory(1, prefix="catalog")
    done = cli("streams.tools.replay", bootstrap, str(SAMPLE), "--topic", clicks, "--catalog-topic", catalog,
               "--emit-catalog", "--rate", "500", "--no-progress", "--json")
    assert done.returncode == 0, done.stderr
    summary = orjson.loads(done.stdout)
    assert (summary["sent"], summary["failed"], summary["read"]) == (28, 0, 30)
    expected = [r for r in csv_records(SAMPLE) if not r.skip]
    got = read_all(bootstrap, clicks, 28)
    assert [m.value for m in got] == [r.payload() for r in expected]  # every row but the skipped, in order
    assert [m.key for m in got] == [r.key for r in expected]
    for m in got:  # keyed by user_id wherever the row has one
        obj = orjson.loads(m.value) if m.value.startswith(b"{") else {}
        assert m.key == (obj["user_id"].encode() if "user_id" in obj else None)
    items = read_all(bootstrap, catalog, 5)
    assert sorted(m.key for m in items) == [b"1004856", b"1005115", b"17300353", b"3601530", b"4804056"]
    assert all(parse_catalog(m.value).item_id == m.key.decode() for m in items)


def price(decision_id: str, ts: float, value: float, user: str = "u1", item: str = "i1") -> PriceEvent:
    return PriceEvent(decision_id, ts, user, item, value, 10.0, "treatment", 0.3, 1.2, "m1", ("OPTIMAL",))


def test_catalog_apply_is_idempotent_across_duplicates_and_replays(bootstrap: str, topic_factory,
                                                                   tmp_path: Path) -> None:
    topic, db, group = topic_factory(2, prefix="prices"), tmp_path / "catalog.sqlite", f"g-{uuid.uuid4().hex[:8]}"
    first = [price("d1", 100.0, 9.5), price("d2", 100.0, 11.0, item="i2"), price("d3", 200.0, 9.0),
             price("d1", 100.0, 9.5),  # a duplicate delivery
             price("d0", 50.0, 12.0)]  # late: older than d3 for the same (user, item)
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    records = [(e.user_id.encode(), dumps(e)) for e in first] + [(b"u1", b'{"not": "a price"}')]
    assert publish(producer, topic, records).failed == 0
    done = cli("streams.tools.catalog_apply", bootstrap, "--once", "--db", str(db), "--topic", topic, "--group", group)
    assert done.returncode == 0, done.stderr
    assert "applied=3, duplicate=1, stale=1, invalid={'UNKNOWN_FIELD': 1}" in done.stderr
    with sqlite3.connect(db) as conn:
        state = conn.execute("SELECT user_id, item_id, price, decision_id, ts FROM personal_prices "
                             "ORDER BY item_id").fetchall()
    assert state == [("u1", "i1", 9.0, "d3", 200.0), ("u1", "i2", 11.0, "d2", 100.0)]

    # a replay of everything, with a changed price under an old decision_id: still no change
    assert publish(producer, topic, [(e.user_id.encode(), dumps(replace(e, price=1.0))) for e in first]).failed == 0
    producer.close()
    again = cli("streams.tools.catalog_apply", bootstrap, "--once", "--db", str(db), "--topic", topic, "--group", group)
    assert again.returncode == 0, again.stderr
    assert "applied=0, duplicate=5, stale=0, invalid={}" in again.stderr  # committed offsets: only the replay
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT user_id, item_id, price, decision_id, ts FROM personal_prices "
                            "ORDER BY item_id").fetchall() == state


def poll_until(bootstrap: str, topic: str, until, timeout: float, logs) -> list:
    """Records of ``topic`` from the start until ``until(records)``; fails with the worker's log tail."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or {0}])
    records: list = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
            if until(records):
                return records
    finally:
        consumer.close()
    pytest.fail(f"timed out with {len(records)} records on {topic}\n{logs()}", pytrace=False)


def test_public_csv_priced_end_to_end_and_applied(bootstrap: str, admin, model_dir: Path, tmp_path: Path) -> None:
    """CSV -> replay -> worker -> prices -> catalog applier; bad rows dead-lettered with the worker's reasons."""
    tag = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRICING_")} | {
        "PRICING_KAFKA_BOOTSTRAP": bootstrap, "PRICING_APP_ID": f"it-replay-{tag}",
        "PRICING_TOPIC_CLICKSTREAM": f"clicks-{tag}", "PRICING_TOPIC_CATALOG": f"catalog-{tag}",
        "PRICING_TOPIC_PRICES": f"prices-{tag}", "PRICING_TOPIC_DEAD_LETTER": f"dlq-{tag}",
        "PRICING_PARTITIONS": "2", "PRICING_MODEL_DIR": str(model_dir), "PRICING_TOP_K": "1",
        "PRICING_DATA_DIR": str(tmp_path / "worker"), "PRICING_BATCH_WITHIN_S": "0.05",
        "PRICING_METRICS_PORT": "0",  # the default port may be taken by another worker on this machine
    }
    s = load_settings({k: v for k, v in env.items() if k.startswith("PRICING_")})
    ensure_topics(s)
    run = lambda module, *a: subprocess.run([sys.executable, "-m", module, *a], cwd=REPO, env=env,  # noqa: E731
                                            capture_output=True, text=True, timeout=120)
    # the catalog first (the worker reads it whole at start), then the clicks once the worker runs
    done = run("streams.tools.replay", str(SAMPLE), "--emit-catalog", "--limit", "0", "--no-progress")
    assert done.returncode == 0, done.stderr
    log = tmp_path / "worker.log"
    worker = subprocess.Popen([sys.executable, "-m", "streams.app"], env=env, cwd=REPO, stdout=log.open("wb"),
                              stderr=subprocess.STDOUT)
    tail = lambda: "\n".join(log.read_text(errors="replace").splitlines()[-40:])  # noqa: E731
    try:
        done = run("streams.tools.replay", str(SAMPLE), "--rate", "200", "--no-progress")
        assert done.returncode == 0, done.stderr
        records = [r for r in csv_records(SAMPLE) if not r.skip]
        valid = [parse_click(r.payload(), now=time.time()) for r in records if not r.invalid]
        want = {decision_id(e.event_id, e.item_id) for e in valid if e.type in s.triggers}
        prices = poll_until(bootstrap, s.topic_prices, lambda rs: want <= {parse_price(r.value).decision_id
                                                                            for r in rs}, 120, tail)
        letters = poll_until(bootstrap, s.topic_dead_letter, lambda rs: len(rs) >= 7, 30, tail)
        assert worker.poll() is None, tail()
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        admin.delete_topics([s.topic_clickstream, s.topic_catalog, s.topic_dead_letter], timeout_ms=10_000)
    got = sorted((parse_dead_letter(r.value).error_code, parse_dead_letter(r.value).original) for r in letters)
    assert got == sorted((r.invalid, r.payload()) for r in records if r.invalid)  # the reason we predicted
    assert all(r.key == parse_price(r.value).user_id.encode() for r in prices)
    # and the catalog side applies them: one row per (user, item) priced
    db = tmp_path / "catalog.sqlite"
    done = run("streams.tools.catalog_apply", "--once", "--db", str(db), "--group", f"apply-{tag}")
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(db) as conn:
        pairs = set(conn.execute("SELECT user_id, item_id FROM personal_prices").fetchall())
    assert pairs == {(p.user_id, p.item_id) for p in map(parse_price, (r.value for r in prices))}
    admin.delete_topics([s.topic_prices], timeout_ms=10_000)
