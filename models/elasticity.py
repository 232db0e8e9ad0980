"""How price sensitivity differs by category and by item: empirical-Bayes log-slope multipliers.

The price model's slope reads the user; real markets also differ by what is sold (a shopper
compares prices on electronics more than on groceries, and on one phone more than on another).
This module estimates, from the exposure rows, a multiplier of the price slope per category and
per item within it, shrunk toward the level above where data is thin:

1. a pooled logistic fit of the purchases on the standardised features and ``d = 1 - price/base``
   gives each row its logit at base ``eta`` and one slope ``b0``;
2. per category, the maximum-likelihood log-multiplier ``delta_c`` of ``b0`` with ``eta`` held fixed
   (a few Newton steps on ``logit = eta + b0 * exp(delta_c) * d``), and its sampling variance;
3. empirical Bayes: the between-category variance ``tau^2`` by the method of moments, and each
   ``delta_c`` shrunk by ``tau^2 / (tau^2 + var_c)``: a category with few purchases, or a market
   whose categories do not differ (``tau^2 = 0``), gets ~0, the global slope;
4. the same per item, around its category's shrunk slope.

An item's ``item_log_slope`` is its category's plus its own shrunk multiplier; an item without
rows gets its category's, and an item the history never had 0. The model bundle ships it in the
item table; the price model adds it to its slope (``b = exp(t_user + item_log_slope)``), so the
per-item price level is the floor the personalization builds on.

>>> rng = np.random.default_rng(0)
>>> n = 60_000; g = rng.integers(0, 4, n); d = rng.uniform(-0.2, 0.2, n)
>>> true = np.array([-0.5, 0.0, 0.0, 0.5]); eta = np.full(n, -1.5)
>>> y = (rng.random(n) < 1 / (1 + np.exp(-(eta + 4.0 * np.exp(true[g]) * d)))).astype(float)
>>> delta, var = group_log_slopes(eta, np.full(n, 4.0), d, y, g, 4)
>>> bool(np.all(np.abs(delta - true) < 3 * np.sqrt(var)))
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit

MAX_LOG = 2.5  # a multiplier beyond e^2.5 ~ 12x the global slope is not estimated from a +-20 % band


def group_log_slopes(eta: np.ndarray, b: np.ndarray, d: np.ndarray, y: np.ndarray, g: np.ndarray,
                     n_groups: int, iters: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Per group ``k``: the maximum-likelihood ``delta_k`` of ``logit = eta + b * exp(delta_k) * d`` and its
    sampling variance (inf for a group without rows or without price variation)."""
    delta = np.zeros(n_groups)
    info: np.ndarray = np.zeros(n_groups)
    for _ in range(iters):
        bd = b * np.exp(delta[g]) * d
        p = expit(eta + bd)
        score = np.bincount(g, (y - p) * bd, n_groups)
        info = np.bincount(g, p * (1 - p) * bd * bd, n_groups)
        step = np.where(info > 1e-9, score / np.maximum(info, 1e-9), 0.0)
        delta = np.clip(delta + np.clip(step, -1.0, 1.0), -MAX_LOG, MAX_LOG)
    var = np.where(info > 1e-9, 1.0 / np.maximum(info, 1e-9), np.inf)
    return delta, var


def shrink(delta: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, float]:
    """Empirical-Bayes shrinkage of ``delta`` toward 0: ``(shrunk, tau^2)``, ``tau^2`` by the method of
    moments over the groups with a finite variance (0 when they differ no more than their noise)."""
    ok = np.isfinite(var)
    if ok.sum() < 2:
        return np.zeros_like(delta), 0.0
    tau2 = max(0.0, float(np.mean(delta[ok] ** 2) - np.mean(var[ok])))
    out = np.where(ok, delta * tau2 / (tau2 + np.where(ok, var, 1.0)), 0.0)
    return out, tau2


def pooled_logit(x: np.ndarray, d: np.ndarray, y: np.ndarray, max_rows: int = 200_000,
                 seed: int = 0) -> tuple[np.ndarray, float]:
    """``(eta, b0)``: every row's logit at base and the one slope of a logistic fit on standardised
    ``x`` and ``d`` (fitted on a subsample of ``max_rows``)."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(x, np.float64)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = (x - mu) / sd
    y = np.asarray(y, int)
    if y.min() == y.max():
        return np.zeros(len(y)), 1.0
    r = np.random.default_rng(seed).permutation(len(y))[:max_rows]
    lr = LogisticRegression(C=1.0, max_iter=300).fit(np.hstack([xs[r], d[r, None]]), y[r])
    b0 = float(np.clip(lr.coef_[0, -1], 0.1, 50.0))
    eta = xs @ lr.coef_[0, :-1] + lr.intercept_[0]
    return np.asarray(eta), b0


def item_log_slopes(eta: np.ndarray, b0: float, d: np.ndarray, y: np.ndarray, iid: np.ndarray,
                    item_cat: np.ndarray, n_items: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Per item index: the category's plus the item's shrunk log-multiplier of ``b0`` (see the module
    doc), from rows ``(eta, d, y, iid)``; ``item_cat`` is each item's category index (-1 unknown)."""
    cat = np.where(item_cat >= 0, item_cat, item_cat.max(initial=0) + 1)
    n_cat = int(cat.max(initial=0)) + 1
    b = np.full(len(y), b0)
    dc, vc = group_log_slopes(eta, b, d, y, cat[iid], n_cat)
    sc, tau_c = shrink(dc, vc)
    sc = np.where(item_cat.max(initial=0) + 1 == np.arange(n_cat), 0.0, sc)  # unknown category: global
    di, vi = group_log_slopes(eta, b0 * np.exp(sc[cat[iid]]), d, y, iid, n_items)
    si, tau_i = shrink(di, vi)
    table = sc[cat] + si
    return table, {"categories": n_cat, "tau_category": float(np.sqrt(tau_c)), "tau_item": float(np.sqrt(tau_i)),
                   "sd_item_log_slope": float(np.std(table)), "b0": b0}
