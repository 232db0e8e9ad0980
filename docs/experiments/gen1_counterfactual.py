# Lab script kept with docs/training-data.md ("What generation 1 is served"); not part of the product.
"""Counterfactual designs on generation 0's loop rows (frozen features, as trained): every row gets
a price from a design, its purchase is redrawn from the market's true demand, a price model is fitted
(decision-log config), and the learnt/true slope and offline efficiency are read.
usage: cf.py RUN DESIGN [seed]   DESIGN in: logged (arms as logged), user (fresh user-level coin), row (row-level coin),
       rowdither:<w>, userdither:<w> (user-level coin + row dither of width w on treated rows)"""
import json, sys, time
from dataclasses import replace
from pathlib import Path
import numpy as np
import keras
from models.lab.simulator import Market, MarketConfig
from models import price_model as pm
from models.price_model import PriceModelConfig, inputs
from models.dataset import (EventLog, read_events, apply_decisions, rows_from, build_rows, read_prices,
                            decided_views, freeze_user_features, split_rows)
from streams.catalog import Catalog
from streams.features import FeatureSpec, FEATURE_NAMES
from streams.schemas import decision_id
from streams.pricing import optimal_price
from models.train import fill_item_table, DECISION_LOG_CONFIG, slope_level, _true_beta, _policy_check
from models.lab.policy_eval import data_market_index

run, design = Path(sys.argv[1]), sys.argv[2]
seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
g = json.loads((run / "generations.json").read_text())
market = Market(MarketConfig(**g["market"]))
loop = run / "w0" / "gen0" / "loop"
meta = json.loads((loop / "meta.json").read_text())
log = EventLog.from_events(read_events(loop / "warm_events.jsonl") + read_events(loop / "events.jsonl"))
prices = read_prices(loop / "prices.jsonl")
log, joined = apply_decisions(log, prices)
catalog = Catalog.of(market.catalog())
data = rows_from(build_rows(log, catalog, FeatureSpec()), float(meta["sim_start"]))
arm = {p.decision_id: p.arm for p in prices}
dec = decided_views(log, prices)
treated = np.array([arm.get(decision_id(log.event_ids[n], log.item_ids[int(log.item[n])])) == "treatment"
                    for n in data.row_log.tolist()], bool)
data, _ = freeze_user_features(data, dec[data.row_log])
cutoff = float(log.ts.max()) - 86400.0
hold, fit, val = split_rows(data.row_ts, cutoff)
cfg = replace(PriceModelConfig(seed=seed), **DECISION_LOG_CONFIG)
fill_item_table(data, catalog, ~hold, data.ch_ts < cutoff, cfg)
um, im = data_market_index(market, data)
base = np.array([catalog.get(i).base_price for i in data.item_ids])[data.row_iid]
cost = np.array([catalog.get(i).unit_cost for i in data.item_ids])[data.row_iid]
# gen 0's would-be cut for every row: its profit-optimal ratio inside +-20 %
m0 = keras.models.load_model(run / "gen0" / "train" / "price_model.keras", compile=False, safe_mode=False)
o = m0.predict(inputs(data.user, data.item, np.ones(len(um))), batch_size=8192, verbose=0)
ratio0 = np.clip(optimal_price(np.asarray(o["a"]).ravel(), np.asarray(o["b"]).ravel(), 1.0, cost / base), 0.8, 1.2)
rng = np.random.default_rng(1000 + seed)
users = np.unique(data.row_uid)
coin_u = rng.random(users.max() + 1) < 0.5
coin_r = rng.random(len(um)) < 0.5
parts = design.split(":")
kind, w = parts[0], ""
tonly = "tonly" in parts
if kind == "tmix":
    q = float(parts[1])
    z = treated & (rng.random(len(um)) < q)
elif kind == "asis":
    z = treated
    ratio0 = np.asarray(data.price_ratio, np.float64).ravel().copy()
    lr = np.asarray(data.price_ratio, np.float64).ravel()
    print(json.dumps({"corr_logged_vs_x0_cut_treated": float(np.corrcoef(lr[treated], ratio0[treated])[0, 1])}))
elif kind == "logged":
    z = treated
    lr = np.asarray(data.price_ratio, np.float64).ravel()
    print(json.dumps({"corr_logged_vs_x0_cut_treated": float(np.corrcoef(lr[treated], ratio0[treated])[0, 1]),
                      "logged_treated_mean": float(lr[treated].mean()), "x0_treated_mean": float(ratio0[treated].mean())}))
elif kind in ("user", "userdither"):
    w = parts[1] if len(parts) > 1 and parts[1][:1].isdigit() else ""
    z = coin_u[data.row_uid]
elif kind in ("row", "rowdither"):
    w = parts[1] if len(parts) > 1 and parts[1][:1].isdigit() else ""
    z = coin_r
else:
    raise SystemExit(design)
ratio = np.where(z, ratio0, 1.0)
if w:
    ratio = np.where(z, ratio * np.exp(rng.uniform(-float(w), float(w), len(um))), ratio)
ratio = np.clip(ratio, 0.8, 1.2)
y = (rng.random(len(um)) < market.buy_prob(um, im, ratio * base)).astype(np.float32)
if "prebuy" in parts:   # rows up to and including each user's first logged purchase in the log
    lab = np.asarray(data.label).ravel() > 0
    first = np.full(data.row_uid.max() + 1, np.inf)
    np.minimum.at(first, data.row_uid[lab], data.row_ts[lab])
    keep = data.row_ts <= first[data.row_uid]
    fit, val = fit & keep, val & keep
if "firstpair" in parts:  # the first row of each user-item pair
    key = data.row_uid.astype(np.int64) * 100000 + data.row_iid
    order = np.lexsort((data.row_ts, key))
    firsts = np.zeros(len(key), bool)
    k = key[order]
    firsts[order[np.r_[True, k[1:] != k[:-1]]]] = True
    fit, val = fit & firsts, val & firsts
if tonly:
    fit, val = fit & treated, val & treated
t0 = time.time()
model = pm.fit_price_model(data.user[fit], data.item[fit], ratio[fit], y[fit], cfg=cfg,
                           validation=(data.user[val], data.item[val], ratio[val], y[val]), feature_names=FEATURE_NAMES)
ph = pm.predict(model, data.user[hold], data.item[hold], ratio[hold])
tb = _true_beta(market, data)
lvl = slope_level(ph["b"], tb[data.row_uid[hold]])
pol = _policy_check(market, model, data, hold)
print(json.dumps({"design": design, "seed": seed, "b_over_beta": round(lvl["b_over_beta"], 3),
                  "eff": round(pol["efficiency"], 3), "ci": [round(c, 3) for c in pol.get("efficiency_ci", [])],
                  "d_sd": round(float(np.std(1 - ratio[fit])), 4), "treated_share": round(float(z[fit].mean()), 3),
                  "b0": round(model.calibration.get("b0", float("nan")), 3), "fit_rows": int(fit.sum()), "s": round(time.time() - t0)}))
