"""Offline policy evaluation on the simulated market: the yardstick for personalization.

For a set of exposures (user, item) with the features the stream would have had at that moment,
the expected profit per exposure under the market's **true** demand is computed for four pricing
policies:

* ``base``     - the catalog base price;
* ``uniform``  - the best single price per item for this population (``Market.uniform_prices``);
* ``oracle``   - the profit-optimal price under the true ``alpha_ui, beta_u``
  (``Market.oracle_price``), inside the same guardrail band as production;
* ``learned``  - exactly the production decision: ``a, b`` from the price model at
  ``price_ratio = 1``, then :func:`streams.pricing.decide_batch` with the default
  :class:`streams.pricing.Guardrails`, so the offline number predicts the live one.

``efficiency = (learned - uniform) / (oracle - uniform)`` (0 = no better than one price per item,
1 = as good as knowing every user's demand), with a user-level bootstrap interval (exposures of
one user are resampled together; the uniform prices stay fixed, as they would be in a live test).

With the learned uniform prices (:mod:`models.uniform`, from the training exposures, as training
ships them to the ``uniform`` arm) two more rows: ``uniform-learned``, the uniform arm's prices, and
with ``--cap-at-uniform`` ``learned-capped``, the learned policy under ``PRICING_CAP_AT_UNIFORM``
(never above max(base, uniform price)): its efficiency beside the uncapped one is the cap's cost.

``python -m models.lab.policy_eval --heterogeneity 0`` simulates a market, trains the price model on
it and prints the table (the "does no harm where it cannot help" check).
``python -m models.lab.policy_eval --train-dir var/demo/default/train --cap-at-uniform`` judges a
training run's own price model and ``uniform.json`` (what the bundle ships) on its holdout instead.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from models.dataset import build_rows, split_rows
from streams.catalog import Catalog
from streams.features import FEATURE_NAMES, ITEM_FEATURE_NAMES, ITEM_TABLE_FEATURES
from streams.pricing import Guardrails, ItemBatch, band_batch, decide_batch, decide_uniform
from streams.version import add_version

from .market_api import SimMarket
from .simulator import Market, MarketConfig, add_market_args, market_config

POLICIES = ("base", "uniform", "oracle", "learned")
DEFAULT_GUARDRAILS = Guardrails()  # production defaults
AB = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def item_batch(market: Market, item: np.ndarray) -> ItemBatch:
    """Catalog terms of market item indices as the production ``ItemBatch``."""
    return ItemBatch(market.base[item].astype(np.float64), market.cost[item].astype(np.float64),
                     market.min_price[item].astype(np.float64), market.max_price[item].astype(np.float64))


def decide_prices(market: Market, item: np.ndarray, a: np.ndarray, b: np.ndarray,
                  guardrails: Guardrails = DEFAULT_GUARDRAILS, explore_width: float = 0.0,
                  seed: int = 0) -> np.ndarray:
    """The production price for model outputs ``a, b``: ``decide_batch`` under ``guardrails``; with
    ``explore_width``, one draw per row around it, as the worker's exploration draws."""
    n = len(np.asarray(a).ravel())
    u = np.random.default_rng(seed).random(n) if explore_width > 0 else None
    return decide_batch(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel(),
                        item_batch(market, item), guardrails, explore_width=explore_width, explore_u=u).price


def oracle_prices(market: Market, user: np.ndarray, item: np.ndarray,
                  guardrails: Guardrails = DEFAULT_GUARDRAILS) -> np.ndarray:
    """``Market.oracle_price`` clipped into the production guardrail band (profit is log-concave,
    so the clipped optimum is the constrained optimum)."""
    bd = band_batch(item_batch(market, item), guardrails)
    return np.clip(market.oracle_price(user, item), bd.lo, bd.hi)


def uniform_policy_prices(market: Market, user: np.ndarray, item: np.ndarray,
                          guardrails: Guardrails = DEFAULT_GUARDRAILS) -> np.ndarray:
    """Best single price per item for the population, per exposure, inside the guardrail band."""
    bd = band_batch(item_batch(market, item), guardrails)
    return np.clip(market.uniform_prices((user, item))[item], bd.lo, bd.hi)


def model_ab(model: Any, user_x: np.ndarray, item_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a, b`` of a Keras price model at ``price_ratio = 1`` (what the serving scorer reads)."""
    from models.price_model import predict

    o = predict(model, user_x, item_x, np.ones(len(user_x)))
    return o["a"], o["b"]


@dataclass
class PolicyReport:
    """Expected profit per exposure by policy, the efficiency and its bootstrap interval."""

    base: float
    uniform: float
    oracle: float
    learned: float
    efficiency: float
    efficiency_ci: tuple[float, float]
    learned_over_uniform: float
    n_exposures: int
    n_users: int
    mean_price_ratio: dict[str, float]
    extra: dict[str, float]

    def extra_policies(self) -> list[str]:
        """Names of the reported policies beyond the four standard ones."""
        return [k for k in self.mean_price_ratio if k not in POLICIES]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``efficiency_ci`` as a list)."""
        d = asdict(self)
        d["efficiency_ci"] = list(self.efficiency_ci)
        return d


def _efficiency(learned: np.ndarray, uniform: np.ndarray, oracle: np.ndarray) -> np.ndarray:
    """``(learned - uniform) / (oracle - uniform)``; nan where the oracle's edge is nil (< 1e-4 relative,
    e.g. a market with all users alike: there is nothing to personalize)."""
    gap = oracle - uniform
    ok = gap > 1e-4 * np.abs(uniform)
    with np.errstate(all="ignore"):
        return np.where(ok, (learned - uniform) / np.where(ok, gap, 1.0), np.nan)


def profit_table(market: Market, user: np.ndarray, item: np.ndarray, prices: dict[str, np.ndarray],
                 n_boot: int = 1000, seed: int = 0) -> PolicyReport:
    """Expected profit per exposure of each policy's ``prices`` (must hold ``uniform``, ``oracle``
    and ``learned``; others are reported too) with a user-clustered bootstrap of the efficiency."""
    user, item = np.asarray(user), np.asarray(item)
    cost = market.cost[item]
    prof = {k: (p - cost) * market.buy_prob(user, item, p) for k, p in prices.items()}
    mean = {k: float(v.mean()) for k, v in prof.items()}
    # bootstrap over users: Poisson(1) weights per user, sums per user precomputed
    uu, inv = np.unique(user, return_inverse=True)
    per_user = {k: np.bincount(inv, v, minlength=len(uu)) for k, v in prof.items()}
    cnt = np.bincount(inv, minlength=len(uu)).astype(np.float64)
    rng = np.random.default_rng(seed)
    effs = []
    for _ in range(max(n_boot // 100, 1)):
        w = rng.poisson(1.0, (min(100, n_boot), len(uu))).astype(np.float64)
        n = w @ cnt
        m = {k: (w @ per_user[k]) / n for k in ("uniform", "oracle", "learned")}
        effs.append(_efficiency(m["learned"], m["uniform"], m["oracle"]))
    e = np.concatenate(effs)
    lo, hi = np.nanquantile(e, [0.025, 0.975]) if np.isfinite(e).any() else (np.nan, np.nan)
    eff = float(_efficiency(np.array(mean["learned"]), np.array(mean["uniform"]), np.array(mean["oracle"])))
    base = market.base[item]
    return PolicyReport(
        base=mean.get("base", float("nan")), uniform=mean["uniform"], oracle=mean["oracle"],
        learned=mean["learned"], efficiency=eff, efficiency_ci=(float(lo), float(hi)),
        learned_over_uniform=mean["learned"] / mean["uniform"] if mean["uniform"] else float("nan"),
        n_exposures=len(user), n_users=len(uu),
        mean_price_ratio={k: float(np.mean(p / base)) for k, p in prices.items()},
        extra={k: v for k, v in mean.items() if k not in POLICIES})


def evaluate_policies(market: Market, price_model: Any, user_x: np.ndarray, item_x: np.ndarray,
                      user: np.ndarray, item: np.ndarray, *, guardrails: Guardrails = DEFAULT_GUARDRAILS,
                      ab: AB | None = None, others: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                      explore_widths: tuple[float, ...] = (), n_boot: int = 1000, seed: int = 0,
                      uniform_ratio: np.ndarray | None = None, cap_at_uniform: bool = False) -> PolicyReport:
    """The policy table on exposures: features ``user_x [N, U]``, ``item_x [N, 3]`` and the market's
    ``user``/``item`` indices of the same rows.

    The learned policy is ``decide_batch(a, b, ...)`` with ``a, b`` from ``price_model`` at
    ``price_ratio = 1`` (or from ``ab(user_x, item_x)`` if given, for models in other forms).
    ``others`` maps extra policy names to their own ``(a, b)`` (priced the same way, reported in
    ``extra``), e.g. the true ``beta`` with an estimated ``alpha``. Each of ``explore_widths`` adds
    the learned policy with the worker's exploration at that width (``dither:<w>``): its expected
    profit is the cost of exploring. ``uniform_ratio`` (learned uniform price / base per market item)
    adds ``uniform-learned`` (the uniform arm's prices), and with ``cap_at_uniform`` ``learned-capped``
    (the learned policy with the uniform cap, guard 5 of :mod:`streams.pricing`).
    """
    user, item = np.asarray(user), np.asarray(item)
    a, b = ab(user_x, item_x) if ab is not None else model_ab(price_model, user_x, item_x)
    prices = {"base": market.base[item].astype(np.float64),
              "uniform": uniform_policy_prices(market, user, item, guardrails),
              "oracle": oracle_prices(market, user, item, guardrails),
              "learned": decide_prices(market, item, a, b, guardrails)}
    for name, (oa, ob) in (others or {}).items():
        prices[name] = decide_prices(market, item, oa, ob, guardrails)
    for w in explore_widths:
        prices[f"dither:{w:g}"] = decide_prices(market, item, a, b, guardrails, explore_width=w, seed=seed)
    if uniform_ratio is not None:
        ur = np.asarray(uniform_ratio, np.float64)[item]
        prices["uniform-learned"] = decide_uniform(ur, a, b, item_batch(market, item), guardrails).price
        if cap_at_uniform:
            capped = replace(guardrails, cap_at_uniform=True)
            prices["learned-capped"] = decide_batch(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                                    item_batch(market, item), capped, uniform_ratio=ur).price
    rep = profit_table(market, user, item, prices, n_boot=n_boot, seed=seed)
    bd = band_batch(item_batch(market, item), guardrails)
    p = prices["learned"]
    rep.extra.update({"learned_at_band_edge": float(np.mean((p <= bd.lo + 0.005) | (p >= bd.hi - 0.005))),
                      "b_mean": float(np.mean(b)), "true_beta_mean": float(np.mean(market.beta[user]))})
    return rep


def table(rep: PolicyReport) -> str:
    """The report as text."""
    lines = [f"{'policy':<14}{'profit/exposure':>16}{'mean p/base':>13}", "-" * 43]
    for k in (*POLICIES, *rep.extra_policies()):
        lines.append(f"{k:<14}{getattr(rep, k, rep.extra.get(k, float('nan'))):>16.4f}"
                     f"{rep.mean_price_ratio.get(k, float('nan')):>13.3f}")
    lines.append(f"efficiency {rep.efficiency:.3f}  95% CI [{rep.efficiency_ci[0]:.3f}, {rep.efficiency_ci[1]:.3f}]"
                 f"  learned/uniform {rep.learned_over_uniform:.4f}  ({rep.n_exposures:,} exposures,"
                 f" {rep.n_users:,} users)")
    for k in rep.extra_policies():
        eff = float(_efficiency(np.array(rep.extra[k]), np.array(rep.uniform), np.array(rep.oracle)))
        if k.startswith("dither:"):
            lines.append(f"exploration {k}: efficiency {eff:.3f}, profit {rep.extra[k] / rep.learned - 1:+.2%} "
                         "against the learned policy without it")
        elif k == "learned-capped":
            lines.append(f"cap at max(base, learned uniform price): efficiency {eff:.3f} "
                         f"(uncapped {rep.efficiency:.3f}), profit {rep.extra[k] / rep.learned - 1:+.2%} "
                         "against the uncapped learned policy")
        elif k == "uniform-learned":
            lines.append(f"learned uniform prices (the uniform arm): efficiency {eff:.3f}, "
                         f"{rep.extra[k] / rep.uniform:.4f} of the true best uniform price's profit, "
                         f"{rep.extra[k] / rep.base - 1:+.2%} over base")
    return "\n".join(lines)


# ---------------------------------------------------------------- command line
def run(cfg: MarketConfig, holdout_days: float = 3.0, price_cfg: Any = None, progress: bool = False,
        explore_widths: tuple[float, ...] = (), cap_at_uniform: bool = False) -> dict[str, Any]:
    """Simulate ``cfg``, build rows, train the price model on the pre-holdout rows, evaluate on the holdout
    (with the learned uniform prices of the training exposures, and the cap if ``cap_at_uniform``)."""
    from models import price_model as pm
    from models.uniform import catalog_uniform

    t0 = time.perf_counter()
    market = Market(cfg)
    log = market.simulate()
    data = build_rows(log, Catalog.of(market.catalog()), progress=progress)
    hold, fit, val = split_rows(data.row_ts, float(log.ts.max()) - holdout_days * 86400.0)
    model = pm.fit_price_model(data.user[fit], data.item[fit], data.price_ratio[fit], data.label[fit],
                               cfg=price_cfg or pm.PriceModelConfig(),
                               validation=(data.user[val], data.item[val], data.price_ratio[val], data.label[val]),
                               verbose=2 if progress else 0, feature_names=FEATURE_NAMES)
    u, i = data_market_index(market, data)
    tr = pm.predict(model, data.user[~hold], data.item[~hold], np.ones(int((~hold).sum())))
    uni = catalog_uniform(Catalog.of(market.catalog()), data.item_ids, data.row_iid[~hold], tr["a"], tr["b"])
    rep = evaluate_policies(market, model, data.user[hold], data.item[hold], u[hold], i[hold],
                            explore_widths=explore_widths, cap_at_uniform=cap_at_uniform,
                            uniform_ratio=np.array([uni.get(k, 1.0) for k in market.item_ids]))
    return {"report": rep, "seconds": time.perf_counter() - t0}


def run_trained(train_dir: Path, explore_widths: tuple[float, ...] = (),
                cap_at_uniform: bool = False) -> dict[str, Any]:
    """The table for a training run (``pricing-train`` on a simulated market): its price model and its
    ``uniform.json`` on its own holdout exposures (the market re-simulated from the run's knobs)."""
    import keras

    from export.bundle import parse_item_table, parse_uniform
    from models import price_model  # noqa: F401  (registers the model's custom layers, if any)

    t0 = time.perf_counter()
    summary = json.loads((train_dir / "training_summary.json").read_text())
    known = summary.get("knobs", {}).get("market")
    if not known:
        raise SystemExit(f"{train_dir}: training was not on a simulated market (no knobs.market)")
    market = Market(MarketConfig(**known))
    data = build_rows(market.simulate(), Catalog.of(market.catalog()))
    hold, _, _ = split_rows(data.row_ts, datetime.fromisoformat(summary["data"]["holdout_from"]).timestamp())
    # the item-table features of the holdout rows: the run's table (training-period statistics), as serving
    table = parse_item_table((train_dir / "item_table.json").read_bytes(), train_dir / "item_table.json")
    cols = [ITEM_FEATURE_NAMES.index(f) for f in ITEM_TABLE_FEATURES]
    per_item = np.array([table.get(i, (0.0,) * len(cols)) for i in data.item_ids], np.float64).reshape(-1, len(cols))
    data.item[:, cols] = per_item[data.row_iid]
    model = keras.saving.load_model(train_dir / "price_model.keras", compile=False)
    path = train_dir / "uniform.json"
    uni = parse_uniform(path.read_bytes(), path) if path.exists() else None
    u, i = data_market_index(market, data)
    rep = evaluate_policies(market, model, data.user[hold], data.item[hold], u[hold], i[hold],
                            explore_widths=explore_widths, cap_at_uniform=cap_at_uniform and uni is not None,
                            uniform_ratio=None if uni is None else np.array([uni.get(k, 1.0) for k in market.item_ids]))
    return {"report": rep, "seconds": time.perf_counter() - t0}


def data_market_index(market: SimMarket, data: Any) -> tuple[np.ndarray, np.ndarray]:
    """Market user and item indices of the exposure rows of ``TrainingData``."""
    uidx = {u: k for k, u in enumerate(market.user_ids)}
    iidx = {i: k for k, i in enumerate(market.item_ids)}
    um = np.array([uidx[u] for u in data.user_ids])
    im = np.array([iidx[i] for i in data.item_ids])
    return um[data.row_uid], im[data.row_iid]


def main(argv: list[str] | None = None) -> int:
    """``python -m models.lab.policy_eval``: train the price model on a simulated market and print the table."""
    p = argparse.ArgumentParser(prog="python -m models.lab.policy_eval", description=main.__doc__)
    add_version(p)
    add_market_args(p)
    p.add_argument("--holdout-days", type=float, default=None)
    p.add_argument("--explore-widths", default="", metavar="W,W",
                   help="also price with the worker's exploration at these widths (PRICING_EXPLORATION_WIDTH)")
    p.add_argument("--train-dir", type=Path, default=None,
                   help="judge this training run's price model and uniform.json on its holdout (no training)")
    p.add_argument("--cap-at-uniform", action="store_true",
                   help="also price with PRICING_CAP_AT_UNIFORM (never above max(base, learned uniform price)) "
                        "and print the efficiency with and without it")
    args = p.parse_args(argv)
    cfg = market_config(args)
    widths = tuple(float(w) for w in args.explore_widths.split(",") if w.strip())
    if args.train_dir is not None:
        res = run_trained(args.train_dir, widths, args.cap_at_uniform)
    else:
        res = run(cfg, args.holdout_days if args.holdout_days is not None else (0.25 if args.small else 3.0),
                  explore_widths=widths, cap_at_uniform=args.cap_at_uniform)
    print(table(res["report"]))
    print(f"{res['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
