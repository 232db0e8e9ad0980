"""The generations test: each generation retrains only on the previous one's loop logs, with and without exploration."""

from __future__ import annotations

import json
import math
from pathlib import Path

import orjson
import pytest

from models.lab.generations import Row, main, markdown
from streams.schemas import decision_id


def test_the_table_shows_a_failed_training_as_a_row() -> None:
    ok = Row(0.05, 0, "randomised history", "v1", 100, {"residual_sd": 0.1}, {},
             loop={"efficiency": 0.4, "efficiency_ci": [0.3, 0.5], "lift_profit": [0.01, 0.05, 0.09],
                   "price_ratio": 0.97, "explored": 1.0})
    bad = Row(0.0, 1, "gen 0 loop, width 0", failure="the time holdout leaves 0 exposures")
    confounded = Row(0.0, 1, "gen 0 loop, width 0", "v2", 50, {"residual_sd": 0.001}, {"residual_sd": 0.0})
    table = markdown([ok, bad, confounded]).splitlines()
    assert len(table) == 5 and all(line.count("|") == table[0].count("|") for line in table)
    assert "0.400 [0.300, 0.500]" in table[2] and "+5.0% [+1.0%, +9.0%]" in table[2]
    assert "training failed: the time holdout leaves 0 exposures" in table[3]
    assert "confounded" in table[4]


@pytest.mark.parametrize("argv", [["--widths", "a"], ["--widths", "0.9"], ["--generations", "0"],
                                  ["--small", "--loop-days", "0.2"]])
def test_bad_arguments_are_refused_before_any_work(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out", "/nonexistent/x"])
    assert e.value.code == 2 and "error:" in capsys.readouterr().err


@pytest.mark.slow
def test_two_generations_with_and_without_exploration(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    assert main(["--small", "--generations", "2", "--widths", "0,0.05", "--epochs", "5", "--price-members", "1",
                 "--out", str(out)]) == 0
    result = json.loads((out / "generations.json").read_text())
    rows = {(r["width"], r["generation"]): r for r in result["rows"]}
    assert set(rows) == {(0.0, 0), (0.0, 1), (0.05, 0), (0.05, 1)}
    assert (out / "generations.md").read_text().count("\n") == 2 + len(rows)
    for (w, k), r in rows.items():
        if r["failure"]:  # a generation that could not be trained is reported, not crashed on
            assert k > 0 and not r["loop"]
            continue
        loop = r["loop"]
        assert math.isfinite(loop["efficiency"]) and loop["views"] > 0
        # the generation's own bundle priced every view of its loop: no timeout, no invalid model output
        assert loop["model_versions"] == [r["bundle"]] and loop["price_timeouts"] == 0 and loop["model_invalid"] == 0
        run = out / f"w{w:g}" / f"gen{k}" / "loop"
        decided = {orjson.loads(line)["decision_id"] for line in (run / "prices.jsonl").read_bytes().splitlines()}
        views = [orjson.loads(line) for line in (run / "events.jsonl").read_bytes().splitlines()]
        views = [v for v in views if v["type"] == "view"]
        assert views and all(decision_id(v["event_id"], v["item_id"]) in decided for v in views)
        assert (loop["explored"] > 0.5) if w > 0 else loop["explored"] == 0
    # generation 1 learnt from generation 0's loop only: its rows are the loop's views, priced by the worker
    g1 = {w: rows[(w, 1)] for w in (0.0, 0.05)}
    summaries = {w: json.loads((out / f"w{w:g}" / "gen1" / "train" / "training_summary.json").read_text())
                 for w in g1 if not g1[w]["failure"]}
    for s in summaries.values():
        assert s["knobs"]["decisions"]["matched"] > 0 and s["knobs"]["rows_from"] > 0
        # decision logs: the slope keeps the towers' level, uncalibrated (models.train.DECISION_LOG_CONFIG)
        assert s["data"]["from_decisions"] and not s["price_model_config"]["calibrate_slope"]
        # and every priced row reads its user's features at the first priced view (the arm did not set them)
        assert s["data"]["features_frozen_users"] > 0
        # the offline check judges the bundle on the features the worker serves, the frozen ones beside it
        served, trained = s["metrics"]["policy"], s["metrics"]["policy_as_trained"]
        assert (served["user_features"], trained["user_features"]) == ("served", "frozen")
        assert served["n_exposures"] == trained["n_exposures"] and served["learned"] != trained["learned"]
    g0 = json.loads((out / "gen0" / "train" / "training_summary.json").read_text())
    assert not g0["data"]["from_decisions"] and g0["price_model_config"]["calibrate_slope"]  # history: as before
    assert g0["data"]["features_frozen_users"] == 0
    assert g0["metrics"]["policy"]["user_features"] == "served" and "policy_as_trained" not in g0["metrics"]
    import keras

    for w in summaries:
        weights = keras.saving.load_model(out / f"w{w:g}" / "gen1" / "train" / "price_model.keras").get_layer(
            "b_calib").get_weights()
        assert [x.ravel().tolist() for x in weights] == [[1.0], [0.0]]
    explored, plain = g1[0.05]["variation_treatment"], g1[0.0]["variation_treatment"]
    assert explored["residual_sd"] > 0 and explored["residual_sd"] > plain["residual_sd"]
