"""pricing-train reads a shop's export in the public CSV layout: bad rows are counted by reason, never fatal."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from pathlib import Path

import pytest

from models.events_csv import is_public_csv, read_public_csv
from streams.public_csv import derive_catalog

HEADER = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "replay_public_sample.csv"

GOOD = ["2019-10-01 00:00:00 UTC,view,p1,1,shoes,b,10.00,u1,s1",
        "2019-10-01 00:00:05 UTC,cart,p1,1,shoes,b,10.00,u1,s1",
        "2019-10-01 00:00:09 UTC,purchase,p1,1,shoes,b,10.00,u1,s1",
        "2019-10-01 00:01:00 UTC,view,p2,2,,b,30.00,u2,s2"]
BAD = {"price: negative or not a number (BAD_PRICE)": ["2019-10-01 00:02:00 UTC,view,p1,1,shoes,b,-3,u1,s1"],
       "price: unreadable (WRONG_TYPE)": ["2019-10-01 00:02:00 UTC,view,p1,1,shoes,b,abc,u1,s1"],
       "event_type: unknown (UNKNOWN_EVENT_TYPE)": ["2019-10-01 00:02:00 UTC,wishlist,p1,1,shoes,b,10,u1,s1"],
       "user_id: empty (MISSING_FIELD)": ["2019-10-01 00:02:00 UTC,view,p1,1,shoes,b,10,,s1",
                                          "2019-10-01 00:02:01 UTC,view,p2,1,shoes,b,10,,s1"],
       "event_time: unreadable (WRONG_TYPE)": ["01/10/2019 00:02,view,p1,1,shoes,b,10,u1,s1"],
       "empty line": [""],
       "price: zero": ["2019-10-01 00:02:00 UTC,view,p1,1,shoes,b,0,u1,s1"],
       "broken line (not UTF-8, or the wrong number of columns)": ["2019-10-01 00:02:00 UTC,view,p1"],
       "event_type: remove_from_cart (no such event in our schema)":
           ["2019-10-01 00:02:00 UTC,remove_from_cart,p1,1,shoes,b,10,u1,s1"]}


def write(path: Path, lines: list[str]) -> Path:
    text = "\n".join([HEADER, *lines]) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["export.csv", "export.csv.gz"])
def test_every_unusable_line_is_counted_under_its_reason(tmp_path: Path, name: str) -> None:
    bad = [line for lines in BAD.values() for line in lines]
    events, report = read_public_csv(write(tmp_path / name, GOOD[:2] + bad + GOOD[2:]))
    assert [(e.type, e.item_id, e.price) for e in events] == [
        ("view", "p1", 10.0), ("add_to_cart", "p1", 10.0), ("purchase", "p1", 10.0), ("view", "p2", 30.0)]
    assert dict(report.unusable) == {reason: len(lines) for reason, lines in BAD.items()}
    assert report.lines == len(GOOD) + len(bad) and report.used == len(GOOD)
    assert report.examples["user_id: empty (MISSING_FIELD)"][0] == "line 7: 2019-10-01 00:02:00 UTC,view,p1,1,shoes,b,10,,s1"  # header is line 1
    text = report.text()
    assert f"{len(bad)} left out" in text and "wishlist" in text  # the examples show the raw row
    json.dumps(report.as_dict())


def test_event_ids_are_stable_and_unique_per_line(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", GOOD)
    first, _ = read_public_csv(path)
    again, _ = read_public_csv(path)
    assert [e.event_id for e in first] == [e.event_id for e in again]
    assert len({e.event_id for e in first}) == len(first)


def test_detected_by_suffix_or_by_header(tmp_path: Path) -> None:
    assert is_public_csv(tmp_path / "x.csv.gz")   # suffix alone, even before the file exists
    assert is_public_csv(write(tmp_path / "export.txt", GOOD))
    (tmp_path / "ev.jsonl").write_text('{"event_id": "e1"}\n')
    assert not is_public_csv(tmp_path / "ev.jsonl") and not is_public_csv(tmp_path / "missing.jsonl")


def test_a_file_that_is_not_the_layout_is_refused_with_the_missing_columns(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("time,type,item\n1,view,p1\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_public_csv(tmp_path / "x.csv")


def test_the_replay_sample_reads_as_replay_counts_it() -> None:
    events, report = read_public_csv(SAMPLE)
    # test_replay: 30 records, 2 remove_from_cart skipped, 7 invalid; training also leaves out price 0 rows
    assert report.lines == 30 and report.used == len(events)
    assert report.unusable["event_type: remove_from_cart (no such event in our schema)"] == 2
    kept_out = ("price: zero", "event_type: remove_from_cart (no such event in our schema)")
    assert sum(n for r, n in report.unusable.items() if r not in kept_out) == 7
    assert {e.item_id for e in events if e.price > 0} <= {i.item_id for i in derive_catalog(SAMPLE)}


def test_train_cli_reports_a_file_it_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from models.train import main

    (tmp_path / "x.csv").write_text("time,type\n")
    assert main(["--events", str(tmp_path / "x.csv"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "missing columns" in err and "Traceback" not in err
    write(tmp_path / "bad.csv", BAD["empty line"] + BAD["price: zero"])
    assert main(["--events", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no usable rows" in err and "price: zero" in err


@pytest.mark.slow
def test_train_on_a_csv_export_with_bad_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from models.lab.simulator import Market, MarketConfig
    from models.train import main

    m = Market(MarketConfig.small(n_users=150, seed=4))
    log = m.simulate()
    csv_type = {"view": "view", "add_to_cart": "cart", "purchase": "purchase"}
    cat = dict(zip(m.item_ids, (m.categories[c] for c in m.item_cat), strict=True))
    lines = [f"{dt.datetime.fromtimestamp(e.ts, dt.UTC):%Y-%m-%d %H:%M:%S} UTC,{csv_type[e.type]},{e.item_id},"
             f"7,{cat[e.item_id]},brand,{e.price:.2f},{e.user_id},{e.session_id}"
             for e in log.events() if e.type in csv_type]
    bad = [line for lines in BAD.values() for line in lines]
    for k, line in enumerate(bad):  # spread through the file
        lines.insert(1 + k * (len(lines) // len(bad)), line)
    write(tmp_path / "shop.csv.gz", lines)
    out = tmp_path / "model"
    rc = main(["--events", str(tmp_path / "shop.csv.gz"), "--out", str(out), "--holdout-days", "0.25",
               "--epochs", "2", "--price-members", "1", "--rec-epochs", "2", "--no-plots", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0, err
    summary = json.loads((out / "training_summary.json").read_text())
    csv = summary["knobs"]["csv"]
    assert csv["unusable"] == {reason: len(v) for reason, v in BAD.items()}
    assert csv["used"] == len(lines) - len(bad) and summary["data"]["events"] == csv["used"]
    assert "user_id: empty (MISSING_FIELD)" in err
    # a bundle-ready training run: what `pricing-export` converts, and the derived catalog beside it
    for name in ("user_model.joblib", "price_model.keras", "item_table.json", "holdout_sample.npz"):
        assert (out / name).is_file(), name
    assert summary["knobs"]["catalog"]["items"] == len((out / "catalog.jsonl").read_text().splitlines()) > 0
    assert summary["data"]["exposure_rows"]["holdout"] > 0
