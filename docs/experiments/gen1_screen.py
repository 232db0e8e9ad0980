# Lab script kept with docs/training-data.md ("What generation 1 is served"); not part of the product.
"""Screen a generation-1 training variant on generation 0's loop: fit the price model only, judge it
as the worker serves it (current user features) on the loop's held-out day.
usage: screen.py RUN VARIANT [seed]
  shipped     train+val frozen (what train_all does)
  nofreeze    train+val current
  valcur      train frozen, validation (early stopping + u calibration) current
  both        train on frozen and current copies of each row, validation current
  calslope    shipped + slope calibrated on validation (current)
  firstpair   shipped on the first view of each user-item pair only
  members5    shipped with five members
  slopefrozen only the slope tower's six features frozen, the rest current
  recentcur   all frozen but the 1 h and session features
  urefit      shipped, then the conversion towers refitted on current features with the slope towers fixed
env: NOMASK=1 turns the constant-feature mask off (the explosion); DIAG=1 prints where the served inputs
leave the training range."""
import json, sys, time
from dataclasses import replace
from pathlib import Path
import numpy as np
from models.lab.simulator import Market, MarketConfig
from models import price_model as pm
from models.price_model import PriceModelConfig
from models.dataset import (EventLog, read_events, apply_decisions, rows_from, build_rows, read_prices,
                            decided_views, freeze_user_features, split_rows)
from streams.catalog import Catalog
from streams.features import FeatureSpec, FEATURE_NAMES
from models.train import fill_item_table, DECISION_LOG_CONFIG, _policy_check, _true_beta, slope_level

run, variant = Path(sys.argv[1]), sys.argv[2]
seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
g = json.loads((run / "generations.json").read_text()); market = Market(MarketConfig(**g["market"]))
loop = run / "w0" / "gen0" / "loop"
meta = json.loads((loop / "meta.json").read_text())
log = EventLog.from_events(read_events(loop / "warm_events.jsonl") + read_events(loop / "events.jsonl"))
prices = read_prices(loop / "prices.jsonl"); log, _ = apply_decisions(log, prices)
catalog = Catalog.of(market.catalog())
cur = rows_from(build_rows(log, catalog, FeatureSpec()), float(meta["sim_start"]))
dec = decided_views(log, prices)
frz, _ = freeze_user_features(cur, dec[cur.row_log])
cutoff = float(log.ts.max()) - 86400.0
hold, fit, val = split_rows(cur.row_ts, cutoff)
cfg = replace(PriceModelConfig(seed=seed), **DECISION_LOG_CONFIG)
fill_item_table(frz if variant != "nofreeze" else cur, catalog, ~hold, cur.ch_ts < cutoff, cfg)  # item array shared
P, y = cur.price_ratio, cur.label
from models.price_model import SLOPE_FEATURES
def mix(cols_frozen):
    u = cur.user.copy(); idx = [FEATURE_NAMES.index(c) for c in cols_frozen]; u[:, idx] = frz.user[:, idx]; return u
if variant == "slopefrozen":
    tr_u = va_u = mix(SLOPE_FEATURES)
elif variant == "recentcur":
    keep = [c for c in FEATURE_NAMES if c.endswith("_1h") or c.startswith("session_")]
    print(json.dumps({"current": keep}))
    tr_u = va_u = mix([c for c in FEATURE_NAMES if c not in keep])
else:
    tr_u = {"nofreeze": cur.user}.get(variant, frz.user)
    va_u = {"shipped": frz.user, "urefit": frz.user}.get(variant, cur.user)
if variant == "calslope":
    cfg = replace(cfg, calibrate_slope=True)
if variant == "firstpair":   # the first view of each user-item pair: listed at base in both arms
    key = cur.row_uid.astype(np.int64) * 1_000_000 + cur.row_iid
    order = np.lexsort((cur.row_ts, key)); k = key[order]
    first = np.zeros(len(key), bool); first[order[np.r_[True, k[1:] != k[:-1]]]] = True
    fit, val = fit & first, val & first
if variant == "members5":
    cfg = replace(cfg, members=5)
X = (tr_u[fit], cur.item[fit], P[fit], y[fit])
if variant == "both":
    X = tuple(np.concatenate([a, b]) for a, b in zip(X, (cur.user[fit], cur.item[fit], P[fit], y[fit])))
import os
if os.environ.get("NOMASK"):
    pm.varying = lambda x: np.ones(np.asarray(x).shape[1], np.float32)
else:
    res_mask = {"user_masked": [FEATURE_NAMES[k] for k in np.flatnonzero(pm.varying(X[0]) == 0)],
                "item_masked": [int(k) for k in np.flatnonzero(pm.varying(X[1]) == 0)]}
    print(json.dumps(res_mask))
t0 = time.time()
model = pm.fit_price_model(*X, cfg=cfg, validation=(va_u[val], cur.item[val], P[val], y[val]), feature_names=FEATURE_NAMES)
if variant == "urefit":   # stage 2: the slope towers fixed, the conversion towers refitted on the served features
    import re, keras
    for layer in model.layers:
        layer.trainable = bool(re.fullmatch(r"(m\d+_)?u_(dense\d+|out)", layer.name))
    trainer = keras.Model(model.inputs, model.get_layer("p_buy").output)
    trainer.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    vx = pm.inputs(cur.user[val], cur.item[val], P[val])
    trainer.fit(pm.inputs(cur.user[fit], cur.item[fit], P[fit]), y[fit].reshape(-1, 1).astype(np.float32), batch_size=4096,
                epochs=30, validation_data=(vx, y[val].reshape(-1, 1).astype(np.float32)), verbose=0,
                callbacks=[keras.callbacks.EarlyStopping(patience=6, restore_best_weights=True)])
res = {"variant": variant, "seed": seed, "s": round(time.time() - t0)}
tb = _true_beta(market, cur)
for name, d in (("served", cur), ("frozen", frz)):
    p = _policy_check(market, model, d, hold)
    res[name] = [round(p["efficiency"], 3), [round(c, 3) for c in p["efficiency_ci"]]]
    ph = pm.predict(model, d.user[hold], d.item[hold], np.ones(int(hold.sum())))
    res[name + "_b/beta"] = round(slope_level(ph["b"], tb[d.row_uid[hold]])["b_over_beta"], 3)
import os
if os.environ.get("DIAG"):
    from models.lab.policy_eval import model_ab
    a, b = model_ab(model, cur.user[hold], cur.item[hold])
    a0, b0 = model_ab(model, frz.user[hold], frz.item[hold])
    u, u0 = a - b, a0 - b0
    bad = np.argsort(u)[-20:]
    tr = tr_u[fit]
    mu, sd = tr.mean(0), tr.std(0) + 1e-9
    z = (cur.user[hold] - mu) / sd
    res["u_served_q"] = [round(float(q), 2) for q in np.quantile(u, [0.01, 0.5, 0.99, 1.0])]
    res["u_frozen_q"] = [round(float(q), 2) for q in np.quantile(u0, [0.01, 0.5, 0.99, 1.0])]
    res["b_served_q"] = [round(float(q), 2) for q in np.quantile(b, [0.01, 0.5, 0.99, 1.0])]
    res["maxz_bad"] = [round(float(x), 1) for x in np.abs(z[bad]).max(1)]
    res["maxz_all_q"] = [round(float(q), 1) for q in np.quantile(np.abs(z).max(1), [0.5, 0.9, 0.99])]
    worst = np.abs(z[bad]).argmax(1)
    res["worst_features"] = sorted({FEATURE_NAMES[k] for k in worst})
    zo = np.abs(z).max(0)
    res["most_out"] = [(FEATURE_NAMES[k], round(float(zo[k]), 1), round(float(np.abs((frz.user[hold] - mu) / sd).max(0)[k]), 1)) for k in np.argsort(-zo)[:6]]
print(json.dumps(res))
