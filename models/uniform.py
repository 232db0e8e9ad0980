"""The uniform arm's prices: one price per item, learnt from the training exposures, no personalization.

For each item ``i`` the price ratio ``r = p / base_i`` inside the guardrail band (item bounds,
``max_deviation`` and the margin floor of :class:`streams.pricing.Guardrails`; no step limit, a
uniform price has no previous one) maximises the expected profit over the training exposures
of that item under the trained price model::

    J_i(r) = 1/n_i * sum_{rows of i} (r - c_i / base_i) * sigmoid(a_u,i - b_u,i * r)   (per base unit)

by a grid search over ``grid`` ratios (vectorised, rows sorted by item so each grid column is one
``np.add.reduceat``). Where data is thin the curve is shrunk, empirical-Bayes style, toward the
item's category and the category's toward the whole catalog::

    J_c~ = (n_c J_c + k J_all) / (n_c + k),     J_i~ = (n_i J_i + k J_c~) / (n_i + k)

with ``k = prior_exposures``: an item with a handful of exposures gets (almost) its category's best
ratio, an item with thousands its own. Catalog items without any training exposure get their
category's curve (or the catalog's, for a category never seen). The profit is per base unit, so
items of different price levels weigh alike in the pooled curves.

Training writes the result as ``uniform.json`` (:func:`export.bundle.uniform_bytes`); export ships it in the
bundle, and serving prices the ``uniform`` arm at ``base * ratio`` through the guardrails again.

>>> import numpy as np
>>> r = uniform_ratios(np.array([0, 0]), np.array([3.0, 3.0]), np.array([4.0, 4.0]), np.array([10.0]),
...                    np.array([5.0]), np.array([0.0]), np.array([100.0]), np.array([0]), prior_exposures=0)
>>> round(float(r[0]), 2)     # the logit optimum 0.5 + (1 + W(e^(3 - 2 - 1))) / 4 = 0.89
0.89
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from export.bundle import UNIFORM_FILE, uniform_bytes
from streams.catalog import Catalog
from streams.pricing import Guardrails

GRID = 161            # ratio grid points over the widest band (+-20 %: steps of 0.25 %)
PRIOR_EXPOSURES = 200.0  # shrinkage strength k, in exposures
DEFAULT_GUARDRAILS = Guardrails()  # production defaults (serving clips into its own band again)


def _curves(item: np.ndarray, a: np.ndarray, b: np.ndarray, cost_ratio: np.ndarray, grid: np.ndarray,
            n_items: int, chunk: int = 20_000) -> np.ndarray:
    """Sum over each item's rows of ``(r - c/base) * sigmoid(a - b r)`` at every grid ratio: ``[n_items, G]``."""
    order = np.argsort(item, kind="stable")
    item, a, b, cost_ratio = item[order], a[order], b[order], cost_ratio[order]
    out = np.zeros((n_items, len(grid)))
    for s in range(0, len(item), chunk):
        sl = slice(s, s + chunk)
        it = item[sl]
        with np.errstate(over="ignore"):
            prob = 1.0 / (1.0 + np.exp(-(a[sl, None] - b[sl, None] * grid[None, :])))
        prof = (grid[None, :] - cost_ratio[sl, None]) * prob
        starts = np.flatnonzero(np.r_[True, it[1:] != it[:-1]])
        out[it[starts]] += np.add.reduceat(prof, starts, axis=0)
    return out


def uniform_ratios(item: np.ndarray, a: np.ndarray, b: np.ndarray, base: np.ndarray, cost: np.ndarray,
                   min_price: np.ndarray, max_price: np.ndarray, category: np.ndarray, *,
                   guardrails: Guardrails = DEFAULT_GUARDRAILS, grid: int = GRID,
                   prior_exposures: float = PRIOR_EXPOSURES) -> np.ndarray:
    """Best uniform price ratio per catalog item ``[n_items]`` (see the module docstring).

    ``item [N]`` indexes the catalog arrays ``base, cost, min_price, max_price, category [n_items]``
    (category: an integer code per item); ``a, b [N]`` are the price model's outputs on the
    training exposures (``P(buy) = sigmoid(a - b * price / base)``). Rows with a non-finite
    ``a``/``b`` or ``b <= 0`` are left out. The ratio is always inside the item's band.
    """
    item, a, b = np.asarray(item, np.int64), np.asarray(a, np.float64), np.asarray(b, np.float64)
    base, cost = np.asarray(base, np.float64), np.asarray(cost, np.float64)
    n_items = len(base)
    if n_items == 0:
        return np.zeros(0)
    ok = np.isfinite(a) & np.isfinite(b) & (b > 0)
    item, a, b = item[ok], a[ok], b[ok]
    # the band of each item as ratios: the pricing guards except the step limit
    lo = np.maximum(np.maximum(min_price, base * (1 - guardrails.max_deviation)), cost * (1 + guardrails.margin_floor))
    hi = np.minimum(max_price, base * (1 + guardrails.max_deviation))
    lo = np.where(lo <= hi, lo, np.maximum(min_price, base * (1 - guardrails.max_deviation)))  # floor skipped
    lo_r, hi_r = lo / base, hi / base
    g = np.linspace(max(float(lo_r.min()), 1e-6), float(hi_r.max()), grid)
    sums = _curves(item, a, b, (cost / base)[item], g, n_items)
    n = np.bincount(item, minlength=n_items).astype(np.float64)
    cat = np.unique(np.asarray(category), return_inverse=True)[1].ravel()
    n_cat = np.bincount(cat, n, minlength=cat.max() + 1 if n_items else 0)
    cat_sum = np.zeros((len(n_cat), len(g)))
    np.add.at(cat_sum, cat, sums)
    k = float(prior_exposures)
    j_all = sums.sum(axis=0) / max(n.sum(), 1.0)
    j_cat = (cat_sum + k * j_all) / (n_cat + k)[:, None] if k > 0 else cat_sum / np.maximum(n_cat, 1)[:, None]
    j_cat = np.where((n_cat > 0)[:, None] | (k > 0), j_cat, j_all)
    j_item = (sums + k * j_cat[cat]) / (n + k)[:, None] if k > 0 else sums / np.maximum(n, 1)[:, None]
    j_item = np.where((n > 0)[:, None] | (k > 0), j_item, j_cat[cat])
    inside = (g[None, :] >= lo_r[:, None] - 1e-12) & (g[None, :] <= hi_r[:, None] + 1e-12)
    best = np.argmax(np.where(inside, j_item, -np.inf), axis=1)
    ratio = np.where(inside.any(axis=1), g[best], 1.0)
    return np.clip(ratio, lo_r, hi_r)


def catalog_uniform(catalog: Catalog, item_ids: Sequence[str], row_iid: np.ndarray, a: np.ndarray,
                    b: np.ndarray, *, guardrails: Guardrails = DEFAULT_GUARDRAILS,
                    prior_exposures: float = PRIOR_EXPOSURES) -> dict[str, float]:
    """Item id -> uniform price ratio for every catalog item, from exposure rows ``row_iid`` (indices
    into ``item_ids``) with price-model outputs ``a, b``; rows of items not in the catalog are left out."""
    cols = catalog.columns()
    to_cat = np.array([cols.index.get(i, -1) for i in item_ids], np.int64)
    rows = to_cat[np.asarray(row_iid, np.int64)] if len(to_cat) else np.zeros(0, np.int64)
    keep = rows >= 0
    cats = [c.category for c in (catalog.get(i) for i in cols.ids) if c is not None]
    ratio = uniform_ratios(rows[keep], np.asarray(a)[keep], np.asarray(b)[keep], cols.base_price, cols.unit_cost,
                           cols.min_price, cols.max_price, np.array(cats, dtype=object),
                           guardrails=guardrails, prior_exposures=prior_exposures)
    return {i: float(r) for i, r in zip(cols.ids, ratio, strict=True)}


__all__ = ["GRID", "PRIOR_EXPOSURES", "UNIFORM_FILE", "catalog_uniform", "uniform_bytes", "uniform_ratios"]
