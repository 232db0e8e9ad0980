"""How much of the oracle's edge the features can carry at all: an information yardstick per suite row.

``python -m models.lab.ceiling --out var/ceiling`` builds every market of the robustness suite
(:data:`models.lab.robustness.GRID` and :data:`~models.lab.robustness.SHOP_GRID`, same names, knobs
and size), simulates its randomised history and cuts the training rows exactly as ``pricing-train``
does (:func:`models.dataset.build_rows` with ``FeatureSpec()``, the same time holdout, the item table
filled from the training period). On those rows, under the simulator's truth:

* **uniform** and **oracle** are :mod:`models.lab.policy_eval`'s: the best single price per item for
  the holdout exposures and the profit-optimal price per exposure, both inside the production
  guardrail band, so the efficiencies here compare with ``policy.efficiency`` in a training run's
  ``training_summary.json`` (same holdout rows, same reference prices);
* **feature-supervised ceiling**: a gradient-boosted regressor
  (``HistGradientBoostingRegressor``, fixed seed) is fitted on the training rows to the *answer*,
  ``log(oracle / uniform)`` (uniform over the training exposures), from what the price model
  reads: the user features masked as it masks them (``PriceModelConfig().ignore``) and the item
  features. On the holdout it prices at ``uniform * exp(prediction)`` (the holdout's uniform, so a
  prediction of 0 is exactly the uniform policy and only personalization is judged), clipped to the
  band. Its efficiency ``(ceiling - uniform) / (oracle - uniform)`` has a 95 % bootstrap interval
  over users (:func:`models.lab.policy_eval.profit_table`), and the holdout R^2 of the regressor on
  its target is reported beside it, overall and within item (:func:`within_item_r2`: the item-level
  part of the target is predictable from the item features but worth nothing over a uniform price).
* **oracle-shrunk**: the oracle's own log deviation from uniform times a single factor ``lambda`` in
  ``[0, 1]``, the best one on the holdout, and (since every exposure's profit is unimodal in price,
  so the best is 1 wherever that holds) also at ``lambda`` = the ceiling's own shrinkage, the slope
  of its prediction on the oracle's deviation over the holdout: what a shrinkage of that size alone
  costs, without the ceiling's noise.

The ceiling is a *yardstick, not a strict upper bound*: the regressor is told the right price
during training, which no learner from purchases is, but it is one finite-sample learner of one
family; a better regressor, more history or other features could do better. Read it as "what the
features the price model sees carry about the optimal personal price, with ample supervision".
Where users are alike (the oracle is one price per item) there is nothing to capture and the
efficiencies and R^2 are n/a.

Writes ``ceiling.md`` and ``ceiling.json`` to ``--out`` and prints the table; progress per row goes
to stderr. No model is trained (minutes for the whole grid).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import numpy as np

from models.dataset import EventLog, TrainingData, build_rows, holdout_mask, split_rows
from streams.catalog import Catalog
from streams.features import FEATURE_NAMES, FeatureSpec
from streams.pricing import band_batch
from streams.tools.evaluate import NO_EDGE
from streams.version import add_version

from .market_api import SimMarket, expected_profit
from .policy_eval import (
    DEFAULT_GUARDRAILS,
    data_market_index,
    item_batch,
    oracle_prices,
    profit_table,
    uniform_policy_prices,
)
from .robustness import (
    LARGE,
    QUICK,
    SHOP_NAMES,
    SuiteSize,
    add_markets_arg,
    by_generator,
    market_config,
    pick_markets,
    shop_config,
)
from .shop_market import ShopMarket
from .simulator import Market

LAMBDAS = np.linspace(0.0, 1.0, 101)
"""The oracle-shrunk factors searched."""


def build_market(name: str, knobs: dict[str, Any], size: SuiteSize) -> SimMarket:
    """The suite row's market (the second generator for :data:`SHOP_NAMES`), as robustness builds it."""
    if name in SHOP_NAMES:
        return ShopMarket(shop_config(knobs, size))
    return Market(market_config(knobs, size))


def training_rows(market: SimMarket, holdout_days: float, seed: int = 0) -> tuple[TrainingData, np.ndarray]:
    """The market's history cut into exposure rows as ``pricing-train`` cuts them; returns the rows and
    the holdout mask.

    Mirrors :func:`models.train.train_all`: ``build_rows`` with ``FeatureSpec()``, the cutoff
    ``holdout_days`` before the last event, and the item table (conversion lift, slope) filled from the
    training period only, out of fold for the training rows. The second generator's history goes
    through wire events first, as the suite trains it from files (``--events --catalog``).
    ``seed`` is ``PriceModelConfig.seed`` (the slope fill's folds)."""
    from models.price_model import PriceModelConfig
    from models.train import fill_item_table

    log = market.simulate()
    if isinstance(market, ShopMarket):
        log = EventLog.from_events(log.events())
    catalog = Catalog.of(market.catalog())
    data = build_rows(log, catalog, FeatureSpec())
    cutoff = float(log.ts.max()) - holdout_days * 86400.0
    hold, _, _ = split_rows(data.row_ts, cutoff)
    c_hold = holdout_mask(data.ch_ts, cutoff)
    fill_item_table(data, catalog, ~hold, ~c_hold, PriceModelConfig())
    return data, hold


def model_inputs(data: TrainingData) -> np.ndarray:
    """What the price model reads per row: the user features it does not ignore, then the item features."""
    from models.price_model import PriceModelConfig, feature_mask

    keep = feature_mask(FEATURE_NAMES, PriceModelConfig().ignore) > 0
    return np.hstack([data.user[:, keep], data.item]).astype(np.float64)


def within_item_r2(target: np.ndarray, pred: np.ndarray, item: np.ndarray) -> float:
    """R^2 of ``pred`` on ``target`` after each item's mean is taken out of both: how much of the
    variation *between users of one item* (the only part personal prices can earn from; a uniform
    price already sets each item's level) the features predict. NaN without such variation."""
    n = np.bincount(item).astype(np.float64)
    rt = target - (np.bincount(item, target) / np.maximum(n, 1))[item]
    rp = pred - (np.bincount(item, pred) / np.maximum(n, 1))[item]
    ss = float(np.sum(rt * rt))
    return 1.0 - float(np.sum((rt - rp) ** 2)) / ss if ss > 0 else float("nan")


def _eff(learned: float, uniform: float, oracle: float) -> float:
    """Efficiency, n/a (NaN) where the oracle's edge over uniform is below the suite's ``NO_EDGE``
    (the uniform grid's rounding where users are alike)."""
    edge = oracle - uniform
    return (learned - uniform) / edge if edge > NO_EDGE * abs(uniform) else float("nan")


def ceiling_row(market: SimMarket, holdout_days: float, *, seed: int = 0, n_boot: int = 1000) -> dict[str, Any]:
    """The yardsticks of one market (see the module doc); a JSON-ready dict with timings."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    t0 = time.perf_counter()
    data, hold = training_rows(market, holdout_days)
    t_rows = time.perf_counter() - t0
    tr = ~hold
    if not tr.any() or not hold.any():
        raise ValueError(f"the holdout of {holdout_days:g} days leaves {int(tr.sum())} training and "
                         f"{int(hold.sum())} holdout exposures: both are needed")
    m = cast(Market, market)  # policy_eval's helpers read only what both generators have (SimMarket)
    u, i = data_market_index(market, data)
    oracle = oracle_prices(m, u, i)
    uni_tr = uniform_policy_prices(m, u[tr], i[tr])
    uni_h = uniform_policy_prices(m, u[hold], i[hold])  # evaluate_policies' "uniform"
    target_tr = np.log(oracle[tr] / uni_tr)
    target_h = np.log(oracle[hold] / uni_h)
    x = model_inputs(data)
    t1 = time.perf_counter()
    reg = HistGradientBoostingRegressor(max_iter=2000, early_stopping=True, random_state=seed)
    reg.fit(x[tr], target_tr)
    pred = reg.predict(x[hold])
    t_fit = time.perf_counter() - t1
    uh, ih = u[hold], i[hold]
    bd = band_batch(item_batch(m, ih), DEFAULT_GUARDRAILS)
    ceiling = np.clip(uni_h * np.exp(pred), bd.lo, bd.hi)

    def profit(p: np.ndarray) -> float:
        return expected_profit(market, lambda *_: p, (uh, ih))

    pu, po = profit(uni_h), profit(oracle[hold])
    defined = np.isfinite(_eff(po, pu, po))
    curve = [profit(np.clip(uni_h * np.exp(lam * target_h), bd.lo, bd.hi)) for lam in LAMBDAS]
    best = int(np.argmax(curve))
    var_t = float(np.var(target_h))
    slope = float(np.cov(pred, target_h)[0, 1] / var_t) if defined and var_t > 0 else float("nan")
    lam_fit = float(np.clip(slope, 0.0, 1.0)) if np.isfinite(slope) else float("nan")

    def judged(prices: np.ndarray) -> dict[str, Any]:
        rep = profit_table(m, uh, ih, {"uniform": uni_h, "oracle": oracle[hold], "learned": prices},
                           n_boot=n_boot, seed=seed)
        value = _eff(rep.learned, rep.uniform, rep.oracle)
        ci = rep.efficiency_ci if np.isfinite(value) else (float("nan"), float("nan"))
        return {"value": value, "ci": [float(ci[0]), float(ci[1])], "profit": rep.learned}

    shrunk_fit = float("nan")
    if np.isfinite(lam_fit):
        shrunk_fit = _eff(profit(np.clip(uni_h * np.exp(lam_fit * target_h), bd.lo, bd.hi)), pu, po)
    return {
        "n_train": int(tr.sum()), "n_holdout": int(hold.sum()), "n_holdout_users": int(len(np.unique(uh))),
        "profit": {"uniform": pu, "oracle": po, "base": profit(market.base[ih].astype(np.float64))},
        "oracle_edge_over_uniform": po / pu - 1.0 if pu else float("nan"),
        "target_sd": {"train": float(np.std(target_tr)), "holdout": float(np.sqrt(var_t))},
        "ceiling": judged(ceiling),
        "r2": float(1.0 - np.mean((target_h - pred) ** 2) / var_t) if defined and var_t > 0 else float("nan"),
        "r2_within_item": within_item_r2(target_h, pred, ih) if defined else float("nan"),
        "prediction_slope": slope,
        "oracle_shrunk": {"lambda": float(LAMBDAS[best]) if defined else float("nan"),
                          **judged(np.clip(uni_h * np.exp(LAMBDAS[best] * target_h), bd.lo, bd.hi)),
                          "at_half": _eff(curve[50], pu, po)},
        "oracle_shrunk_at_slope": {"lambda": lam_fit, "value": shrunk_fit},
        "regressor": {"n_iter": int(reg.n_iter_), "features": int(x.shape[1])},
        "rows_s": round(t_rows, 1), "fit_s": round(t_fit, 1), "total_s": round(time.perf_counter() - t0, 1),
    }


def _f(x: float, fmt: str = "{:.2f}") -> str:
    return fmt.format(x) if np.isfinite(x) else "n/a"


def table(rows: list[dict[str, Any]], what: dict[str, str]) -> str:
    """The markdown table, with the average ceiling efficiency over the rows where it is defined."""
    lines = ["| market | what varies | oracle over uniform | ceiling efficiency [95 % CI] "
             "| R^2 of log(oracle/uniform) from features | R^2 within item | oracle-shrunk: best lambda, efficiency "
             "| oracle x ceiling's slope: lambda, efficiency |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        c, s, sf = r["ceiling"], r["oracle_shrunk"], r["oracle_shrunk_at_slope"]
        ce = "n/a" if not np.isfinite(c["value"]) else f"{c['value']:.2f} [{c['ci'][0]:.2f}, {c['ci'][1]:.2f}]"
        lines.append(f"| {r['market']} | {what.get(r['market'], '')} "
                     f"| {_f(100 * r['oracle_edge_over_uniform'], '{:+.1f} %')} | {ce} | {_f(r['r2'])} "
                     f"| {_f(r['r2_within_item'])} "
                     f"| {_f(s['lambda'])}, {_f(s['value'])} | {_f(sf['lambda'])}, {_f(sf['value'])} |")
    effs = [r["ceiling"]["value"] for r in rows if np.isfinite(r["ceiling"]["value"])]
    lines.append("")
    lines.append(f"Average ceiling efficiency over the {len(effs)} rows where it is defined: **{np.mean(effs):.2f}**"
                 if effs else "No row had an efficiency defined.")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m models.lab.ceiling``."""
    p = argparse.ArgumentParser(prog="pricing-ceiling", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_version(p)
    p.add_argument("--out", type=Path, default=Path("var/ceiling"), help="where ceiling.md and ceiling.json go")
    add_markets_arg(p)
    p.add_argument("--large", action="store_true", help="the suite's --large size (4,000 users, 300 items, 10 days)")
    p.add_argument("--seed", type=int, default=0, help="the regressor's and the bootstrap's randomness")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates over users")
    p.add_argument("--threads", type=int, default=1,
                   help="OpenMP threads of the regressor (on a busy machine more than one can be many times slower)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m models.lab.ceiling``."""
    args = parser().parse_args(argv)
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)
    grid, names = pick_markets(parser(), args.markets)
    size = LARGE if args.large else QUICK
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    t0 = time.time()
    print(f"[ceiling] {len(names)} markets, {size}", file=sys.stderr, flush=True)
    for k, n in enumerate(names):
        row = ceiling_row(build_market(n, grid[n][2], size), size.holdout_days, seed=args.seed, n_boot=args.n_boot)
        row.update({"market": n, "generator": "shop" if n in SHOP_NAMES else "simulator", "knobs": grid[n][2]})
        rows.append(row)
        print(f"[ceiling] {k + 1}/{len(names)} {n}: ceiling efficiency {_f(row['ceiling']['value'])}, "
              f"R^2 {_f(row['r2'])}; rows {row['rows_s']:.0f} s, fit {row['fit_s']:.0f} s, "
              f"total {row['total_s']:.0f} s (elapsed {time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    what = {n: g[1] for n, g in grid.items()}
    first, second = by_generator(rows)
    parts = [table(first, what)] if first else []
    if second:  # averaged apart, as the suite does
        parts.append("Second generator (models.lab.shop_market):\n\n" + table(second, what))
    text = "\n\n".join(parts)
    (args.out / "ceiling.md").write_text(f"`python -m models.lab.ceiling{' --large' if args.large else ''}` "
                                         f"({size}, seed {args.seed}), {time.time() - t0:.0f} s\n\n{text}\n")
    (args.out / "ceiling.json").write_text(json.dumps({"size": asdict(size), "seed": args.seed, "rows": rows},
                                                      indent=2, default=float))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
