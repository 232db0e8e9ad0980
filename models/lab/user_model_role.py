"""Does the user behaviour model earn a place in pricing? An offline experiment on simulated markets.

The user model predicts P(purchase in the session) from the user features at the session's first
event. The price model already reads those features. This experiment asks whether handing the
price model the user model's logit as one more user feature ("intent") changes what pricing
earns: on each market, the same rows and seeds train the price model three ways, and each is
judged on the market's holdout against the truth (:func:`models.lab.policy_eval.evaluate_policies`):

* ``baseline``: the price model as shipped;
* ``intent_base``: + the intent logit, read by the base-conversion tower only;
* ``intent_both``: + the intent logit, read by the slope (sensitivity) tower too.

``python -m models.lab.user_model_role --markets default,seed1,alike`` prints one table.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from typing import Any

import numpy as np

from models import price_model as pm
from models.dataset import build_rows, holdout_mask, split_rows
from models.user_model import fit_user_model, predict_user
from streams.catalog import Catalog
from streams.features import FEATURE_NAMES
from streams.version import add_version

from .policy_eval import data_market_index, evaluate_policies
from .simulator import Market, MarketConfig

MARKETS = {
    "default": MarketConfig(),
    "seed1": MarketConfig(seed=1),
    "alike": MarketConfig(heterogeneity=0.0),
    "noisy": MarketConfig(noise=2.0, seed=2),
}
VARIANTS = ("baseline", "intent_base", "intent_both")


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


def run_market(cfg: MarketConfig, holdout_days: float = 3.0, members: int | None = None) -> dict[str, Any]:
    """Train the three variants on one simulated market; their holdout reports and log-loss."""
    market = Market(cfg)
    log = market.simulate()
    data = build_rows(log, Catalog.of(market.catalog()))
    cutoff = float(log.ts.max()) - holdout_days * 86400.0
    hold, fit, val = split_rows(data.row_ts, cutoff)
    s_fit = ~holdout_mask(data.sess_ts, cutoff)
    user_model = fit_user_model(data.sess_user[s_fit], data.sess_label[s_fit])  # training period only
    intent = _logit(predict_user(user_model, data.user))[:, None].astype(np.float32)
    u, i = data_market_index(market, data)
    base_cfg = pm.PriceModelConfig() if members is None else pm.PriceModelConfig(members=members)
    out: dict[str, Any] = {}
    for variant in VARIANTS:
        user, names, cfg_v = data.user, FEATURE_NAMES, base_cfg
        if variant != "baseline":
            user, names = np.hstack([data.user, intent]), (*FEATURE_NAMES, "intent_logit")
        if variant == "intent_both":
            cfg_v = replace(base_cfg, slope_features=(*base_cfg.slope_features, "intent_logit"))
        t0 = time.perf_counter()
        model = pm.fit_price_model(user[fit], data.item[fit], data.price_ratio[fit], data.label[fit], cfg=cfg_v,
                                   validation=(user[val], data.item[val], data.price_ratio[val], data.label[val]),
                                   feature_names=names)
        p = pm.predict(model, user[hold], data.item[hold], data.price_ratio[hold])["p_buy"]
        y = data.label[hold].astype(np.float64)
        q = np.clip(p, 1e-7, 1 - 1e-7)
        rep = evaluate_policies(market, model, user[hold], data.item[hold], u[hold], i[hold])
        out[variant] = {"efficiency": rep.efficiency, "efficiency_ci": rep.efficiency_ci,
                        "logloss": float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))),
                        "learned_over_uniform": rep.learned_over_uniform, "fit_s": time.perf_counter() - t0}
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the table of the three variants on each named market."""
    p = argparse.ArgumentParser(prog="python -m models.lab.user_model_role", description=__doc__.split("\n\n")[0])
    add_version(p)
    p.add_argument("--markets", default="default,seed1,alike", help=f"comma-separated, of {sorted(MARKETS)}")
    p.add_argument("--members", type=int, default=None, help="price model members (default: PriceModelConfig)")
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = p.parse_args(argv)
    names = [m.strip() for m in args.markets.split(",") if m.strip()]
    if bad := [m for m in names if m not in MARKETS]:
        p.error(f"unknown market(s) {bad}; known: {sorted(MARKETS)}")
    results = {}
    print("| market | variant | holdout log-loss | efficiency [95% CI] | learned / uniform |")
    print("| --- | --- | --- | --- | --- |")
    for m in names:
        results[m] = run_market(MARKETS[m], members=args.members)
        for v, r in results[m].items():
            lo, hi = r["efficiency_ci"]
            print(f"| {m} | {v} | {r['logloss']:.5f} | {r['efficiency']:.3f} [{lo:.3f}, {hi:.3f}] "
                  f"| {r['learned_over_uniform']:.4f} |", flush=True)
    if args.json:
        print(json.dumps(results, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
