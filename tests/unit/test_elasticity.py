"""Empirical-Bayes slopes by category and item (models.elasticity): recovered where the data says
so, shrunk to the global slope where it does not."""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from models.elasticity import group_log_slopes, item_log_slopes, shrink


def _rows(n: int, item_cat: np.ndarray, log_mult: np.ndarray, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Exposures at random prices (+-20 %) of items whose slope is 4 x exp(log_mult[item])."""
    rng = np.random.default_rng(seed)
    iid = rng.integers(0, len(item_cat), n)
    d = rng.uniform(-0.2, 0.2, n)
    eta = rng.normal(-2.0, 0.5, n)
    y = (rng.random(n) < expit(eta + 4.0 * np.exp(log_mult[iid]) * d)).astype(float)
    return eta, d, y, iid


def test_category_slopes_are_recovered_and_items_shrunk_toward_them() -> None:
    item_cat = np.repeat(np.arange(5), 20)                      # 5 categories x 20 items
    cat_mult = np.array([-0.6, -0.3, 0.0, 0.3, 0.6])
    eta, d, y, iid = _rows(400_000, item_cat, cat_mult[item_cat])
    table, info = item_log_slopes(eta, 4.0, d, y, iid, item_cat, 100)
    per_cat = np.array([table[item_cat == c].mean() for c in range(5)])
    assert np.corrcoef(per_cat, cat_mult)[0, 1] > 0.97
    assert np.all(np.abs(per_cat - cat_mult) < 0.15)
    assert info["tau_category"] > 0.3
    # items within a category do not differ here, so their own part is shrunk close to nothing
    within = np.array([table[item_cat == c].std() for c in range(5)])
    assert within.max() < 0.1


def test_a_market_whose_items_do_not_differ_gets_the_global_slope() -> None:
    item_cat = np.repeat(np.arange(8), 10)
    eta, d, y, iid = _rows(200_000, item_cat, np.zeros(80), seed=1)
    table, info = item_log_slopes(eta, 4.0, d, y, iid, item_cat, 80)
    assert np.abs(table).max() < 0.1 and info["tau_item"] < 0.1


def test_an_item_without_rows_gets_its_category_and_an_unknown_category_the_global_slope() -> None:
    item_cat = np.array([0] * 10 + [1] * 10 + [0, -1])          # item 20: no rows; item 21: no category
    mult = np.where(item_cat == 1, 0.7, -0.5)
    eta, d, y, iid = _rows(300_000, item_cat[:20], mult[:20], seed=2)
    table, _ = item_log_slopes(eta, 4.0, d, y, iid, item_cat, 22)
    assert abs(table[20] - table[:10].mean()) < 0.1             # the category's level
    assert table[21] == 0.0


def test_shrinkage_follows_each_groups_noise() -> None:
    delta = np.array([0.5, 0.5, -0.5, -0.5, 0.0])
    var = np.array([0.01, 0.2, 0.01, 0.2, np.inf])             # the same estimate, known well or poorly
    out, tau2 = shrink(delta, var)
    assert tau2 > 0
    assert abs(out[0]) > abs(out[1]) and abs(out[2]) > abs(out[3]) and out[4] == 0.0


def test_group_without_price_variation_has_infinite_variance() -> None:
    g = np.array([0, 0, 1, 1])
    delta, var = group_log_slopes(np.zeros(4), np.full(4, 4.0), np.array([0.1, -0.1, 0.0, 0.0]),
                                  np.array([1.0, 0.0, 1.0, 0.0]), g, 2)
    assert np.isfinite(var[0]) and np.isinf(var[1]) and delta[1] == 0.0
