"""Off-policy estimators against a logging policy and a target whose true value is known in closed form."""

from __future__ import annotations

import numpy as np
import pytest

from models.offpolicy import Logged, epanechnikov, estimate

COST, BASE = 5.0, 10.0


def buy_prob(x: np.ndarray, p: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(x - 2.0 * p / BASE)))


def logged_world(n: int, width: float, seed: int) -> tuple[Logged, np.ndarray, np.ndarray]:
    """Users with taste x; the logging policy decides d(x) and explores log-uniformly within +-width."""
    rng = np.random.default_rng(seed)
    x = rng.normal(1.0, 0.5, n)
    decided = BASE * (1.0 + 0.1 * np.tanh(x - 1.0))
    price = decided * np.exp(rng.uniform(-width, width, n))
    bought = (rng.random(n) < buy_prob(x, price)).astype(np.float64)
    log = Logged(user=np.arange(n) // 3, price=price, cost=np.full(n, COST), bought=bought,
                 density=np.full(n, 1.0 / (2 * width)))
    return log, x, decided


def true_value(x: np.ndarray, q: np.ndarray) -> float:
    return float(np.mean((q - COST) * buy_prob(x, q)))


@pytest.mark.parametrize("shift", [-0.03, 0.0, 0.04])
def test_ipw_and_dr_recover_the_targets_true_value(shift: float) -> None:
    log, x, decided = logged_world(60_000, 0.1, seed=1)
    target = decided * np.exp(shift)            # a candidate that prices a little lower or higher
    truth = true_value(x, target)
    good_m = lambda p: (p - COST) * buy_prob(x, p)          # noqa: E731 a right demand model
    bad_m = lambda p: (p - COST) * buy_prob(x - 0.5, p)     # noqa: E731 a wrong one
    est = estimate(log, target, m_target=bad_m(target), m_logged=bad_m(log.price), bandwidth=0.03, reps=200)
    assert est["ipw"].lo <= truth <= est["ipw"].hi
    assert est["dr"].lo <= truth <= est["dr"].hi        # right propensities rescue a wrong demand model
    assert not est["dm"].lo <= truth <= est["dm"].hi    # the wrong model alone is off
    right = estimate(log, target, m_target=good_m(target), m_logged=good_m(log.price), bandwidth=0.03, reps=200)
    assert right["dm"].lo <= truth <= right["dm"].hi
    assert right["dr"].hi - right["dr"].lo < est["ipw"].hi - est["ipw"].lo   # a right model narrows the interval


def test_a_better_candidate_is_told_from_a_worse_one() -> None:
    log, x, decided = logged_world(60_000, 0.1, seed=2)
    good, bad = decided * np.exp(0.05), decided * np.exp(-0.08)
    assert true_value(x, good) > true_value(x, bad)
    e_good, e_bad = (estimate(log, t, bandwidth=0.03, reps=200)["ipw"] for t in (good, bad))
    assert e_good.lo > e_bad.hi


def test_support_says_when_the_candidate_is_outside_what_was_logged() -> None:
    log, _, decided = logged_world(5_000, 0.05, seed=3)
    near = estimate(log, decided, bandwidth=0.02, reps=100)
    far = estimate(log, decided * 1.3, bandwidth=0.02, reps=100)
    assert near["support"] > 0.3 and far["support"] == 0.0 and far["ipw"].value == 0.0
    with pytest.raises(ValueError, match="no explored exposures"):
        estimate(Logged(*(np.array([]),) * 5), np.array([]))


def test_the_kernel_integrates_to_one() -> None:
    z = np.linspace(-1.5, 1.5, 300_001)
    assert np.trapezoid(epanechnikov(z), z) == pytest.approx(1.0, abs=1e-6)


def test_a_target_at_the_band_edge_is_not_undervalued() -> None:
    # decisions capped at the band's top edge: the logging draw is cut to [hi e^-w, hi], and the
    # candidate prices at hi too; half of a plain kernel around hi falls where nothing is shown
    rng = np.random.default_rng(5)
    n, w = 60_000, 0.1
    x = rng.normal(1.0, 0.5, n)
    hi, lo = np.full(n, 12.0), np.full(n, 8.0)
    price = hi * np.exp(rng.uniform(-w, 0.0, n))
    bought = (rng.random(n) < buy_prob(x, price)).astype(np.float64)
    base = dict(user=np.arange(n) // 3, price=price, cost=np.full(n, COST), bought=bought, density=np.full(n, 1 / w))
    truth = true_value(x, hi)
    plain = estimate(Logged(**base), hi, bandwidth=0.03, reps=200)["ipw"]
    banded = estimate(Logged(**base, lo=lo, hi=hi), hi, bandwidth=0.03, reps=200)["ipw"]
    assert plain.hi < 0.6 * truth                       # the boundary bias, about a half
    assert banded.lo <= truth <= banded.hi
