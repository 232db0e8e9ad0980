"""Replay and the catalog applier against the real broker, through their command lines."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import orjson
from kafka import KafkaConsumer, KafkaProducer

from streams.schemas import PriceEvent, dumps, parse_catalog
from streams.source import csv_records, publish

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
    done = cli("streams.replay", bootstrap, str(SAMPLE), "--topic", clicks, "--catalog-topic", catalog,
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
    done = cli("streams.catalog_apply", bootstrap, "--once", "--db", str(db), "--topic", topic, "--group", group)
    assert done.returncode == 0, done.stderr
    assert "applied=3, duplicate=1, stale=1, invalid={'UNKNOWN_FIELD': 1}" in done.stderr
    with sqlite3.connect(db) as conn:
        state = conn.execute("SELECT user_id, item_id, price, decision_id, ts FROM personal_prices "
                             "ORDER BY item_id").fetchall()
    assert state == [("u1", "i1", 9.0, "d3", 200.0), ("u1", "i2", 11.0, "d2", 100.0)]

    # a replay of everything, with a changed price under an old decision_id: still no change
    assert publish(producer, topic, [(e.user_id.encode(), dumps(replace(e, price=1.0))) for e in first]).failed == 0
    producer.close()
    again = cli("streams.catalog_apply", bootstrap, "--once", "--db", str(db), "--topic", topic, "--group", group)
    assert again.returncode == 0, again.stderr
    assert "applied=0, duplicate=5, stale=0, invalid={}" in again.stderr  # committed offsets: only the replay
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT user_id, item_id, price, decision_id, ts FROM personal_prices "
                            "ORDER BY item_id").fetchall() == state
