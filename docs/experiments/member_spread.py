# Lab script kept with docs/training-data.md ("What generation 1 is served"); not part of the product.
"""How wide would Thompson sampling over the ensemble's members explore? Per held-out row of a bundle's
training, each member's own (a_k, b_k) -> its profit-optimal price ratio inside +-20 %; the spread of
log price over members, against the dither's (log-uniform +-w: sd w/sqrt(3))."""
import sys, json
import numpy as np
import keras
from streams.pricing import optimal_price
from models.price_model import inputs, B_MAX, B_EPS

d = sys.argv[1]
m = keras.models.load_model(f"{d}/price_model.keras", compile=False, safe_mode=False)
z = np.load(f"{d}/holdout_sample.npz")
user, item = z["user"], z["item"]
names = json.load(open(f"{d}/training_summary.json"))["item_feature_names"]
cost = item[:, names.index("cost_ratio")].astype(np.float64)
s = item[:, names.index("item_log_slope")].astype(np.float64)
k = sum(1 for layer in m.layers if layer.name.endswith("_u_calib"))
outs = [m.get_layer(f"m{j}_u_calib").output for j in range(k)] + [m.get_layer(f"m{j}_b_calib").output for j in range(k)]
probe = keras.Model(m.inputs, outs)
res = [np.asarray(x, np.float64).ravel() for x in probe.predict(inputs(user, item, np.ones(len(user))), batch_size=8192, verbose=0)]
us, ts = res[:k], res[k:]
def price(u, t):
    b = np.minimum(np.exp(t + s), B_MAX) + B_EPS
    return np.clip(optimal_price(u + b, b, 1.0, cost), 0.8, 1.2)
pk = np.stack([price(u, t) for u, t in zip(us, ts)])           # [K, rows]
pe = price(np.mean(us, 0), np.mean(ts, 0))                      # the ensemble's own price
lp = np.log(pk)
sd = lp.std(0, ddof=0)
dev = np.abs(lp - np.log(pe)).ravel()
print(json.dumps({"members": k, "rows": len(user),
                  "member_log_price_sd_mean": float(sd.mean()), "median": float(np.median(sd)), "p90": float(np.quantile(sd, 0.9)),
                  "abs_dev_from_ensemble_mean": float(dev.mean()),
                  "t_member_sd": float(np.std(np.stack(ts), 0).mean()), "u_member_sd": float(np.std(np.stack(us), 0).mean()),
                  "dither_sd": {w: w / np.sqrt(3) for w in (0.05, 0.1)},
                  "ensemble_price_mean": float(pe.mean())}, indent=1))
