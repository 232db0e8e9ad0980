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


# ---------------------------------------------------------------- markets beyond the default (issue 13)
FORMS = ("logit", "probit", "kinked", "mixture")


@pytest.mark.parametrize("demand", FORMS)
def test_every_demand_form_falls_in_price_and_keeps_conversion_at_base(demand: str) -> None:
    m = Market(MarketConfig.small(n_users=60, n_items=20, demand=demand, beta_cat_sd=0.3, beta_item_sd=0.2))
    u, i = np.repeat(np.arange(5), 4), np.tile(np.arange(4), 5)
    ratios = np.linspace(0.5, 1.5, 21)
    p = m.buy_prob(u[:, None], i[:, None], ratios[None, :] * m.base[i][:, None])
    assert np.all(np.diff(p, axis=1) < 0)
    at_base = m.buy_prob(u, i, m.base[i])
    # the same conversion at base as the logit
    want = Market(MarketConfig.small(n_users=60, n_items=20, beta_cat_sd=0.3, beta_item_sd=0.2)).buy_prob(u, i, m.base[i])
    np.testing.assert_allclose(at_base, want, rtol=1e-9)


@pytest.mark.parametrize("demand", FORMS)
def test_oracle_beats_every_price_in_the_band_for_every_form(demand: str) -> None:
    m = Market(MarketConfig.small(n_users=60, n_items=20, demand=demand, beta_user_cat_sd=0.5))
    u, i = m.population(300)
    best = m.oracle_price(u, i)
    prof = (best - m.cost[i]) * m.buy_prob(u, i, best)
    lo, hi = m.price_band(i)
    assert np.all((best >= lo - 1e-9) & (best <= hi + 1e-9))
    step = (hi - lo) / 400  # the search grid's resolution bounds how far off the best price can be
    for t in np.linspace(0, 1, 17):
        q = lo + t * (hi - lo)
        other = (q - m.cost[i]) * m.buy_prob(u, i, q)
        # a grid search can miss the top by at most its step's worth of profit
        assert np.all(prof >= other - 1e-9 - (0 if demand == "logit" else step * m.buy_prob(u, i, q)))


@pytest.mark.parametrize("demand", FORMS)
def test_consumer_surplus_is_the_integral_of_demand_above_the_price(demand: str) -> None:
    m = Market(MarketConfig.small(n_users=40, n_items=10, demand=demand))
    u, i = np.arange(6), np.arange(6)
    p = m.base[i]
    cs = m.consumer_surplus(u, i, p)
    # a brute-force integral on a fine grid far above the price
    x = p[:, None] + np.linspace(0, 60, 60_001)[None, :] * m.base[i][:, None]
    brute = np.trapezoid(m.buy_prob(u[:, None], i[:, None], x), x, axis=1)
    np.testing.assert_allclose(cs, brute, rtol=2e-3)
    assert np.all(m.consumer_surplus(u, i, 1.1 * p) < cs)


def test_category_and_item_sensitivity_make_per_item_prices_differ_when_users_are_alike() -> None:
    m = Market(MarketConfig.small(n_users=80, n_items=40, heterogeneity=0.0, beta_cat_sd=0.5, beta_item_sd=0.3))
    beta = m.sensitivity(np.zeros(40, int), np.arange(40))
    assert np.ptp(beta) > 0.5                                   # items differ in sensitivity
    assert np.ptp(m.sensitivity(np.arange(80), np.zeros(80, int))) == 0   # users do not
    u, i = m.population(2000)
    oracle = m.expected_profit(m.oracle_price, (u, i))
    uniform = m.uniform_prices((u, i))
    per_item = m.expected_profit(lambda _u, ii: uniform[ii], (u, i))
    assert per_item == pytest.approx(oracle, rel=1e-4)          # one price per item is all there is to gain


def test_cold_users_have_no_history() -> None:
    m = Market(MarketConfig.small(n_users=200, cold_share=0.3))
    assert 0.15 < m.cold.mean() < 0.45
    seen = np.unique(m.simulate().user)
    assert not np.any(m.cold[seen]) and len(seen) > 0.5 * (~m.cold).sum()


def test_signal_none_hides_sensitivity_from_picks_and_browsing_moves_it_to_clicks() -> None:
    picks = Market(MarketConfig.small(n_users=100, n_items=30))
    none = Market(MarketConfig.small(n_users=100, n_items=30, signal="none"))
    browsing = Market(MarketConfig.small(n_users=100, n_items=30, signal="browsing"))
    u, cand, ratio = np.arange(100)[:, None], np.tile(np.arange(30), (100, 1)), np.full((100, 30), 0.9)
    taste_only = none.pick_score(u, cand, ratio)
    np.testing.assert_array_equal(taste_only, browsing.pick_score(u, cand, ratio))
    assert not np.allclose(taste_only, picks.pick_score(u, cand, ratio))
    assert np.corrcoef(browsing.click_logit, browsing.beta_signal)[0, 1] > 0.3
    np.testing.assert_array_equal(picks.beta, browsing.beta)   # the traits themselves are the same


def test_new_knobs_round_trip_through_the_truth_file(tmp_path) -> None:
    m = Market(MarketConfig.small(n_users=50, demand="kinked", beta_cat_sd=0.4, cold_share=0.2, signal="browsing"))
    np.savez(tmp_path / "truth.npz", **m.truth())
    again = Market.from_truth(tmp_path / "truth.npz")
    assert again.cfg == m.cfg
    np.testing.assert_array_equal(again.sensitivity(np.arange(50), np.arange(50) % 60), m.sensitivity(np.arange(50), np.arange(50) % 60))


def test_unknown_demand_or_signal_is_refused() -> None:
    with pytest.raises(ValueError, match="demand"):
        MarketConfig(demand="cubic")
    with pytest.raises(ValueError, match="signal"):
        MarketConfig(signal="loud")
@pytest.mark.parametrize("demand", FORMS)
def test_consumer_surplus_is_the_integral_of_the_buy_probability(demand: str) -> None:
    """Against a brute-force integral of buy_prob above the price (60 base prices, 40,001 points)."""
    m = Market(MarketConfig.small(n_users=200, n_items=30, heterogeneity=1.5, demand=demand, seed=2))
    rng = np.random.default_rng(0)
    u, i = rng.integers(0, 200, 200), rng.integers(0, 30, 200)
    p = m.base[i] * rng.uniform(0.7, 1.3, 200)
    x = p[:, None] + m.base[i][:, None] * np.linspace(0.0, 60.0, 40_001)[None, :]
    want = np.trapezoid(m.buy_prob(u[:, None], i[:, None], x), x, axis=1)
    got = m.consumer_surplus(u, i, p)
    # within 1 % everywhere (the mixture's tail term p_end / slope is approximate for insensitive users,
    # ~0.7 % off for one of these 200), and 0.1 % on average
    np.testing.assert_allclose(got, want, rtol=1e-2)
    assert float(np.mean(np.abs(got / want - 1))) < 1e-3
    ladder = m.consumer_surplus(np.zeros(5, int), np.zeros(5, int), m.base[0] * np.linspace(0.8, 1.2, 5))
    assert np.all(np.diff(ladder) < 0)  # a higher price leaves less surplus
