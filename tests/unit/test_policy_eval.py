"""Offline policy evaluation: the yardstick's ends are right by construction, the learned policy is
the production decision, and personalization does no harm where users are all alike."""

from __future__ import annotations

import numpy as np
import pytest

from models.lab.policy_eval import (
    decide_prices,
    evaluate_policies,
    oracle_prices,
    profit_table,
    uniform_policy_prices,
)
from models.lab.simulator import Market, MarketConfig
from streams.features import FEATURE_NAMES
from streams.pricing import Guardrails, ItemBatch, band_batch, decide_batch

pytestmark = pytest.mark.slow  # trains or exports models: not in `make test-fast`


@pytest.fixture(scope="module")
def market() -> Market:
    return Market(MarketConfig.small(n_users=400, n_items=40))


@pytest.fixture(scope="module")
def pop(market: Market) -> tuple[np.ndarray, np.ndarray]:
    return market.population(4000, seed=3)


def _features(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((n, 32), np.float32), np.zeros((n, 3), np.float32)


def test_oracle_policy_has_efficiency_one(market: Market, pop: tuple[np.ndarray, np.ndarray]) -> None:
    u, i = pop
    # through the production decision with the true demand: the oracle up to whole-cent rounding
    truth = lambda ux, ix: (market.alpha(u, i), market.beta[u])  # noqa: E731
    rep = evaluate_policies(market, None, *_features(len(u)), u, i, ab=truth, n_boot=200)
    assert rep.oracle > rep.uniform > 0
    assert rep.efficiency == pytest.approx(1.0, abs=2e-3)
    assert rep.learned <= rep.oracle + 1e-9  # nothing beats the oracle inside the guardrails
    # and exactly 1 when the learned prices are the oracle's own
    prices = {"uniform": uniform_policy_prices(market, u, i), "oracle": oracle_prices(market, u, i)}
    exact = profit_table(market, u, i, {**prices, "learned": prices["oracle"]}, n_boot=100)
    assert exact.efficiency == pytest.approx(1.0, abs=1e-12)
    assert exact.efficiency_ci[0] == pytest.approx(1.0) and exact.efficiency_ci[1] == pytest.approx(1.0)


def test_uniform_policy_has_efficiency_zero(market: Market, pop: tuple[np.ndarray, np.ndarray]) -> None:
    u, i = pop
    prices = {"base": market.base[i], "uniform": uniform_policy_prices(market, u, i),
              "oracle": oracle_prices(market, u, i)}
    rep = profit_table(market, u, i, {**prices, "learned": prices["uniform"]}, n_boot=100)
    assert rep.efficiency == pytest.approx(0.0, abs=1e-12)
    assert rep.learned_over_uniform == pytest.approx(1.0)
    assert rep.uniform >= rep.base  # the best uniform price is at least as good as the base price
    # the base price as the "learned" policy is below the best uniform: negative efficiency
    assert profit_table(market, u, i, {**prices, "learned": prices["base"]}, n_boot=50).efficiency < 0


def test_learned_policy_is_decide_batch_inside_the_guardrails(market: Market,
                                                              pop: tuple[np.ndarray, np.ndarray]) -> None:
    u, i = pop
    rng = np.random.default_rng(0)
    n = len(u)
    a = rng.normal(0, 5, n)
    b = np.exp(rng.normal(0, 2, n))
    a[:10], b[10:20], b[20:30] = np.nan, -1.0, np.inf  # invalid outputs fall back to the base price
    g = Guardrails()
    got = decide_prices(market, i, a, b, g)
    items = ItemBatch(market.base[i], market.cost[i], market.min_price[i], market.max_price[i])
    np.testing.assert_array_equal(got, decide_batch(a, b, items, g).price)
    bd = band_batch(items, g)
    assert np.all((got >= bd.lo - 1e-9) & (got <= bd.hi + 1e-9))
    assert np.all(np.abs(got / market.base[i] - 1) <= g.max_deviation + 0.005)
    assert np.all(got >= market.cost[i] * (1 + g.margin_floor) - 0.005)
    np.testing.assert_allclose(got[:30], np.round(market.base[i[:30]], 2))
    # evaluate_policies prices the learned policy exactly so
    rep = evaluate_policies(market, None, *_features(n), u, i, ab=lambda ux, ix: (a, b), n_boot=50)
    cost = market.cost[i]
    assert rep.learned == pytest.approx(float(np.mean((got - cost) * market.buy_prob(u, i, got))))


def test_homogeneous_market_learned_policy_does_no_harm() -> None:
    from models import price_model as pm
    from models.dataset import build_rows, split_rows
    from models.lab.policy_eval import data_market_index
    from streams.catalog import Catalog

    m = Market(MarketConfig.small(n_users=1500, n_items=60, heterogeneity=0.0, days=2.0))
    log = m.simulate()
    data = build_rows(log, Catalog.of(m.catalog()))
    hold, fit, val = split_rows(data.row_ts, float(log.ts.max()) - 0.5 * 86400.0)
    cols = (data.user, data.item, data.price_ratio, data.label)
    model = pm.fit_price_model(*(c[fit] for c in cols), cfg=pm.PriceModelConfig(epochs=4),
                               validation=tuple(c[val] for c in cols), feature_names=FEATURE_NAMES)
    u, i = data_market_index(m, data)
    rep = evaluate_policies(m, model, data.user[hold], data.item[hold], u[hold], i[hold], n_boot=100)
    # all users alike: the oracle's only edge over one price per item is item-level, and the
    # learned policy must not pay for personalizing noise
    assert rep.learned_over_uniform >= 0.98, rep
