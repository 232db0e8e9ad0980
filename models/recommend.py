"""Recommend model: a Keras softmax over a choice set of candidate items at their prices.

Inputs (all float32, the ONNX contract; ``K`` is dynamic)::

    user         [B, n_user]      user features (``streams.features.FEATURE_NAMES`` order)
    items        [B, K, n_item]   per (user, item) features (``ITEM_FEATURE_NAMES`` order)
    price_ratio  [B, K]           offered price / base price of each candidate
    mask         [B, K]           1 = real candidate, 0 = padding (gets probability 0)

Output ``probs [B, K]``: the probability that each candidate is the one chosen.

*Nonlinear* mode: ``u_k = theta . items_k + MLP(user, items_k) - softplus(a + b . user) *
price_ratio_k``, on features standardised inside the graph. :func:`fit_recommend` starts it
at the conditional-logit MLE (residual MLP output 0), so training only adds what the clogit
misses (with ``validation_split``, early stopping keeps the best held-out epoch). The
price sensitivity is positive by construction, so each candidate's probability falls as its
own price rises; it depends on the user (the point of personalized pricing) but not on the
price, which keeps that monotonicity exact (``b = 0`` is the plain ``softplus(w)`` term). The
first MLP layer is ``Dense(user) + Dense(items_k)`` added by broadcasting, which equals a
Dense over the concatenation ``[user, items_k]`` without tiling the user across ``K``.

*Linear* mode is exactly a conditional logit, ``softmax_k(theta . items_k + theta_p *
price_ratio_k)``. It has no user part and no intercept: a term shared by every candidate of
an occasion (user effects, a constant) cancels in the softmax, and alternative-specific
constants need an alternative identity stable across occasions, which candidates lack.
It is fitted by exact Newton maximum likelihood (:func:`fit_conditional_logit`) and the
MLE is copied into the Keras weights. The ``user`` input is still an input (multiplied by
zero) so both modes share one serving signature.

*Retrieval* (:func:`build_retrieval_model`): the first stage of serving, ``item [N, n_item] ->
score [N, 1]``, the model's own linear item utility (``item_linear`` over the standardised items
in nonlinear mode, the clogit's item coefficients in linear mode). It is affine in the item
features, so the worker factorises it: the per-item part once per bundle or catalog change, the
per-(user, category bucket) part once per trigger. In linear mode it ranks exactly as the full
model at equal prices; in nonlinear mode it leaves out the MLP residual, which the full model
then adds back on the shortlist.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from .choice import ChoiceTableError, ClogitResult, choice_probs, fit_conditional_logit, read_choice_table

__all__ = ["ChoiceTableError", "ClogitResult", "build_recommend_model", "build_retrieval_model", "choice_probs",
           "choice_loglik", "shortlist_metrics", "fit_conditional_logit", "fit_recommend", "linear_model_from_clogit",
           "predict_probs", "read_choice_table"]

PAD_UTILITY = -1e9  # added to padded candidates' utility: exp() underflows to 0 in float32


Stats = tuple[np.ndarray, np.ndarray]  # (mean, variance) of a feature block


def build_recommend_model(n_user: int, n_item: int, linear: bool, hidden: int = 32, l2: float = 1e-4,
                          user_stats: Stats | None = None, item_stats: Stats | None = None) -> keras.Model:
    """The functional (ONNX-exportable) recommend model; see the module docstring for shapes.

    Nonlinear mode standardises ``user`` and ``items`` inside the graph with the given
    ``(mean, variance)`` (identity when omitted), so serving feeds raw features.
    """
    user = keras.Input((n_user,), name="user", dtype="float32")
    items = keras.Input((None, n_item), name="items", dtype="float32")
    price = keras.Input((None,), name="price_ratio", dtype="float32")
    mask = keras.Input((None,), name="mask", dtype="float32")
    if linear:
        # [B, K, n_item + 1] -> theta . x: the Dense kernel is the clogit coefficient vector
        x = layers.Concatenate(axis=-1)([items, ops.expand_dims(price, -1)])
        utility = ops.squeeze(layers.Dense(1, use_bias=False, name="clogit")(x), -1)
        utility = utility + 0.0 * ops.sum(user, axis=-1, keepdims=True)  # keep `user` in the graph
    else:
        u = _normalizer(n_user, user_stats, "user_norm")(user)     # [B, n_user] standardised
        x = _normalizer(n_item, item_stats, "item_norm")(items)    # [B, K, n_item] standardised
        # [B, 1, H] + [B, K, H] -> [B, K, H]: Dense over concat(user, item) without a tile
        l2 = keras.regularizers.L2(l2)
        h = ops.expand_dims(layers.Dense(hidden, kernel_regularizer=l2, name="user_in")(u), 1)
        h = h + layers.Dense(hidden, use_bias=False, kernel_regularizer=l2, name="item_in")(x)
        h = layers.Dense(hidden, activation="relu", kernel_regularizer=l2, name="hidden")(layers.ReLU()(h))
        # MLP residual starts at 0 on top of a linear item part: training starts from a clogit
        residual = layers.Dense(1, kernel_initializer="zeros", kernel_regularizer=l2, name="residual")(h)
        base = layers.Dense(1, use_bias=False, name="item_linear")(x)
        # per-user sensitivity softplus(a + b . user) > 0, [B, 1]: utility falls in own price
        sens = ops.softplus(layers.Dense(1, kernel_initializer="zeros", kernel_regularizer=l2,
                                         bias_initializer=keras.initializers.Constant(1.0),
                                         name="price_sensitivity")(u))
        utility = ops.squeeze(base + residual, -1) - sens * price
    # [B, K] utilities; padding pushed to -1e9 so it gets probability exactly 0
    probs = layers.Softmax(axis=-1, name="probs")(utility + (1.0 - mask) * PAD_UTILITY)
    # a list, not a dict: tf2onnx calls the model positionally (a dict of inputs still works
    # in Keras, matched by input name)
    return keras.Model([user, items, price, mask], probs,
                       name="recommend_linear" if linear else "recommend")


def build_retrieval_model(model: keras.Model) -> keras.Model:
    """The first stage of ``model`` (a recommend model): ``item [N, n_item] -> score [N, 1]``,
    affine in ``item``; see the module docstring. Shares (copies, in linear mode) its weights."""
    n_item = int(model.inputs[1].shape[-1])  # inputs: user, items, price_ratio, mask
    item = keras.Input((n_item,), name="item", dtype="float32")
    names = {layer.name for layer in model.layers}
    if "clogit" in names:  # linear: theta . items (the price coefficient is the last row)
        dense = layers.Dense(1, use_bias=False, name="score")
        score = dense(item)
        dense.set_weights([model.get_layer("clogit").get_weights()[0][:n_item]])
    else:  # nonlinear: the linear item part the MLP residual was trained on top of
        # as one candidate slot [N, 1, n_item]: the layers were built for [B, K, n_item]
        x = model.get_layer("item_norm")(layers.Reshape((1, n_item))(item))
        score = layers.Reshape((1,), name="score")(model.get_layer("item_linear")(x))
    return keras.Model(item, score, name="retrieve")


def _normalizer(n: int, stats: Stats | None, name: str) -> layers.Normalization:
    mean, var = stats if stats is not None else (np.zeros(n), np.ones(n))
    # constants in the config (saved with the model, folded into the ONNX graph)
    return layers.Normalization(axis=-1, mean=np.asarray(mean, np.float64).tolist(),
                                variance=np.asarray(var, np.float64).tolist(), name=name)


def _stats(x: np.ndarray) -> Stats:
    """Mean and variance per column; constant columns get variance 1 (no division by 0)."""
    var = x.var(axis=0)
    return x.mean(axis=0), np.where(var > 1e-12, var, 1.0)


def _inputs(user: np.ndarray, items: np.ndarray, price_ratio: np.ndarray,
            mask: np.ndarray | None) -> dict[str, np.ndarray]:
    m = np.ones(price_ratio.shape) if mask is None else mask
    return {"user": np.asarray(user, np.float32), "items": np.asarray(items, np.float32),
            "price_ratio": np.asarray(price_ratio, np.float32), "mask": np.asarray(m, np.float32)}


def linear_model_from_clogit(result: ClogitResult, n_user: int) -> keras.Model:
    """The Keras linear model carrying ``result``'s coefficients (items first, price last)."""
    model = build_recommend_model(n_user, len(result.coef) - 1, linear=True)
    model.get_layer("clogit").set_weights([np.asarray(result.coef, np.float32)[:, None]])
    return model


def fit_recommend(user: np.ndarray, items: np.ndarray, price_ratio: np.ndarray, chosen: np.ndarray,
                  mask: np.ndarray | None = None, linear: bool = False, epochs: int = 30,
                  batch_size: int = 256, hidden: int = 32, learning_rate: float = 3e-3,
                  validation_split: float = 0.0, seed: int = 0, verbose: int = 0) -> keras.Model:
    """Fit on choice sets: ``chosen [N]`` is the index of the chosen candidate per occasion.

    Linear mode is exact maximum likelihood (``epochs`` etc. are unused); the fit is kept
    on the model as ``model.clogit`` (a :class:`ClogitResult`). Nonlinear mode minimises
    the cross-entropy of the chosen candidate with Adam; with ``validation_split > 0`` the
    last fraction of occasions is held out and training stops early (patience 5) at the best
    held-out loss.
    """
    if linear:
        X = np.concatenate([items, np.asarray(price_ratio)[..., None]], axis=-1)
        names = tuple(f"item_{i}" for i in range(items.shape[-1])) + ("price_ratio",)
        result = fit_conditional_logit(X, chosen, mask, names)
        model = linear_model_from_clogit(result, user.shape[-1])
        model.clogit = result
        return model
    keras.utils.set_random_seed(seed)
    m = np.ones(np.shape(price_ratio)) if mask is None else np.asarray(mask)
    item_stats = _stats(np.asarray(items, np.float64)[m > 0])
    model = build_recommend_model(user.shape[-1], items.shape[-1], linear=False, hidden=hidden,
                                  user_stats=_stats(np.asarray(user, np.float64)), item_stats=item_stats)
    _warm_start(model, items, price_ratio, chosen, m, item_stats)
    model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy")
    stop = [keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)] if validation_split else []
    model.fit(_inputs(user, items, price_ratio, mask), np.asarray(chosen, np.int64), epochs=epochs,
              batch_size=batch_size, validation_split=validation_split, callbacks=stop,
              verbose=verbose, shuffle=True)
    return model


def _warm_start(model: keras.Model, items: np.ndarray, price_ratio: np.ndarray, chosen: np.ndarray,
                mask: np.ndarray, item_stats: Stats) -> None:
    """Start the nonlinear model at the conditional-logit MLE (its residual MLP starts at 0).

    Training then only has to find what the clogit misses. Skipped when the clogit has no
    finite MLE (then the random initialisation stands).
    """
    X = np.concatenate([items, np.asarray(price_ratio)[..., None]], axis=-1)
    try:
        theta = fit_conditional_logit(X, chosen, mask).coef
    except ChoiceTableError:
        return
    # theta . x == (theta * sd) . standardised x + a constant that cancels in the softmax
    model.get_layer("item_linear").set_weights([(theta[:-1] * np.sqrt(item_stats[1]))[:, None]])
    kernel, _ = model.get_layer("price_sensitivity").get_weights()
    bias = np.log(np.expm1(-theta[-1])) if theta[-1] < -1e-3 else -7.0  # softplus^-1(-theta_p)
    model.get_layer("price_sensitivity").set_weights([kernel, np.array([bias], np.float32)])


def predict_probs(model: keras.Model, user: np.ndarray, items: np.ndarray, price_ratio: np.ndarray,
                  mask: np.ndarray | None = None) -> np.ndarray:
    """``probs [N, K]`` from a recommend model (float64 for downstream arithmetic)."""
    return np.asarray(model(_inputs(user, items, price_ratio, mask)), np.float64)


def choice_loglik(probs: np.ndarray, chosen: np.ndarray) -> float:
    """Log-likelihood of the observed choices under ``probs [N, K]``."""
    return float(np.sum(np.log(np.clip(probs[np.arange(len(chosen)), chosen], 1e-300, None))))


def shortlist_metrics(model: keras.Model, user: np.ndarray, items: np.ndarray, price_ratio: np.ndarray,
                      mask: np.ndarray, chosen: np.ndarray, sizes: tuple[int, ...] = (2, 4)) -> dict[str, float]:
    """Holdout figures of serving's two stages with a shortlist of ``m`` per choice set: the first
    stage keeps its top ``m`` real candidates, the full model ranks those (its probabilities
    renormalised over them). Per ``m``: top-1 accuracy of the two stages, the share of choices whose
    chosen item and whose full-model favourite survive the first stage."""
    first = np.asarray(build_retrieval_model(model)(np.asarray(items, np.float32).reshape(-1, items.shape[-1])),
                       np.float64).reshape(mask.shape)
    first = np.where(mask > 0, first, -np.inf)
    probs = predict_probs(model, user, items, price_ratio, mask)
    rows, best = np.arange(len(chosen)), probs.argmax(1)
    out: dict[str, float] = {}
    for m in sizes:
        keep = np.zeros(mask.shape, bool)
        np.put_along_axis(keep, np.argsort(-first, axis=1)[:, :m], True, axis=1)
        keep &= mask > 0
        out[f"shortlist{m}_top1_accuracy"] = float(np.mean(np.where(keep, probs, -1.0).argmax(1) == chosen))
        out[f"shortlist{m}_chosen_kept"] = float(np.mean(keep[rows, chosen]))
        out[f"shortlist{m}_favourite_kept"] = float(np.mean(keep[rows, best]))
    return out
