"""The catalog-side applier over an in-memory SQLite: idempotent by decision_id, newest ts wins."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import pytest

from streams.schemas import PriceEvent, dumps
from streams.tools.catalog_apply import apply_batch, connect


def price(decision_id: str, ts: float, value: float, user: str = "u1", item: str = "i1") -> PriceEvent:
    return PriceEvent(decision_id, ts, user, item, value, 10.0, "treatment", 0.3, 1.2, "m1", ("OPTIMAL",))


def rows(conn: sqlite3.Connection) -> tuple[list[tuple], list[tuple]]:
    return (conn.execute("SELECT * FROM personal_prices ORDER BY user_id, item_id").fetchall(),
            conn.execute("SELECT * FROM applied_decisions ORDER BY decision_id").fetchall())


def db() -> sqlite3.Connection:
    return connect(sqlite3.connect(":memory:"))


def test_applying_twice_changes_nothing() -> None:
    conn = db()
    batch = [dumps(price("d1", 100.0, 9.5)), dumps(price("d2", 101.0, 9.0, item="i2"))]
    first = apply_batch(conn, batch, now=1000.0)
    state = rows(conn)
    again = apply_batch(conn, batch, now=2000.0)  # a replay, later: not even applied_at moves
    assert (first.applied, first.duplicate) == (2, 0)
    assert (again.applied, again.duplicate) == (0, 2)
    assert rows(conn) == state
    assert state == ([("u1", "i1", 9.5, 10.0, "treatment", "d1", "m1", 100.0, 1000.0),
                      ("u1", "i2", 9.0, 10.0, "treatment", "d2", "m1", 101.0, 1000.0)], [("d1",), ("d2",)])


def test_older_ts_does_not_overwrite_newer() -> None:
    conn = db()
    apply_batch(conn, [dumps(price("new", 200.0, 8.0))], now=1.0)
    late = apply_batch(conn, [dumps(price("old", 100.0, 11.0))], now=2.0)
    assert (late.applied, late.stale) == (0, 1)
    assert rows(conn)[0][0][2] == 8.0 and rows(conn)[0][0][5] == "new"
    newer = apply_batch(conn, [dumps(price("newer", 300.0, 9.0))], now=3.0)
    assert newer.applied == 1 and rows(conn)[0][0][5] == "newer"


def test_final_state_does_not_depend_on_arrival_order() -> None:
    events = [dumps(price(f"d{i}", float(ts), 9.0 + i / 10)) for i, ts in enumerate([5, 3, 5, 1, 4])]
    a, b = db(), db()
    apply_batch(a, events, now=0.0)
    apply_batch(b, list(reversed(events)), now=0.0)
    assert rows(a) == rows(b)
    assert rows(a)[0][0][5] == "d2"  # ts 5 twice: the larger decision_id wins the tie


def test_bad_events_are_counted_not_applied_and_the_rest_still_applies() -> None:
    conn = db()
    bad_price = dumps(replace(price("d9", 1.0, 1.0), price=-1.0))
    out = apply_batch(conn, [b"{nope", bad_price, b'{"decision_id": "x"}', dumps(price("d1", 1.0, 9.0))], now=0.0)
    assert dict(out.invalid) == {"NOT_JSON": 1, "BAD_PRICE": 1, "MISSING_FIELD": 1}
    assert out.applied == 1
    assert [r[0] for r in rows(conn)[1]] == ["d1"]  # invalid events never mark a decision as applied


def test_a_failing_batch_leaves_nothing_behind() -> None:
    conn = db()
    conn.execute("CREATE TRIGGER boom BEFORE INSERT ON personal_prices WHEN NEW.item_id = 'bad' "
                 "BEGIN SELECT RAISE(ABORT, 'boom'); END")
    with pytest.raises(sqlite3.IntegrityError):
        apply_batch(conn, [dumps(price("d1", 1.0, 9.0)), dumps(price("d2", 1.0, 9.0, item="bad"))], now=0.0)
    assert rows(conn) == ([], [])  # rolled back: the redelivered batch will apply cleanly
