"""Price model: P(buy | user, item, price ratio) with demand falling in price by construction.

A Keras *functional* model (tf2onnx cannot convert a Sequential one)::

    inputs   user [B, U], item [B, I], price_ratio [B, 1]     raw features, float32
    x      = concat(norm(user), norm(item))                     standardised inside the graph
    s      = item[:, item_log_slope]                            the item's slope multiplier (log), from
                                                                the item table (models.elasticity)
    u_k    = calib_u_k(MLP_u_k(x))                              member k: logit at the base price
    t_k    = calib_b_k(MLP_b_k(norm(user)[slope cols], s))     member k: the user's slope, pre-activation
    u, t   = mean_k u_k, mean_k t_k + s                         [B, 1]  over K members (default 3)
    b      = min(exp(t), B_MAX) + B_EPS                         [B, 1]  in (0, B_MAX + B_EPS]
    a      = u + b                                              [B, 1]
    p_buy  = sigmoid(a - b * price_ratio)                       [B, 1]

the same ``logit = a - b * price / base`` parametrisation as :mod:`streams.pricing`, so the
serving side can read ``a`` and ``b`` and price in closed form. Inside, the logit is written as
``u + b * (1 - price_ratio)``: the price is *centred at the base price*, so the conversion at base
(``u``, well identified by every exposure) and the slope (``b``, identified only by the
randomized price spread) are separate towers instead of one strongly correlated pair. That is a
reparametrisation (any ``(a, b)`` is some ``(u + b, b)``), not a constraint.

Why the extra care for ``b``: the profit-optimal price depends on the *level* of the slope, not
only on its rank, and a slope learnt from a +-20 % price band through a binary cross-entropy is a
weak signal: trained from a neutral start it is shrunk toward the middle (the most sensitive
users got b ~ 5-7 against a true 10-20). Three things fix the level:

1. the towers' output biases start at a pooled logistic fit (intercept at base, price slope), so
   early stopping cannot stop ``b`` half way up from an arbitrary start;
2. ``b`` is the exponential of a linear pre-activation (sensitivity is multiplicative across
   users), capped at ``B_MAX`` so the exported graph never produces ``inf``; an exponential keeps
   the ONNX parity error ~1 ulp of ``b`` (a ``B_MAX * sigmoid`` amplified the sigmoid's rounding
   100-fold, to the edge of the 1e-5 parity tolerance);
3. after training, a 1->1 affine calibration of ``t`` and of ``u`` (the ``b_calib`` and
   ``u_calib`` layers, identity until then) is fitted on the validation rows: it restores the
   dispersion of ``b`` that the tower's regularisation shrank. It is a maximum a posteriori fit,
   with a Gaussian prior at the identity (:data:`CALIBRATION_PRIOR_SD`): the validation rows of a
   small shop hold a few hundred purchases, and there the likelihood alone moved ``b``'s level by
   +20 % on noise (a market whose slope a plain logistic fit gets right); with thousands of
   purchases the prior does not matter.

**An average of independently trained members** (``PriceModelConfig.members``, default 3). The
slope is learnt from a weak signal, so one training run's ``b`` carries noise of its own (member
seeds alone moved the offline efficiency between 0.58 and 0.60); each member is trained, stopped
and calibrated on its own, then one graph averages their ``u`` and their ``t`` (so ``b`` is the
geometric mean). Members differ only in their seed and share the normalisation and the mask.

The slope tower reads **six user features** (``slope_features``, default :data:`SLOPE_FEATURES`):
the price level of the items the user chooses to view, overall and within their category, how
many views that rests on (24 h and 7 d), and the click and cart rates. Sensitivity is a trait of
the user that shows in what they choose to look at. The tower learns from a weak signal (the
response to a +-20 % price spread), and every feature it may read is one more way to fit noise:
reading all 57 user features, the learned slope correlated 0.822 with the true log sensitivity
(offline efficiency 0.600, one member, mean of 3 seeds); reading these six, 0.837 (0.634). With
the item features as well (an earlier version) it was worse again. ``slope_features=()`` gives the
tower every user feature (``b_user_only``) or every feature.

**The item's own sensitivity** (``item_slope``, default on). The slope is ``exp(t_user + s)``: ``s``,
the item feature ``item_log_slope``, is the empirical-Bayes log-multiplier of the slope for the
item's category and the item (:mod:`models.elasticity`), shrunk to 0 where data is thin or where
categories and items do not differ. The user tower learns the user's deviation around it, and
reads ``s`` too (a user may be more or less sensitive where items are). So one good price per item
is the floor the personalization builds on: before, the slope saw the user alone, and a market whose
sensitivity differs by category could not be represented.

Normalisation layers adapted on the training rows are baked in, so the exported model takes raw
features. Only ``p_buy`` is trained (binary cross-entropy); ``a`` and ``b`` are outputs of the
same graph. Stock layers only, so ``keras.saving.load_model`` and tf2onnx need nothing custom.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from keras import layers
from scipy.optimize import minimize
from scipy.special import expit

from streams.features import ITEM_FEATURE_NAMES

# what the slope tower reads by default: the price level of what the user chooses to look at (overall
# and within the category), how much of it there is to go by, and how engaged the user is
SLOPE_FEATURES = ("view_level_in_category", "view_log_base_price", "view_decay_168h", "view_decay_24h",
                  "click_rate_168h", "cart_rate_168h")
B_EPS = 1e-3
B_MAX = 100.0  # cap on the slope (true sensitivities in the simulator stay below ~30)
OUTPUTS = ("p_buy", "a", "b")
# the uncertainty outputs of an ensemble (members > 1), read by serving's guard (streams.pricing.shrink_weight):
# per row the members' variance of t and the noise variance of t it stands for; per graph (a constant column)
# the variance of the true user slope across rows, the empirical-Bayes prior (set_spread_prior)
SPREAD_OUTPUTS = ("t_var", "t_noise_var", "t_signal_var")
CALIBRATION_PRIOR_SD = np.array([0.5, 0.25, 0.25, 0.25])  # u shift, u scale, t shift, t scale, around identity
ITEM_SLOPE = ITEM_FEATURE_NAMES.index("item_log_slope")


@dataclass(frozen=True)
class PriceModelConfig:
    """Architecture and training knobs."""

    hidden: tuple[int, ...] = (64, 32)      # the base-conversion tower u(x)
    b_hidden: tuple[int, ...] = (32, 16)    # the slope tower b(x)
    l2: float = 1e-4                        # on the slope tower
    epochs: int = 60
    batch_size: int = 4096
    learning_rate: float = 1e-3
    patience: int = 6
    pooled_init: bool = True                # output biases from a pooled logistic fit
    calibrate: bool = True                  # ML affine calibration of t and u on validation rows
    # calibrate the slope (t) as well as u; off for decision logs, whose validation rows' price contrast is
    # the A/B arms', read through features the policy itself shifted (models.train, docs/training-data.md)
    calibrate_slope: bool = True
    b_user_only: bool = True                # slope tower sees the user features only
    members: int = 3                        # independently trained members, averaged in one graph
    slope_features: tuple[str, ...] = SLOPE_FEATURES  # the slope tower's user features; () = all of them
    # user features the model must not read (zeroed in the graph): those that measure the prices the
    # user was shown. History priced at random, so there they reveal sensitivity; live, the worker's
    # own prices set them, and a model reading them feeds its decisions back into its inputs
    ignore: tuple[str, ...] = ("view_price_ratio", "discount_response")
    item_slope: bool = True                 # the slope adds the item's item_log_slope and its tower reads it
    seed: int = 0


def _tower(x: keras.KerasTensor, hidden: tuple[int, ...], name: str, l2: float = 0.0,
           bias: float = 0.0) -> keras.KerasTensor:
    reg = keras.regularizers.L2(l2) if l2 else None
    for k, h in enumerate(hidden):
        x = layers.Dense(h, activation="relu", kernel_regularizer=reg, name=f"{name}_dense{k}")(x)
    return layers.Dense(1, kernel_regularizer=reg, bias_initializer=keras.initializers.Constant(bias),
                        name=f"{name}_out")(x)


def _identity_dense(name: str) -> layers.Dense:
    return layers.Dense(1, kernel_initializer="ones", bias_initializer="zeros", trainable=False, name=name)


def feature_mask(names: tuple[str, ...], ignore: tuple[str, ...]) -> np.ndarray:
    """1 per user feature the price model reads, 0 for the ``ignore``d ones (unknown names raise)."""
    unknown = set(ignore) - set(names)
    if unknown:
        raise ValueError(f"cannot ignore unknown features {sorted(unknown)}")
    return np.array([0.0 if n in ignore else 1.0 for n in names], np.float32)


def varying(x: np.ndarray) -> np.ndarray:
    """1 per column of ``x [N, F]`` that takes more than one value, 0 for a constant one.

    A column constant in the training rows is masked in the graph: its standardisation divides by
    ~0 (the layer's epsilon), so any other value at serving becomes thousands of standard deviations
    and the towers, which never saw it move, extrapolate without bound. It happens in decision logs:
    frozen at the user's first priced view, ``session_depth_log`` is the same for every priced row,
    and one seed in four then priced the served holdout at an efficiency of -4.2 (0.33 for the others).
    """
    x = np.asarray(x)
    return (np.ptp(x, axis=0) > 0).astype(np.float32) if len(x) else np.ones(x.shape[1], np.float32)


def slope_columns(names: tuple[str, ...], cfg: PriceModelConfig) -> np.ndarray | None:
    """Column indices of ``cfg.slope_features`` in the user features ``names`` (None: the slope tower
    reads them all). Unknown names and names the model ignores raise."""
    if not cfg.slope_features:
        return None
    unknown = sorted(set(cfg.slope_features) - set(names))
    if unknown:
        raise ValueError(f"unknown slope features {unknown}")
    ignored = sorted(set(cfg.slope_features) & set(cfg.ignore))
    if ignored:
        raise ValueError(f"slope features {ignored} are also in the ignored features")
    return np.array([names.index(n) for n in cfg.slope_features])


def build_price_model(user: np.ndarray, item: np.ndarray, cfg: PriceModelConfig = PriceModelConfig(),
                      u0: float = 0.0, b0: float = 1.0, mask: np.ndarray | None = None,
                      members: int = 1, slope_select: np.ndarray | None = None,
                      item_mask: np.ndarray | None = None) -> keras.Model:
    """The model with normalisation adapted on ``user [N, U]`` and ``item [N, I]`` rows; ``u0`` and
    ``b0`` are the starting conversion logit at base and slope (output biases). ``mask [U]`` (0/1)
    zeroes user features inside the graph: the model takes the full vector but cannot read them.
    ``members > 1`` builds that many tower pairs (layer names prefixed ``m<k>_``) and averages
    their ``u`` and ``t``: the graph :func:`ensemble` fills with trained members. ``slope_select``
    (column indices, :func:`slope_columns`) restricts the slope towers to those user features.
    ``item_mask [I]`` (0/1) zeroes item features on their way into the standardised towers' input (the
    item's raw slope multiplier ``s`` is read before it)."""
    u_in = keras.Input((user.shape[1],), name="user", dtype="float32")
    i_in = keras.Input((item.shape[1],), name="item", dtype="float32")
    p_in = keras.Input((1,), name="price_ratio", dtype="float32")
    u_norm, i_norm = layers.Normalization(name="user_norm"), layers.Normalization(name="item_norm")
    u_x = u_in
    if mask is not None and not np.all(mask == 1.0):
        m = np.asarray(mask, np.float32).reshape(-1)
        u_mask = layers.Dense(len(m), use_bias=False, trainable=False, name="user_mask")
        u_x = u_mask(u_in)
        u_mask.set_weights([np.diag(m)])
        user = np.asarray(user, np.float32) * m
    i_x = i_in
    if item_mask is not None and not np.all(item_mask == 1.0):
        im = np.asarray(item_mask, np.float32).reshape(-1)
        i_mask = layers.Dense(len(im), use_bias=False, trainable=False, name="item_mask")
        i_x = i_mask(i_in)
        i_mask.set_weights([np.diag(im)])
        item = np.asarray(item, np.float32) * im
    u_norm.adapt(np.asarray(user, np.float32))
    i_norm.adapt(np.asarray(item, np.float32))
    ux = u_norm(u_x)  # one normalisation node, shared by both towers
    x = layers.Concatenate(name="features")([ux, i_norm(i_x)])  # [B, U + I] standardised
    if slope_select is not None:  # a fixed 0/1 selection matrix: the slope towers read those columns only
        sel = layers.Dense(len(slope_select), use_bias=False, trainable=False, name="slope_select")
        xb = sel(ux)
        sel.set_weights([np.eye(user.shape[1], dtype=np.float32)[:, slope_select]])
    else:
        xb = ux if cfg.b_user_only else x
    s_raw = None
    if cfg.item_slope:
        # the item's slope multiplier, raw (a log, ~ +-0.5): added to t as is, and read by the towers. Not
        # standardised: in a market whose items do not differ it is 0 everywhere, and a standardised
        # constant would blow up any other value
        pick = layers.Dense(1, use_bias=False, trainable=False, name="item_slope")
        s_raw = pick(i_in)
        pick.set_weights([np.eye(item.shape[1], dtype=np.float32)[:, [ITEM_SLOPE]]])
        xb = layers.Concatenate(name="slope_features")([xb, s_raw])
    us, ts = [], []
    for k in range(members):
        pre = f"m{k}_" if members > 1 else ""
        us.append(_identity_dense(f"{pre}u_calib")(_tower(x, cfg.hidden, f"{pre}u", bias=u0)))
        ts.append(_identity_dense(f"{pre}b_calib")(_tower(xb, cfg.b_hidden, f"{pre}b", cfg.l2,
                                                          bias=float(np.log(b0)))))
    u = us[0] if members == 1 else layers.Average(name="u_mean")(us)
    t = ts[0] if members == 1 else layers.Average(name="t_mean")(ts)
    spread = _spread_outputs(ts, t) if members > 1 else {}
    if s_raw is not None:
        t = layers.Add(name="t_item")([t, s_raw])
    b = layers.ReLU(max_value=B_MAX, name="b_cap")(layers.Activation("exponential", name="b_exp")(t))
    b = layers.Rescaling(1.0, offset=B_EPS, name="b")(b)             # in (0, B_MAX + B_EPS] by construction
    a = layers.Add(name="a")([u, b])
    logit_ = layers.Subtract(name="logit")([a, layers.Multiply(name="b_price")([b, p_in])])
    p_buy = layers.Activation("sigmoid", name="p_buy")(logit_)
    return keras.Model({"user": u_in, "item": i_in, "price_ratio": p_in},
                       {"p_buy": p_buy, "a": a, "b": b, **spread}, name="price_model")


def _spread_outputs(ts: list[keras.KerasTensor], t: keras.KerasTensor) -> dict[str, keras.KerasTensor]:
    """The members' disagreement on the user slope, ``t_var = mean_k (t_k - t)^2`` per row (the item's
    ``s`` is the same for every member and cancels), ``t_noise_var = k * t_var`` and the constant column
    ``t_signal_var``; ``k`` and the constant are set by :func:`set_spread_prior`. Branches off ``t``: the
    averaged ``u`` and ``t`` are the same tensors as without them. Stock layers only (a variance, not an
    sd: there is no sqrt layer)."""
    sq = []
    for k, tk in enumerate(ts):
        d = layers.Subtract(name=f"m{k}_t_dev")([tk, t])
        sq.append(layers.Multiply(name=f"m{k}_t_dev2")([d, d]))
    v = layers.Average(name="t_var")(sq)
    noise = layers.Dense(1, kernel_initializer="ones", bias_initializer="zeros", trainable=False, name="t_noise_var")
    signal = layers.Dense(1, kernel_initializer="zeros", bias_initializer="zeros", trainable=False,
                          name="t_signal_var")  # 0 * t + constant: a per-graph figure carried as a column
    return {"t_var": v, "t_noise_var": noise(v), "t_signal_var": signal(t)}


def _slope_parts(model: keras.Model, user: np.ndarray, item: np.ndarray,
                 batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row the ensemble's ``u`` and user slope ``t`` (before the item's ``s``), and ``t_var``."""
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in ("u_mean", "t_mean", "t_var")])
    out = probe.predict(inputs(user, item, np.ones(len(user))), batch_size=batch_size, verbose=0)
    u, t, v = (np.asarray(x, np.float64).ravel() for x in out)
    return u, t, v


def slope_reliability(u: np.ndarray, t: np.ndarray, s: np.ndarray, price_ratio: np.ndarray,
                      label: np.ndarray) -> float:
    """The held-out reliability of the user slope's deviations, in [0, 1]: the maximum likelihood
    ``lam`` of ``logit = alpha + beta u + exp(gamma + tm + lam (t - tm) + s) (1 - price_ratio)`` (``tm`` the
    rows' mean of ``t``), clipped. Regression dilution: with ``t = truth + noise``, the best predictor of
    the truth is ``tm + lam (t - tm)`` with ``lam = signal var / (signal + noise var)``, so ``1 - lam`` is
    the share of the slope's spread that the rows do not back."""
    d = 1.0 - np.asarray(price_ratio, np.float64).ravel()
    y = np.asarray(label, np.float64).ravel()
    tm = float(t.mean())
    dev = t - tm

    def nll(w: np.ndarray) -> tuple[float, np.ndarray]:
        e = np.exp(np.minimum(w[2] + tm + w[3] * dev + s, np.log(B_MAX)))
        z = w[0] + w[1] * u + (e + B_EPS) * d
        g = expit(z) - y
        de = g * d * e * (e < B_MAX)
        grad = np.array([g.sum(), (g * u).sum(), de.sum(), (de * dev).sum()]) / len(y)
        return float((np.logaddexp(0.0, z) - y * z).mean()), grad

    res = minimize(nll, np.array([0.0, 1.0, 0.0, 1.0]), jac=True, method="L-BFGS-B",
                   bounds=[(-5, 5), (0.2, 5), (-3, 3), (-2, 4)])
    return float(np.clip(res.x[3], 0.0, 1.0))


def set_spread_prior(model: keras.Model, user: np.ndarray, item: np.ndarray,
                     validation: tuple[np.ndarray, ...] | None = None) -> dict[str, float]:
    """Set the guard's prior in place and return it ({} for a model without the spread outputs).

    ``V``, the variance of the ensemble's user slope over the ``user``/``item`` (training) rows, splits
    into signal and noise: with ``validation`` rows (user, item, price_ratio, label) by their
    :func:`slope_reliability` ``lam`` (signal ``lam V``, noise ``(1 - lam) V``); without, by the members'
    mean variance ``v`` as the noise (members trained on the same rows share their overfit, so this says
    too little). The noise is spread over rows in proportion to the members' disagreement:
    ``t_noise_var = noise / v * t_var``; ``t_signal_var`` is the signal."""
    if not set(SPREAD_OUTPUTS) <= {layer.name for layer in model.layers}:
        return {}
    _, t, v = _slope_parts(model, user, item)
    cross, v_mean = float(np.var(t)), max(float(np.mean(v)), 1e-12)
    if validation is not None and np.ptp(np.asarray(validation[3])) > 0:
        uv, tv, _ = _slope_parts(model, validation[0], validation[1])
        has_s = any(layer.name == "t_item" for layer in model.layers)
        sv = np.asarray(validation[1], np.float64)[:, ITEM_SLOPE] if has_s else np.zeros_like(tv)
        lam = slope_reliability(uv, tv, sv, validation[2], validation[3])
        signal, noise = lam * cross, (1.0 - lam) * cross
    else:
        lam, signal, noise = float("nan"), max(cross - v_mean, 0.0), v_mean
    model.get_layer("t_noise_var").set_weights([np.array([[noise / v_mean]], np.float32), np.zeros(1, np.float32)])
    model.get_layer("t_signal_var").set_weights([np.zeros((1, 1), np.float32), np.array([signal], np.float32)])
    prior = {"t_cross_var": cross, "t_members_var": v_mean, "t_signal_var": signal, "t_noise_var": noise}
    return prior if lam != lam else {**prior, "slope_reliability": lam}  # no reliability without held-out rows


def inputs(user: np.ndarray, item: np.ndarray, price_ratio: np.ndarray) -> dict[str, np.ndarray]:
    """The model's input dict, float32, ``price_ratio`` as a column."""
    return {"user": np.asarray(user, np.float32), "item": np.asarray(item, np.float32),
            "price_ratio": np.asarray(price_ratio, np.float32).reshape(-1, 1)}


def pooled_start(user: np.ndarray, item: np.ndarray, price_ratio: np.ndarray, label: np.ndarray,
                 max_rows: int = 200_000, seed: int = 0) -> tuple[float, float]:
    """``(u0, b0)``: intercept at base and price slope of a logistic fit on standardised features and
    ``1 - price_ratio`` (a subsample), the towers' starting point."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    r = rng.permutation(len(label))[:max_rows]
    x = np.hstack([user[r], item[r]]).astype(np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = np.asarray(label[r], int)
    if y.min() == y.max():
        return 0.0, 1.0
    d = 1.0 - np.asarray(price_ratio[r], np.float64).reshape(-1, 1)
    lr = LogisticRegression(C=1.0, max_iter=300).fit(np.hstack([x, d]), y)
    return float(lr.intercept_[0]), float(np.clip(lr.coef_[0, -1], 0.1, 0.5 * B_MAX))


def _sub_models(model: keras.Model) -> keras.Model:
    """``x -> (u_raw, t_raw)``: the tower outputs before the calibration layers."""
    return keras.Model(model.inputs, [model.get_layer("u_out").output, model.get_layer("b_out").output])


def calibrate(model: keras.Model, user: np.ndarray, item: np.ndarray, price_ratio: np.ndarray,
              label: np.ndarray, slope: bool = True) -> dict[str, float]:
    """Fit ``u_calib``/``b_calib`` (affine 1->1 each) by maximum a posteriori on the given rows, in place;
    ``slope=False`` keeps ``b_calib`` at the identity and fits ``u_calib`` alone."""
    u, t = _sub_models(model).predict(inputs(user, item, price_ratio), batch_size=8192, verbose=0)
    u, t = np.asarray(u, np.float64).ravel(), np.asarray(t, np.float64).ravel()
    has_s = any(layer.name == "t_item" for layer in model.layers)
    s = np.asarray(item, np.float64)[:, ITEM_SLOPE] if has_s else np.zeros_like(t)  # added after calibration
    d = 1.0 - np.asarray(price_ratio, np.float64).ravel()
    y = np.asarray(label, np.float64).ravel()

    def nll(w: np.ndarray) -> tuple[float, np.ndarray]:
        e = np.exp(np.minimum(w[2] + w[3] * t + s, np.log(B_MAX)))
        b = e + B_EPS
        z = w[0] + w[1] * u + b * d
        p = expit(z)
        loss = np.logaddexp(0.0, z) - y * z
        g = p - y                                     # dloss/dz
        db = g * d * e * (e < B_MAX)                  # dloss/dt'
        grad = np.array([g.sum(), (g * u).sum(), db.sum(), (db * t).sum()]) / len(y)
        return float(loss.mean()), grad

    w0 = np.array([0.0, 1.0, 0.0, 1.0])

    def posterior(w: np.ndarray) -> tuple[float, np.ndarray]:
        """Minus the log posterior per row: the mean loss plus the prior spread over the rows."""
        loss, grad = nll(w)
        z = (w - w0) / CALIBRATION_PRIOR_SD
        return loss + 0.5 * float(z @ z) / len(y), grad + z / CALIBRATION_PRIOR_SD / len(y)

    t_bounds = [(-10, 10), (0.2, 5)] if slope else [(0.0, 0.0), (1.0, 1.0)]  # equal bounds: t held fixed
    res = minimize(posterior, w0, jac=True, method="L-BFGS-B", bounds=[(-5, 5), (0.2, 5), *t_bounds])
    w = res.x
    before = nll(np.array([0.0, 1.0, 0.0, 1.0]))[0]
    model.get_layer("u_calib").set_weights([np.array([[w[1]]], np.float32), np.array([w[0]], np.float32)])
    model.get_layer("b_calib").set_weights([np.array([[w[3]]], np.float32), np.array([w[2]], np.float32)])
    return {"u_shift": float(w[0]), "u_scale": float(w[1]), "t_shift": float(w[2]), "t_scale": float(w[3]),
            "val_log_loss_before": before, "val_log_loss_after": nll(w)[0]}


def ensemble(members: list[keras.Model], user: np.ndarray, item: np.ndarray, cfg: PriceModelConfig,
             mask: np.ndarray | None = None, slope_select: np.ndarray | None = None,
             item_mask: np.ndarray | None = None) -> keras.Model:
    """One graph averaging trained single models (same ``cfg`` and ``mask``): each member's layers
    are copied into the ``m<k>_`` towers, the shared ones (normalisation, mask) from the first."""
    merged = build_price_model(user, item, cfg, mask=mask, members=len(members), slope_select=slope_select,
                               item_mask=item_mask)
    names = {layer.name for layer in merged.layers}
    for k, member in enumerate(members):
        for layer in member.layers:
            if not layer.weights:
                continue
            target = f"m{k}_{layer.name}" if f"m{k}_{layer.name}" in names else layer.name
            if target == layer.name and k > 0:
                continue  # shared layer, already taken from the first member
            merged.get_layer(target).set_weights(layer.get_weights())
    set_spread_prior(merged, user, item)
    return merged


def fit_price_model(user: np.ndarray, item: np.ndarray, price_ratio: np.ndarray, label: np.ndarray,
                    cfg: PriceModelConfig = PriceModelConfig(), validation: tuple[np.ndarray, ...] | None = None,
                    verbose: int = 0, feature_names: tuple[str, ...] | None = None) -> keras.Model:
    """Train on exposure rows; ``validation`` = (user, item, price_ratio, label) for early stopping and
    for the calibration of ``u``/``b`` (``model.calibration`` holds what it did, averaged over the
    members). ``feature_names`` (the user columns) are needed when ``cfg.ignore`` or
    ``cfg.slope_features`` name features."""
    if cfg.members < 1:
        raise ValueError(f"members must be at least 1, not {cfg.members}")
    if (cfg.ignore or cfg.slope_features) and (feature_names is None or len(feature_names) != user.shape[1]):
        raise ValueError("cfg.ignore and cfg.slope_features need the names of the user feature columns")
    names = tuple(feature_names or ())
    read = feature_mask(names, cfg.ignore) if cfg.ignore else np.ones(user.shape[1], np.float32)
    read = read * varying(user)  # and the features that never moved in these rows (see varying)
    mask = None if np.all(read == 1.0) else read
    imask = varying(item)
    sel = slope_columns(names, cfg)
    um = user if mask is None else np.asarray(user, np.float32) * mask
    u0, b0 = pooled_start(um, item, price_ratio, label, seed=cfg.seed) if cfg.pooled_init else (0.0, 1.0)
    fits = [_fit_member(user, item, price_ratio, label, cfg, cfg.seed + k, u0, b0, mask, validation, verbose, sel,
                        imask) for k in range(cfg.members)]
    if cfg.members == 1:
        return fits[0]
    model = ensemble(fits, user, item, cfg, mask, sel, imask)
    infos = [m.calibration for m in fits]
    model.calibration = {k: float(np.mean([i[k] for i in infos])) for k in infos[0]}  # type: ignore[attr-defined]
    model.calibration["members"] = float(cfg.members)  # type: ignore[attr-defined]
    # the guard's prior, from the held-out rows where there are some; into the training summary (fit_...)
    model.calibration.update(set_spread_prior(model, user, item, validation))  # type: ignore[attr-defined]
    return model


def _fit_member(user: np.ndarray, item: np.ndarray, price_ratio: np.ndarray, label: np.ndarray,
                cfg: PriceModelConfig, seed: int, u0: float, b0: float, mask: np.ndarray | None,
                validation: tuple[np.ndarray, ...] | None, verbose: int,
                slope_select: np.ndarray | None = None, item_mask: np.ndarray | None = None) -> keras.Model:
    """One single model: trained from the pooled start with its own seed, stopped and calibrated."""
    keras.utils.set_random_seed(seed)
    model = build_price_model(user, item, cfg, u0=u0, b0=b0, mask=mask, slope_select=slope_select,
                              item_mask=item_mask)
    # train through a view with only the p_buy head; the weights are shared with `model`
    trainer = keras.Model(model.inputs, model.outputs["p_buy"] if isinstance(model.outputs, dict)
                          else model.get_layer("p_buy").output)
    trainer.compile(keras.optimizers.Adam(cfg.learning_rate), "binary_crossentropy")
    callbacks = []
    val = None
    if validation is not None:
        val = (inputs(*validation[:3]), np.asarray(validation[3], np.float32).reshape(-1, 1))
        callbacks.append(keras.callbacks.EarlyStopping(patience=cfg.patience, restore_best_weights=True))
    hist = trainer.fit(inputs(user, item, price_ratio), np.asarray(label, np.float32).reshape(-1, 1),
                       batch_size=cfg.batch_size, epochs=cfg.epochs, validation_data=val, callbacks=callbacks,
                       shuffle=True, verbose=verbose)
    info: dict[str, float] = {"u0": u0, "b0": b0, "epochs_run": float(len(hist.history["loss"]))}
    if cfg.calibrate and validation is not None and np.ptp(np.asarray(validation[3])) > 0:
        vu, vi, vp, vy = validation[:4]
        info.update(calibrate(model, vu, vi, vp, vy, slope=cfg.calibrate_slope))
    model.calibration = info  # type: ignore[attr-defined]
    return model


def predict(model: keras.Model, user: np.ndarray, item: np.ndarray, price_ratio: np.ndarray,
            batch_size: int = 8192) -> dict[str, np.ndarray]:
    """``{"p_buy", "a", "b"}`` as flat float64 arrays."""
    out = model.predict(inputs(user, item, price_ratio), batch_size=batch_size, verbose=0)
    return {k: np.asarray(out[k], np.float64).ravel() for k in OUTPUTS}
