"""The uniform arm's prices: the per-item optimum under the model, shrunk where data is thin."""

from __future__ import annotations

import numpy as np
import pytest

from models.uniform import catalog_uniform, uniform_ratios
from streams.catalog import Catalog
from streams.pricing import Guardrails, optimal_price
from streams.schemas import CatalogItem


def _logit_optimum(a: float, b: float, cost_ratio: float) -> float:
    return float(optimal_price(a, b, 1.0, cost_ratio))


def test_one_population_recovers_the_exact_logit_optimum() -> None:
    """All exposures alike: the best uniform price is the logit optimum, to the grid step (0.25 %)."""
    n = 500
    for a, b, c in ((2.0, 4.0, 0.5), (0.5, 3.0, 0.3), (3.0, 6.0, 0.6)):
        r = uniform_ratios(np.zeros(n, int), np.full(n, a), np.full(n, b), np.array([10.0]), np.array([10.0 * c]),
                           np.array([0.0]), np.array([1e9]), np.array([0]))
        want = np.clip(_logit_optimum(a, b, c), max(0.8, c * 1.05), 1.2)
        assert r[0] == pytest.approx(want, abs=0.0013)


def test_mixed_population_maximises_the_summed_profit() -> None:
    """Two kinds of users of one item: the ratio maximises the sum, checked on a fine grid."""
    rng = np.random.default_rng(1)
    a = np.r_[np.full(300, 1.0), np.full(100, 4.0)] + rng.normal(0, 0.1, 400)
    b = np.r_[np.full(300, 6.0), np.full(100, 3.0)]
    r = uniform_ratios(np.zeros(400, int), a, b, np.array([20.0]), np.array([8.0]), np.array([0.0]),
                       np.array([1e9]), np.array([0]))[0]
    grid = np.linspace(0.8, 1.2, 4001)
    prof = ((grid[None, :] - 0.4) / (1 + np.exp(-(a[:, None] - b[:, None] * grid[None, :])))).sum(axis=0)
    best = grid[np.argmax(prof)]
    assert abs(r - best) <= 0.0025 + 1e-9


def test_thin_items_shrink_to_their_category_and_unseen_items_take_it() -> None:
    """Item 0 (category A) has 5000 exposures wanting a low price, item 1 (A) has 3 wanting a high one,
    item 2 (A) none, item 3 (category B) 5000 wanting a high price: 2 takes its category's ratio, 1 is
    pulled from its own toward it as the prior grows."""
    low, high = (3.0, 8.0), (-1.0, 1.0)  # (a, b): optimum 0.64 vs 1.58, clipped to the band edges 0.8, 1.2
    rows = [(0, *low)] * 5000 + [(1, *high)] * 3 + [(3, *high)] * 5000
    item, a, b = (np.array(c) for c in zip(*rows, strict=True))
    base, cost, cats = np.full(4, 10.0), np.full(4, 5.0), np.array(["A", "A", "A", "B"])

    def ratios(k: float) -> np.ndarray:
        return uniform_ratios(item, a, b, base, cost, np.zeros(4), np.full(4, 1e9), cats, prior_exposures=k)

    r = ratios(200.0)
    assert r[0] == pytest.approx(0.8) and r[3] == pytest.approx(1.2)
    assert r[2] == pytest.approx(r[0])  # never seen: the category's best ratio
    assert ratios(0.0)[1] == pytest.approx(1.2)  # no shrinkage: its three exposures decide alone
    assert ratios(3000.0)[1] == pytest.approx(r[0])  # a strong prior: the category's
    assert 0.8 <= r[1] <= 1.2


def test_ratios_stay_inside_each_items_band() -> None:
    rng = np.random.default_rng(3)
    n_items, n = 30, 3000
    base = rng.uniform(5, 50, n_items)
    cost = base * rng.uniform(0.1, 1.0, n_items)
    lo, hi = base * rng.uniform(0.7, 1.0, n_items), base * rng.uniform(1.0, 1.3, n_items)
    g = Guardrails(max_deviation=0.15, margin_floor=0.1)
    r = uniform_ratios(rng.integers(0, n_items, n), rng.normal(0, 3, n), rng.uniform(0.5, 8, n), base, cost, lo, hi,
                       rng.integers(0, 4, n_items), guardrails=g)
    p = r * base
    band_lo = np.maximum(np.maximum(lo, base * 0.85), cost * 1.1)
    band_lo = np.where(band_lo <= np.minimum(hi, base * 1.15), band_lo, np.maximum(lo, base * 0.85))
    assert np.all(p >= band_lo - 1e-9) and np.all(p <= np.minimum(hi, base * 1.15) + 1e-9)


def test_catalog_uniform_names_every_catalog_item() -> None:
    cat = Catalog.of([CatalogItem(f"i{k}", "c" if k < 2 else "d", 10.0, 4.0, 1.0, 100.0) for k in range(3)])
    got = catalog_uniform(cat, ["i0", "gone"], np.array([0, 0, 1]), np.array([0.0, 0.0, 5.0]),
                          np.array([6.0, 6.0, 1.0]))
    assert set(got) == {"i0", "i1", "i2"} and all(0.8 - 1e-9 <= v <= 1.2 + 1e-9 for v in got.values())
