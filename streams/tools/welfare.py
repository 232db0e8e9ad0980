"""Welfare and fairness beside profit: what each arm leaves the users, against the uniform arm.

The reference of every comparison is the **uniform price** of the exposure's item: the price the
``uniform`` arm showed for that item in this run (the median of its prices for the item: one learnt
price per item, the same for everyone). Items the uniform arm never showed take the best uniform
price of the simulated market (its truth) when it is known, else they have no reference and are
left out of the comparisons (``reference_coverage`` says how many were kept).

Per arm (users in their arm, intention to treat):

* ``surplus``: expected consumer surplus per exposure at the shown prices, from the market's true
  demand (``market.consumer_surplus``: the integral of the buy probability above the price), with a
  95 % bootstrap interval over users; ``surplus_at_uniform``: the same exposures at the uniform
  prices (the counterfactual); ``better_off`` / ``worse_off``: the share of the arm's users whose
  summed surplus is higher / lower than at the uniform prices, same exposures (needs the truth);
* ``profit_over_uniform``: expected profit (truth) at the shown prices over that at the uniform prices,
  same exposures, with a bootstrap interval over users: what the arm's pricing adds over the uniform
  prices, without the between-arm noise of comparing different users;
* ``paid_above_uniform``: the share of purchases made at a price above the item's uniform price
  (beyond half a cent), and ``priced_above_uniform`` the share of exposures; both need no truth.

>>> import numpy as np
>>> from streams.tools.evaluate import Exposures
>>> e = Exposures(np.array(["a", "b", "c"]), np.array(["i", "i", "i"]), np.array(["uniform", "treatment", "treatment"]),
...               np.array([9.0, 10.0, 8.0]), np.full(3, 10.0), np.full(3, 6.0), np.zeros(3))
>>> uniform_reference(e)[0].tolist()
[9.0, 9.0, 9.0]
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .stats import bootstrap_sums, percentile_ci

F = NDArray[np.float64]
CENT = 0.005  # "above" means above by more than half a cent: prices are whole cents


def _surplus(market: Any, user: NDArray[Any], item: NDArray[Any], price: F, chunk: int = 8192) -> F:
    """``market.consumer_surplus`` in chunks (a numerical integral may take a grid per row)."""
    out = np.empty(len(user))
    for a in range(0, len(user), chunk):
        out[a:a + chunk] = market.consumer_surplus(user[a:a + chunk], item[a:a + chunk], price[a:a + chunk])
    return out


def uniform_reference(exp: Any, market: Any | None = None) -> tuple[F, str]:
    """The uniform price of each exposure's item and where it comes from (see the module docstring);
    ``exp`` is a :class:`streams.tools.evaluate.Exposures`."""
    ref = np.full(len(exp), math.nan)
    m = exp.arm == "uniform"
    if m.any():
        items, inv = np.unique(exp.item[m], return_inverse=True)
        med = {it: float(np.median(exp.price[m][inv == k])) for k, it in enumerate(items)}
        ref = np.array([med.get(it, math.nan) for it in exp.item], np.float64)
    source = "the uniform arm's prices"
    missing = ~np.isfinite(ref)
    if missing.any() and market is not None and exp.user_index is not None and exp.item_index is not None:
        i = exp.item_index
        truth = market.uniform_prices((exp.user_index, i))[i]
        ref = np.where(missing, truth, ref)
        source = ("the uniform arm's prices (items it never showed: the market's best uniform price)"
                  if (~missing).any() else "the market's best uniform price (no uniform arm in this run)")
    return ref, source


def welfare(exp: Any, user_arm: NDArray[Any], arms: tuple[str, ...], market: Any | None = None,
            reps: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per arm: surplus (with the truth), better/worse off than at the uniform prices, paid above them.

    ``user_arm`` is the arm of each exposure's user (:func:`streams.tools.evaluate.user_arms`); the
    exposures must be attributed (``bought`` filled).
    """
    assert exp.bought is not None
    ref, source = uniform_reference(exp, market)
    has_ref = np.isfinite(ref)
    truth = market is not None and exp.user_index is not None and exp.item_index is not None
    out: dict[str, Any] = {"reference": source, "reference_coverage": float(has_ref.mean()) if len(exp) else math.nan,
                           "arms": {}}
    rng = np.random.default_rng(seed)
    for a in arms:
        m = user_arm == a
        if not m.any():
            continue
        above = exp.price > ref + CENT
        bought, ok = exp.bought[m], has_ref[m]
        row: dict[str, Any] = {
            "exposures": int(m.sum()),
            "priced_above_uniform": float(np.mean(above[m][ok])) if ok.any() else math.nan,
            "purchases": int(bought.sum()),
            "paid_above_uniform": float(np.mean(above[m][ok & bought])) if (ok & bought).any() else math.nan}
        if truth and market is not None:
            u, i = exp.user_index[m], exp.item_index[m]
            cs = _surplus(market, u, i, exp.price[m])
            cs_ref = np.full(len(u), math.nan)
            cs_ref[ok] = _surplus(market, u[ok], i[ok], ref[m][ok])
            users, pos = np.unique(exp.user[m], return_inverse=True)
            n_exp = np.bincount(pos, minlength=len(users)).astype(np.float64)
            cs_user = np.bincount(pos, cs, minlength=len(users)).astype(np.float64)
            diff = np.bincount(pos[ok], (cs - cs_ref)[ok], minlength=len(users))
            scale = np.bincount(pos[ok], cs_ref[ok], minlength=len(users))
            tol = 1e-6 * np.abs(scale) + 1e-9  # equal up to rounding: the uniform arm's own users
            covered = np.bincount(pos[ok], minlength=len(users)) > 0
            # expected profit (truth) at the shown and at the uniform prices, on the exposures with a reference:
            # the paired, within-exposure measure of what the arm's pricing adds over the uniform prices
            cost = exp.unit_cost[m][ok]
            pr = (exp.price[m][ok] - cost) * market.buy_prob(u[ok], i[ok], exp.price[m][ok])
            pr_ref = (ref[m][ok] - cost) * market.buy_prob(u[ok], i[ok], ref[m][ok])
            pr_user, pr_ref_user = (np.bincount(pos[ok], v, minlength=len(users)).astype(np.float64)
                                    for v in (pr, pr_ref))
            n_b, s_b, p_b, q_b = bootstrap_sums([n_exp, cs_user, pr_user, pr_ref_user], reps, rng)
            with np.errstate(invalid="ignore", divide="ignore"):
                row.update({"surplus": float(cs.mean()), "surplus_ci": percentile_ci(s_b / n_b),
                            "surplus_at_uniform": float(np.nanmean(cs_ref)) if ok.any() else math.nan,
                            "users": int(len(users)), "users_compared": int(covered.sum()),
                            "better_off": float(np.mean(diff[covered] > tol[covered])) if covered.any() else math.nan,
                            "worse_off": float(np.mean(diff[covered] < -tol[covered])) if covered.any() else math.nan,
                            "profit_over_uniform": float(pr.sum() / pr_ref.sum()) if ok.any() else math.nan,
                            "profit_over_uniform_ci": percentile_ci(p_b / q_b)})
        out["arms"][a] = row
    return out
