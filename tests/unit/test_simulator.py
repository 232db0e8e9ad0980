"""Market simulator: reproducible, demand monotone, the oracle really is optimal."""

from __future__ import annotations

import numpy as np
import pytest

from models.dataset import EventLog
from models.lab.simulator import Market, MarketConfig
from streams.pricing import optimal_price
from streams.schemas import EVENT_TYPES, dumps, parse_click

CFG = MarketConfig.small(n_users=120, n_items=30)


@pytest.fixture(scope="module")
def market() -> Market:
    return Market(CFG)


@pytest.fixture(scope="module")
def log(market: Market) -> EventLog:
    return market.simulate()


def test_same_seed_same_events(log: EventLog) -> None:
    again = Market(CFG).simulate()
    for col in ("ts", "user", "session", "etype", "item", "price"):
        np.testing.assert_array_equal(getattr(log, col), getattr(again, col))
    other = Market(MarketConfig.small(n_users=120, n_items=30, seed=1)).simulate()
    assert len(other) != len(log) or not np.array_equal(other.price, log.price)


def test_events_are_wire_valid_and_in_event_time_order(log: EventLog) -> None:
    assert np.all(np.diff(log.ts) >= 0)
    assert set(np.unique(log.etype)) == set(range(len(EVENT_TYPES)))
    for ev in list(log.events())[:300]:
        assert parse_click(dumps(ev), now=float("inf")) == ev


def test_history_prices_are_randomized_inside_the_guardrails(market: Market, log: EventLog) -> None:
    ratio = log.price / market.base[log.item]
    assert ratio.min() >= 1 - CFG.band - 0.01 and ratio.max() <= 1 + CFG.band + 0.01
    assert np.all(log.price >= market.min_price[log.item]) and np.all(log.price <= market.max_price[log.item])
    assert ratio.std() > 0.08  # spread over the band, so elasticity is identifiable


def test_every_purchase_follows_a_view_of_that_item_in_its_session(log: EventLog) -> None:
    views = {(s, i) for s, i, e in zip(log.session, log.item, log.etype, strict=False) if e == 0}
    buys = [(s, i) for s, i, e in zip(log.session, log.item, log.etype, strict=False) if e == 3]
    assert buys and all(b in views for b in buys)


def test_true_demand_falls_in_price(market: Market) -> None:
    rng = np.random.default_rng(0)
    u, i = rng.integers(0, CFG.n_users, 500), rng.integers(0, CFG.n_items, 500)
    grid = np.linspace(0.5, 1.5, 21)[:, None] * market.base[i]
    p = market.buy_prob(u, i, grid)
    assert np.all(np.diff(p, axis=0) < 0)
    buys = market.sample_buy(u, i, market.base[i], np.random.default_rng(1))
    assert buys.dtype == bool and buys.shape == (500,)


def test_oracle_beats_every_uniform_price(market: Market) -> None:
    pop = market.population(3000)
    oracle = market.expected_profit(market.oracle_price, pop)
    best = market.uniform_prices(pop)
    assert oracle >= market.expected_profit(lambda u, i: best[i], pop)
    lo, hi = market.price_band(np.arange(CFG.n_items))
    for q in np.linspace(0, 1, 11):
        uniform = lo + q * (hi - lo)
        assert oracle >= market.expected_profit(lambda u, i, x=uniform: x[i], pop)
    # and no small move off the oracle price (inside the band) does better, pair by pair
    u, i = pop
    p = market.oracle_price(u, i)
    prof = (p - market.cost[i]) * market.buy_prob(u, i, p)
    for f in (0.99, 1.01):
        q = np.clip(p * f, *market.price_band(i))
        assert np.all(prof >= (q - market.cost[i]) * market.buy_prob(u, i, q) - 1e-9)


def test_oracle_agrees_with_the_pricing_code(market: Market) -> None:
    u, i = market.population(500)
    ours = market.oracle_price(u, i)
    theirs = np.clip(optimal_price(market.alpha(u, i), market.beta[u], market.base[i], market.cost[i]),
                     *market.price_band(i))
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)


def test_no_heterogeneity_means_all_users_alike() -> None:
    m = Market(MarketConfig.small(n_users=50, heterogeneity=0.0))
    assert np.ptp(m.beta) == 0 and np.ptp(m.mu) == 0 and np.ptp(m.taste) == 0


def test_truth_file_rebuilds_the_market(market: Market, tmp_path) -> None:
    np.savez(tmp_path / "truth.npz", **market.truth())
    again = Market.from_truth(tmp_path / "truth.npz")
    np.testing.assert_array_equal(again.beta, market.beta)
    assert again.cfg == market.cfg
