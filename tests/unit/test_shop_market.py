"""The second market generator's truth: P(buy) = intent x P(WTP >= price), checked against draws;
its oracle and per-item prices; its history; and its rows in the robustness suite."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy.special import ndtr

from models.dataset import read_catalog, read_events
from models.lab.robustness import GRID, QUICK, SHOP_GRID, SuiteSize, run_market, shop_config, table, write_history
from models.lab.shop_market import SEGMENTS, ShopConfig, ShopMarket

SHOP = ShopMarket(ShopConfig.small(seed=2))
ALIKE = ShopMarket(ShopConfig.small(seed=2, segments="alike"))


def test_buy_prob_is_intent_times_the_wtp_survival_of_the_draws() -> None:
    """The closed form against a Monte Carlo of the generator's own funnel draws (intent, then WTP)."""
    u, i = np.array([0, 5, 17, 40]), np.array([3, 8, 21, 55])
    price = SHOP.base[i] * np.array([0.85, 1.0, 1.1, 1.2])
    rng = np.random.default_rng(0)
    n = 200_000
    f = SHOP.funnel(np.repeat(u, n).reshape(4, n), np.repeat(i, n).reshape(4, n), np.repeat(price, n).reshape(4, n),
                    rng)
    mc = f["buy"].mean(axis=1)
    p = SHOP.buy_prob(u, i, price)
    assert np.allclose(f["p_buy"][:, 0], p)
    assert np.all(np.abs(mc - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-4), (mc, p)
    m, s = SHOP.wtp_params(u, i)
    assert np.allclose(p, SHOP.intent(u, i) * ndtr((m - np.log(price)) / s))
    assert np.all(p < SHOP.intent(u, i))  # a ceiling below 1: intent, whatever the price


def test_buy_prob_falls_with_price_and_its_shape_differs_by_segment() -> None:
    u, i = SHOP.population(500, seed=3)
    grid = np.linspace(0.5, 2.0, 61)
    p = SHOP.buy_prob(u[:, None], i[:, None], grid[None, :] * SHOP.base[i][:, None])
    assert np.all(np.diff(p, axis=1) <= 0)
    # the elasticity at base differs by segment through the WTP spread, not only through a level
    m, s = SHOP.wtp_params(u, i)
    spread = {k: float(np.median(s[SHOP.segment[u] == k])) for k in range(len(SEGMENTS))}
    assert spread[0] < spread[3] < spread[2] < spread[1]  # deal hunters sharpest, loyal buyers flattest


def test_oracle_beats_the_per_item_price_on_segments_and_equals_it_when_users_are_alike() -> None:
    for market, distinct in ((SHOP, True), (ALIKE, False)):
        u, i = market.population(4000, seed=5)
        orc, per_item = market.oracle_price(u, i), market.uniform_prices((u, i))[i]
        pi = {k: float(np.mean((p - market.cost[i]) * market.buy_prob(u, i, p))) for k, p in
              (("oracle", orc), ("per_item", per_item), ("base", market.base[i]))}
        lo, hi = market.price_band(i)
        assert np.all((orc >= lo - 1e-9) & (orc <= hi + 1e-9))
        assert pi["oracle"] >= pi["per_item"] >= pi["base"] * (1 - 1e-12)
        if distinct:
            assert pi["oracle"] > 1.05 * pi["per_item"]
        else:  # intent scales profit and does not move its optimum: one price per item is the oracle
            step = (hi - lo) / 200
            assert np.all(np.abs(orc - per_item) <= step + 1e-9)
            assert pi["oracle"] == pytest.approx(pi["per_item"], rel=1e-4)


def test_consumer_surplus_is_the_integral_of_demand_above_the_price() -> None:
    u, i = np.array([1, 2]), np.array([4, 9])
    p = SHOP.base[i]
    x = p[:, None] * np.linspace(1.0, 30.0, 300_001)[None, :]
    numeric = np.trapezoid(SHOP.buy_prob(u[:, None], i[:, None], x), x, axis=1)
    assert np.allclose(SHOP.consumer_surplus(u, i, p), numeric, rtol=1e-3)


def test_history_has_every_event_type_is_deterministic_and_shows_the_segments() -> None:
    a, b = SHOP.simulate(), ShopMarket(ShopConfig.small(seed=2)).simulate()
    assert set(a.type_names()) == {"view", "click", "add_to_cart", "purchase", "review"}
    for col in ("ts", "user", "session", "etype", "item", "price"):
        assert np.array_equal(getattr(a, col), getattr(b, col)), col
    assert not np.array_equal(ShopMarket(ShopConfig.small(seed=3)).simulate().ts[:50], a.ts[:50])
    # shown prices are the randomised experiment, within each item's bounds
    assert np.all((a.price >= SHOP.min_price[a.item] - 1e-9) & (a.price <= SHOP.max_price[a.item] + 1e-9))
    # deal hunters view more per session and re-view items more than loyal buyers
    seg = SHOP.segment[a.user]
    views = a.etype == 0
    per_sess = {k: np.sum(views & (seg == k)) / len(np.unique(a.session[seg == k])) for k in (0, 1)}
    assert per_sess[0] > 1.3 * per_sess[1]
    re = {}
    for k in (0, 1):
        v = views & (seg == k)
        pairs = a.session[v].astype(np.int64) * SHOP.cfg.n_items + a.item[v]
        re[k] = 1 - len(np.unique(pairs)) / len(pairs)
    assert re[0] > 2 * re[1]


def test_shop_rows_are_frozen_apart_from_the_first_grid() -> None:
    names = [g[0] for g in SHOP_GRID]
    assert len(GRID) == 15 and not set(names) & {g[0] for g in GRID}
    assert shop_config({"seed": 1}, QUICK) == replace(ShopConfig(), n_users=QUICK.n_users, n_items=QUICK.n_items,
                                                      days=QUICK.history_days, seed=1)
    ok = {"market": "shop", "efficiency_vs_per_item": {"value": 0.3, "ci": (0.1, 0.5)},
          "efficiency_vs_multiplier": {"value": 0.6, "ci": (0.4, 0.8)}, "vs_per_item": {"value": 0.01, "ci": (0, .02)},
          "vs_base": {"value": 0.1, "ci": (0.05, 0.15)}, "oracle_edge_over_per_item": 0.1, "price_ratio": 0.93,
          "no_harm": True}
    assert "Average efficiency vs per item over the 1 markets where it is defined: **0.30**" in table([ok], {})


def test_history_files_round_trip_as_a_shop_hands_them_over(tmp_path: Path) -> None:
    market = ShopMarket(ShopConfig.small(n_users=80, n_items=30, days=1.0))
    events, catalog = write_history(market, tmp_path)
    read = read_events(events)
    log = market.simulate()
    assert len(read) == len(log) and [e.type for e in read[:20]] == log.type_names()[:20]
    cat = read_catalog(catalog)
    assert cat.get(market.item_ids[7]).base_price == pytest.approx(market.base[7])


@pytest.mark.slow
def test_a_shop_row_trains_through_events_and_catalog_and_is_judged(tmp_path: Path) -> None:
    size = SuiteSize(n_users=300, n_items=60, history_days=4.0, holdout_days=1.0, warm_days=1.0, loop_days=0.5)
    row = run_market("shop-narrow", {g[0]: g[2] for g in SHOP_GRID}["shop-narrow"], size, tmp_path)
    d = tmp_path / "shop-narrow"
    summary = json.loads((d / "train" / "training_summary.json").read_text())
    assert summary["knobs"]["source"].endswith("events.jsonl.gz") and "market" not in summary["knobs"]
    assert row["generator"] == "shop" and row["n_exposures"] > 300
    assert np.isfinite(row["efficiency_vs_per_item"]["value"]) and row["oracle_edge_over_per_item"] > 0
    types = {json.loads(line)["type"] for line in (d / "loop" / "events.jsonl").read_text().splitlines()}
    assert {"view", "click", "add_to_cart", "purchase"} <= types


def test_a_loop_meta_rebuilds_the_generator_it_names() -> None:
    """pricing-sim-evaluate and the loop's --evaluate rebuild the truth from the run's meta.json."""
    from dataclasses import asdict

    from models.lab.evaluate import market_of
    from models.lab.simulator import Market, MarketConfig

    shop = market_of({"market": asdict(SHOP.cfg)})
    assert isinstance(shop, ShopMarket) and np.array_equal(shop.base, SHOP.base)
    assert np.allclose(shop.beta, 1.0 / SHOP.spread_user)
    assert isinstance(market_of({"market": asdict(MarketConfig.small())}), Market)
