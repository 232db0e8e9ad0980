"""The robustness suite's judge: efficiency and no-harm against the truth, on exposure logs whose
answer is known (prices at the oracle, at the best per-item price, at base)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest

from models.lab.robustness import GRID, QUICK, _cli, judge, market_config
from models.lab.simulator import Market, MarketConfig, add_market_args
from models.lab.simulator import market_config as from_args

MARKET = Market(MarketConfig.small(n_users=200, n_items=40, beta_cat_sd=0.3))


def _log(tmp: Path, price: np.ndarray, u: np.ndarray, i: np.ndarray) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    with (tmp / "exposures.jsonl").open("wb") as f:
        for k in range(len(u)):
            f.write(orjson.dumps({"user_id": MARKET.user_ids[u[k]], "item_id": MARKET.item_ids[i[k]],
                                  "user_index": int(u[k]), "item_index": int(i[k]), "arm": "treatment",
                                  "price": float(price[k]), "base_price": float(MARKET.base[i[k]]),
                                  "unit_cost": float(MARKET.cost[i[k]]), "ts": float(k), "purchase_ts": None,
                                  "expected_conversion": None}) + b"\n")
    (tmp / "meta.json").write_text(json.dumps({"dead_letters": 0}))
    return tmp


@pytest.fixture(scope="module")
def population() -> tuple[np.ndarray, np.ndarray]:
    return MARKET.population(3000, seed=4)


def test_oracle_prices_score_one_and_do_no_harm(tmp_path: Path, population: tuple[np.ndarray, np.ndarray]) -> None:
    u, i = population
    row = judge(_log(tmp_path, MARKET.oracle_price(u, i), u, i), MARKET, reps=200)
    assert row["efficiency_vs_per_item"]["value"] == pytest.approx(1.0)
    assert row["efficiency_vs_multiplier"]["value"] == pytest.approx(1.0)
    assert row["vs_per_item"]["value"] > 0 and row["no_harm"]


def test_per_item_prices_score_zero_and_base_prices_can_harm(tmp_path: Path,
                                                            population: tuple[np.ndarray, np.ndarray]) -> None:
    u, i = population
    row = judge(_log(tmp_path / "a", MARKET.uniform_prices((u, i))[i], u, i), MARKET, reps=200)
    assert row["efficiency_vs_per_item"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert row["vs_per_item"]["value"] == pytest.approx(0.0, abs=1e-12) and row["no_harm"]
    # base prices: below the best per-item price wherever that is not base, beyond the interval
    row = judge(_log(tmp_path / "b", MARKET.base[i], u, i), MARKET, reps=200)
    assert row["vs_per_item"]["ci"][1] < 0 and not row["no_harm"]
    assert row["vs_base"]["value"] == pytest.approx(0.0, abs=1e-12)


def test_each_grid_market_is_rebuilt_by_the_training_command_line() -> None:
    import argparse

    for name, _, knobs in GRID:
        cfg = market_config(knobs, QUICK)
        p = argparse.ArgumentParser()
        add_market_args(p)
        assert from_args(p.parse_args(_cli(cfg))) == cfg, name
