"""The information ceiling: n/a where users are alike, clearly positive where behaviour shows the
sensitivity, the oracle-shrunk yardstick exact at lambda = 1, and the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.lab import ceiling
from models.lab.robustness import SuiteSize
from models.lab.simulator import Market, MarketConfig
from streams.version import __version__


@pytest.fixture(scope="module")
def alike() -> dict[str, Any]:
    # the suite's 'alike' row in small: no user heterogeneity, sensitivity by category and item only
    market = Market(MarketConfig.small(heterogeneity=0.0, beta_cat_sd=0.4, beta_item_sd=0.25))
    return ceiling.ceiling_row(market, 0.25, n_boot=100)


@pytest.fixture(scope="module")
def strong() -> dict[str, Any]:
    # heterogeneous users whose picks show their sensitivity without noise
    market = Market(MarketConfig.small(heterogeneity=1.5, noise=0.0, reveal=2.0, days=2.0))
    return ceiling.ceiling_row(market, 0.5, n_boot=200)


def test_alike_users_leave_nothing_to_capture_and_say_so(alike: dict[str, Any]) -> None:
    # the oracle is the uniform price up to the uniform search's grid (0.2 % of base)
    assert alike["target_sd"]["holdout"] < 2e-3
    assert abs(alike["oracle_edge_over_uniform"]) < 1e-4
    for v in (alike["ceiling"]["value"], *alike["ceiling"]["ci"], alike["r2"], alike["oracle_shrunk"]["value"],
              alike["oracle_shrunk"]["lambda"], alike["oracle_shrunk_at_slope"]["value"]):
        assert math.isnan(v)
    text = ceiling.table([{**alike, "market": "alike"}], {})
    assert "| alike |" in text and "n/a" in text and "No row had an efficiency defined." in text
    assert math.isnan(ceiling._eff(1.0, 1.0, 1.0)) and ceiling._eff(1.5, 1.0, 2.0) == pytest.approx(0.5)


def test_a_strong_signal_gives_a_clearly_positive_ceiling(strong: dict[str, Any]) -> None:
    assert strong["oracle_edge_over_uniform"] > 0.03
    assert strong["ceiling"]["ci"][0] > 0.3 and strong["ceiling"]["value"] < 1.0
    assert strong["r2"] > 0.3 and 0.0 < strong["r2_within_item"] <= strong["r2"] + 0.1
    # the oracle's own deviation, unshrunk, is the oracle: efficiency exactly 1, and no factor does better
    assert strong["oracle_shrunk"]["lambda"] == 1.0
    assert strong["oracle_shrunk"]["value"] == pytest.approx(1.0, abs=1e-9)
    assert 0.0 < strong["oracle_shrunk"]["at_half"] < 1.0
    assert 0.0 < strong["oracle_shrunk_at_slope"]["lambda"] <= 1.0


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("--help", "--version"):
        with pytest.raises(SystemExit) as e:
            ceiling.main([flag])
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: pricing-ceiling" in out and "--markets" in out
    assert f"pricing-ceiling {__version__}" in out
    with pytest.raises(SystemExit) as e:
        ceiling.main(["--markets", "nope"])
    assert e.value.code == 2


def test_main_writes_the_table_for_both_generators(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(ceiling, "QUICK", SuiteSize(n_users=300, n_items=60, history_days=2.0, holdout_days=0.5))
    assert ceiling.main(["--markets", "het-2,shop-alike", "--out", str(tmp_path), "--n-boot", "50"]) == 0
    out = capsys.readouterr()
    assert "[ceiling] 2/2 shop-alike" in out.err
    md, rows = (tmp_path / "ceiling.md").read_text(), json.loads((tmp_path / "ceiling.json").read_text())["rows"]
    assert [r["market"] for r in rows] == ["het-2", "shop-alike"] and "Second generator" in md
    assert np.isfinite(rows[0]["ceiling"]["value"]) and math.isnan(rows[1]["ceiling"]["value"])


def test_within_item_r2_ignores_what_the_item_explains() -> None:
    item = np.repeat(np.arange(4), 50)
    personal = np.random.default_rng(0).normal(size=200)
    target = 3.0 * item + personal
    assert ceiling.within_item_r2(target, personal - 7.0 * item, item) == pytest.approx(1.0)
    assert ceiling.within_item_r2(target, 3.0 * item, item) == pytest.approx(0.0)
    assert math.isnan(ceiling.within_item_r2(3.0 * item, personal, item))
