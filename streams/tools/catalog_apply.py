"""``pricing-catalog-apply``: the catalog side, applying PriceEvents to a SQLite store, idempotently.

A reference consumer (kafka-python, its own consumer group) of the prices topic. Each batch is
applied in one SQLite transaction and the Kafka offsets are committed only after it commits:
at-least-once delivery plus an idempotent apply is effectively once.

Idempotence: ``applied_decisions`` remembers every decision_id, so a duplicate or replayed
event is a no-op; ``personal_prices`` holds one row per (user, item), the latest by event
``ts`` (ties broken by decision_id), so the final state does not depend on arrival order.

>>> import sqlite3
>>> conn = connect(sqlite3.connect(":memory:"))
>>> ev = (b'{"decision_id":"d1","ts":10.0,"user_id":"u","item_id":"i","price":9.5,"base_price":10.0,'
...       b'"arm":"treatment","expected_conversion":0.2,"expected_profit":1.0,"model_version":"m1","reasons":[]}')
>>> apply_batch(conn, [ev, ev], now=100.0)
Applied(applied=1, duplicate=1, stale=0, invalid={})
"""

from __future__ import annotations

import argparse
import logging
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.kafka_config import cli_check_connection, kafka_python_config
from streams.schemas import SchemaError, parse_price
from streams.settings import cli_settings
from streams.version import add_version

log = logging.getLogger("pricing.catalog_apply")

SCHEMA = """
CREATE TABLE IF NOT EXISTS personal_prices (
    user_id TEXT NOT NULL, item_id TEXT NOT NULL, price REAL NOT NULL, base_price REAL NOT NULL,
    arm TEXT NOT NULL, decision_id TEXT NOT NULL, model_version TEXT NOT NULL, ts REAL NOT NULL,
    applied_at REAL NOT NULL, PRIMARY KEY (user_id, item_id));
CREATE TABLE IF NOT EXISTS applied_decisions (decision_id TEXT PRIMARY KEY);
"""
# newer event ts wins; equal ts: the larger decision_id, so any arrival order ends in one state
UPSERT = """
INSERT INTO personal_prices VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (user_id, item_id) DO UPDATE SET
    price = excluded.price, base_price = excluded.base_price, arm = excluded.arm,
    decision_id = excluded.decision_id, model_version = excluded.model_version, ts = excluded.ts,
    applied_at = excluded.applied_at
WHERE excluded.ts > personal_prices.ts
   OR (excluded.ts = personal_prices.ts AND excluded.decision_id > personal_prices.decision_id)
"""


@dataclass
class Applied:
    """Counts of one or more batches: applied, duplicate (seen decision_id), stale (older ts), invalid."""

    applied: int = 0
    duplicate: int = 0
    stale: int = 0
    invalid: Counter[str] = field(default_factory=Counter)

    def add(self, other: Applied) -> None:
        """Accumulate another batch's counts."""
        self.applied += other.applied
        self.duplicate += other.duplicate
        self.stale += other.stale
        self.invalid.update(other.invalid)

    def __repr__(self) -> str:
        return (f"Applied(applied={self.applied}, duplicate={self.duplicate}, stale={self.stale}, "
                f"invalid={dict(self.invalid)})")


def connect(conn: sqlite3.Connection) -> sqlite3.Connection:
    """Create the tables if missing; returns ``conn``."""
    conn.executescript(SCHEMA)
    return conn


def apply_batch(conn: sqlite3.Connection, payloads: Iterable[bytes], now: float) -> Applied:
    """Apply PriceEvent payloads in one transaction (committed on return, rolled back on error)."""
    out = Applied()
    with conn:  # one transaction: all of the batch or none of it
        for data in payloads:
            try:
                ev = parse_price(data)
            except SchemaError as exc:
                out.invalid[exc.code] += 1
                log.warning("invalid price event (%s): %s", exc.code, exc.reason)
                continue
            if conn.execute("INSERT OR IGNORE INTO applied_decisions VALUES (?)", (ev.decision_id,)).rowcount == 0:
                out.duplicate += 1
                continue
            cur = conn.execute(UPSERT, (ev.user_id, ev.item_id, ev.price, ev.base_price, ev.arm, ev.decision_id,
                                        ev.model_version, ev.ts, now))
            if cur.rowcount:
                out.applied += 1
            else:
                out.stale += 1
    return out


def drained(consumer: Any) -> bool:
    """True when the consumer has partitions and its position is at their end on every one."""
    parts = consumer.assignment()
    if not parts:
        return False
    ends = consumer.end_offsets(list(parts))
    return all(consumer.position(tp) >= ends[tp] for tp in parts)


def run(consumer: Any, conn: sqlite3.Connection, once: bool, timeout_s: float,
        clock: Any = time.time, stop: Any = lambda: False) -> Applied:
    """Poll, apply, then commit offsets; with ``once`` return when drained (or after ``timeout_s`` idle)."""
    total, idle_since = Applied(), time.monotonic()
    while not stop():
        batch = consumer.poll(timeout_ms=500, max_records=500)
        records = [r for part in batch.values() for r in part]
        if records:
            # records -> one SQLite transaction -> offsets (only after the commit)
            total.add(apply_batch(conn, (r.value for r in records), clock()))
            consumer.commit()
            idle_since = time.monotonic()
        elif once and (drained(consumer) or time.monotonic() - idle_since > timeout_s):
            break
    return total


def main(argv: list[str] | None = None) -> int:
    """``pricing-catalog-apply``: apply the prices topic to a SQLite catalog store."""
    from kafka import KafkaConsumer

    p = argparse.ArgumentParser(prog="pricing-catalog-apply", description=main.__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_version(p)
    p.add_argument("--db", type=Path, default=Path("var/catalog.sqlite"), help="SQLite catalog store")
    p.add_argument("--group", default="catalog-apply", help="Kafka consumer group")
    p.add_argument("--topic", help="override PRICING_TOPIC_PRICES")
    p.add_argument("--bootstrap", help="override PRICING_KAFKA_BOOTSTRAP")
    p.add_argument("--once", action="store_true", help="drain what is in the topic, then exit")
    p.add_argument("--timeout", type=float, default=30.0, help="with --once: give up after this long idle (s)")
    args = p.parse_args(argv)
    overrides = {"kafka_bootstrap": args.bootstrap, "topic_prices": args.topic}
    s = cli_settings(**{k: v for k, v in overrides.items() if v})
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO lines are connection chatter
    cli_check_connection(s, "pricing-catalog-apply")
    args.db.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(sqlite3.connect(args.db))
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    consumer = KafkaConsumer(s.topic_prices, group_id=args.group, client_id="pricing-catalog-apply",
                             enable_auto_commit=False, auto_offset_reset="earliest", **kafka_python_config(s))
    try:
        total = run(consumer, conn, args.once, args.timeout, stop=lambda: bool(stopping))
        incomplete = args.once and not stopping and not drained(consumer)
    except KeyboardInterrupt:
        return 130
    finally:
        consumer.close(autocommit=False)
        conn.close()
    print(f"catalog-apply: {total} into {args.db}", file=sys.stderr)
    if incomplete:
        print(f"catalog-apply: error: {s.topic_prices} not drained within {args.timeout:.0f} s idle", file=sys.stderr)
    return 1 if incomplete else 0


if __name__ == "__main__":
    raise SystemExit(main())
