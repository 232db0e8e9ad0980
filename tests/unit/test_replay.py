"""Replay without a broker: CSV mapping, pacing math on an injected clock, shifting, --skip, gzip, CLI."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import kafka
import orjson
import pytest

from streams.schemas import ClickEvent, dumps, parse_catalog, parse_click
from streams.tools.replay import Schedule, Summary, main, replay
from streams.tools.source import Record, csv_records, derive_catalog, jsonl_records, map_public_row, parse_event_time

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "replay_public_sample.csv"
T0 = 1569888000.0  # 2019-10-01 00:00:00 UTC


def row(**cells: str) -> dict[str, str]:
    base = {"event_time": "2019-10-01 00:00:05 UTC", "event_type": "view", "product_id": "1004856",
            "category_id": "205", "category_code": "electronics.smartphone", "brand": "samsung",
            "price": "130.76", "user_id": "543272936", "user_session": "s-1"}
    return base | cells


@pytest.mark.parametrize(("csv_type", "ours"), [("view", "view"), ("cart", "add_to_cart"), ("purchase", "purchase")])
def test_event_types_map_to_valid_click_events(csv_type: str, ours: str) -> None:
    rec = map_public_row(row(event_type=csv_type), "e1")
    ev = parse_click(rec.payload(), now=T0)
    assert ev == ClickEvent("e1", T0 + 5, "543272936", "s-1", ours, "1004856", 130.76)
    assert rec.key == b"543272936" and rec.ts == T0 + 5 and rec.invalid is None and rec.skip is None


def test_remove_from_cart_is_skipped_and_named() -> None:
    assert map_public_row(row(event_type="remove_from_cart"), "e1").skip == "remove_from_cart"


@pytest.mark.parametrize(("cells", "code"), [
    ({"event_time": "2019-13-45 99:00:00 UTC"}, "WRONG_TYPE"),
    ({"event_time": ""}, "MISSING_FIELD"),
    ({"user_id": ""}, "MISSING_FIELD"),
    ({"user_session": ""}, "MISSING_FIELD"),
    ({"price": "abc"}, "WRONG_TYPE"),
    ({"price": "nan"}, "WRONG_TYPE"),
    ({"price": "-5.00"}, "BAD_PRICE"),
    ({"event_type": "wishlist"}, "UNKNOWN_EVENT_TYPE"),
    ({"user_id": "u" * 200}, "BAD_VALUE"),
])
def test_bad_rows_are_still_sent_and_fail_with_the_workers_code(cells: dict[str, str], code: str) -> None:
    rec = map_public_row(row(**cells), "e1")
    assert rec.skip is None and rec.invalid == code
    with pytest.raises(Exception, match=code):
        parse_click(rec.payload(), now=T0)
    assert rec.key == (row(**cells)["user_id"].encode() or None)  # keyed by user, None when there is none


def test_event_time_parsing() -> None:
    assert parse_event_time("2019-10-01 00:00:00 UTC") == T0
    assert parse_event_time("2019-10-01T02:00:00+02:00") == T0
    assert parse_event_time("2019-10-01 00:00:00") == T0  # naive means UTC
    assert parse_event_time("2019-10-01 00:00:00.500 UTC") == T0 + 0.5
    assert parse_event_time("") is None and parse_event_time("01/10/2019") is None


def test_sample_file_counts_ids_and_broken_lines() -> None:
    recs = list(csv_records(SAMPLE))
    assert len(recs) == 30
    assert sum(r.skip == "remove_from_cart" for r in recs) == 2
    assert sum(r.invalid is not None for r in recs) == 7
    broken = [r for r in recs if r.invalid == "NOT_JSON"]
    assert broken[0].value == b"2019-10-01 00:00:36 UTC,view,1005115,2053013555631882655"  # the raw line
    ids = [r.value["event_id"] for r in recs if isinstance(r.value, dict) and r.value]
    assert len(set(ids)) == len(ids) and ids == [r.value["event_id"] for r in csv_records(SAMPLE)
                                                 if isinstance(r.value, dict) and r.value]


def test_skip_resumes_after_n_records() -> None:
    full = list(csv_records(SAMPLE))
    assert [r.value for r in csv_records(SAMPLE, skip=12)] == [r.value for r in full[12:]]


def test_derived_catalog_uses_the_median_price_and_the_workers_rules() -> None:
    items = {i.item_id: i for i in derive_catalog(SAMPLE, cost_ratio=0.5, band=0.2)}
    assert set(items) == {"1004856", "1005115", "4804056", "17300353", "3601530"}
    phone = items["1005115"]  # its valid rows show 949.99 and 929.99; the bad rows do not count
    assert (phone.base_price, phone.unit_cost, phone.min_price, phone.max_price) == (939.99, 470.0, 751.99, 1127.99)
    assert items["17300353"].category == "2053013553853497655"  # no category_code: the id
    assert all(parse_catalog(dumps(i)) == i for i in items.values())


def test_schedule_speed_rate_and_as_fast_as_possible() -> None:
    ts = [100.0, 101.0, 160.0, None, 130.0, 220.0]
    assert [Schedule(speed=1).due(t) for t in ts[:1]] == [0.0]
    one, sixty, asap = Schedule(speed=1), Schedule(speed=60), Schedule()
    assert [one.due(t) for t in ts] == [0.0, 1.0, 60.0, 60.0, 60.0, 120.0]
    assert [sixty.due(t) for t in ts] == [0.0, 1 / 60, 1.0, 1.0, 1.0, 2.0]
    assert [asap.due(t) for t in ts] == [0.0] * 6
    rate = Schedule(rate=10)
    assert [rate.due(t) for t in ts] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])


class FakeClock:
    """Time moves only when the code under test sleeps."""

    def __init__(self, now: float) -> None:
        self.now, self.sleeps = now, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def run_replay(records: list[Record], **kw: Any) -> tuple[list[tuple[bytes | None, bytes]], Summary, FakeClock]:
    clock, sent, summary = FakeClock(1_700_000_000.0), [], Summary()

    def send(recs: Any) -> Any:
        sent.extend(recs)
        return type("D", (), {"sent": len(sent), "failed": 0, "first_error": None})()

    replay(records, send, summary, kw.pop("schedule", Schedule()), clock=clock, sleep=clock.sleep, **kw)
    return sent, summary, clock


def test_replay_sleeps_the_scaled_gaps_and_counts() -> None:
    recs = list(csv_records(SAMPLE))
    sent, summary, clock = run_replay(recs, schedule=Schedule(speed=10))
    assert len(sent) == summary.sent == 28 and summary.read == 30
    assert dict(summary.skipped) == {"remove_from_cart": 2}
    assert sum(summary.bad.values()) == 7
    assert sum(clock.sleeps) == pytest.approx(105 / 10)  # first row 00:00:00, last 00:01:45


def test_shift_to_now_keeps_gaps_and_anchors_first_or_last() -> None:
    evs = [ClickEvent(f"e{i}", 1000.0 + 30 * i, "u1", "s", "view", "i", 1.0) for i in range(3)]
    recs = lambda: list(jsonl_records_from(evs))  # noqa: E731
    sent, _, clock = run_replay(recs(), shift="first")
    assert [orjson.loads(v)["ts"] for _, v in sent] == [clock.now, clock.now + 30, clock.now + 60]
    sent, summary, clock = run_replay(recs(), shift="last", last_ts=1060.0)
    assert [orjson.loads(v)["ts"] for _, v in sent] == [clock.now - 60, clock.now - 30, clock.now]
    assert summary.ahead_of_now == 0
    sent, _, _ = run_replay(recs())
    assert [orjson.loads(v)["ts"] for _, v in sent] == [1000.0, 1030.0, 1060.0]


def jsonl_records_from(evs: list[ClickEvent]) -> list[Record]:
    return [Record(e.user_id.encode(), orjson.loads(dumps(e)), e.ts) for e in evs]


def test_gzip_jsonl_with_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl.gz"
    evs = [ClickEvent(f"e{i}", 1000.0 + i, f"u{i % 2}", "s", "view", "i", 1.0) for i in range(4)]
    with gzip.open(path, "wb") as fh:
        fh.write(b"\n".join([dumps(evs[0]), b"[1, 2]", b"", *map(dumps, evs[1:])]) + b"\n")
    recs = list(jsonl_records(path))
    assert [r.key for r in recs] == [b"u0", None, b"u1", b"u0", b"u1"]
    assert [r.invalid for r in recs] == [None, "NOT_OBJECT", None, None, None]
    assert [r.payload() for r in recs if r.invalid is None] == [dumps(e) for e in evs]
    assert [r.ts for r in jsonl_records(path, skip=2)] == [1001.0, 1002.0, 1003.0]


class FakeProducer:
    """A kafka-python producer stand-in: records what is sent, futures fail on request."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.sent, self.headers = fail, [], []

    def send(self, topic: str, key: bytes | None = None, value: bytes = b"",
             headers: list[tuple[str, bytes]] | None = None) -> Any:
        self.sent.append((topic, key, value))
        self.headers.append(headers)
        exc = RuntimeError("broker said no") if self.fail else None
        return type("F", (), {"exception": exc, "failed": lambda self: exc is not None})()

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


def test_cli_sends_catalog_then_clicks_and_reports(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    producer = FakeProducer()
    # the broker preflight (streams/kafka_config.py) is covered by the integration tests
    monkeypatch.setitem(main.__globals__, "cli_check_connection", lambda *a, **k: None)
    monkeypatch.setattr(kafka, "KafkaProducer", lambda **cfg: producer)
    code = main([str(SAMPLE), "--emit-catalog", "--topic", "clicks", "--catalog-topic", "cat", "--skip", "2",
                 "--limit", "20", "--no-progress", "--json"])
    summary = orjson.loads(capsys.readouterr().out)
    assert code == 0
    assert [t for t, _, _ in producer.sent[:5]] == ["cat"] * 5 and producer.sent[0][1] == b"1004856"
    clicks = [(k, v) for t, k, v in producer.sent if t == "clicks"]
    assert summary["read"] == 20 and summary["next_skip"] == 22 and summary["catalog_items"] == 5
    assert len(clicks) == summary["sent"] == 20 - summary["skipped"]["remove_from_cart"]
    assert all(k is None or k == orjson.loads(v)["user_id"].encode() for k, v in clicks)
    assert set(map(str, producer.headers)) == {"None"}  # live events: no history mark


def test_cli_history_marks_every_click_but_not_the_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    producer = FakeProducer()
    monkeypatch.setitem(main.__globals__, "cli_check_connection", lambda *a, **k: None)
    monkeypatch.setattr(kafka, "KafkaProducer", lambda **cfg: producer)
    assert main([str(SAMPLE), "--emit-catalog", "--topic", "clicks", "--catalog-topic", "cat", "--limit", "10",
                 "--history", "--no-progress"]) == 0
    marks = {t: {str(h) for (tt, _, _), h in zip(producer.sent, producer.headers, strict=True) if tt == t}
             for t in ("cat", "clicks")}
    assert marks == {"cat": {"None"}, "clicks": {str([("pricing-history", b"1")])}}


def test_cli_exit_codes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # the broker preflight (streams/kafka_config.py) is covered by the integration tests
    monkeypatch.setitem(main.__globals__, "cli_check_connection", lambda *a, **k: None)
    monkeypatch.setattr(kafka, "KafkaProducer", lambda **cfg: FakeProducer(fail=True))
    assert main([str(SAMPLE), "--no-progress"]) == 1  # delivery failures
    for bad in (["--speed", "-1"], ["--rate", "0"], ["--speed", "2", "--rate", "3"], ["--band", "1.5"]):
        with pytest.raises(SystemExit) as exc:
            main([str(SAMPLE), *bad])
        assert exc.value.code == 2
    (tmp_path / "x.jsonl").write_bytes(b"{}\n")
    (tmp_path / "wrong.csv").write_bytes(b"a,b\n1,2\n")
    for args in ([str(tmp_path / "missing.csv")], [str(tmp_path / "x.jsonl"), "--emit-catalog"]):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2
    assert main([str(tmp_path / "wrong.csv")]) == 2  # not the public layout


def _shifted_ts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str) -> list[float]:
    producer = FakeProducer()
    monkeypatch.setitem(main.__globals__, "cli_check_connection", lambda *a, **k: None)
    monkeypatch.setattr(kafka, "KafkaProducer", lambda **cfg: producer)
    path = tmp_path / "months.jsonl"
    # a file spanning 90 days
    evs = [ClickEvent(f"e{i}", 1_600_000_000.0 + i * 30 * 86400, "u1", "s", "view", "i", 1.0) for i in range(4)]
    path.write_bytes(b"\n".join(map(dumps, evs)) + b"\n")
    assert main([str(path), "--shift-to-now", "--no-progress", *args]) == 0
    return [orjson.loads(v)["ts"] for _, _, v in producer.sent]


def test_shift_to_now_unpaced_puts_the_whole_file_in_the_past(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    import time

    before = time.time()
    for args in ([], ["--rate", "1000"]):
        ts = _shifted_ts(monkeypatch, tmp_path, *args)
        assert max(ts) <= time.time() and max(ts) >= before - 1  # the last event lands at now
        assert [b - a for a, b in zip(ts[:-1], ts[1:], strict=True)] == [30 * 86400.0] * 3  # the gaps are kept


def test_shift_anchor_first_is_refused_when_events_would_be_in_the_future(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for pace in ([], ["--speed", "60"], ["--rate", "100"]):
        with pytest.raises(SystemExit) as exc:
            _shifted_ts(monkeypatch, tmp_path, "--shift-anchor", "first", *pace)
        assert exc.value.code == 2
        assert "FUTURE_TIMESTAMP" in capsys.readouterr().err
