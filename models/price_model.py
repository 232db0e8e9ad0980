"""Price model: P(buy | user, item, price ratio) with demand falling in price by construction.

A Keras *functional* model (tf2onnx cannot convert a Sequential one)::

    inputs   user [B, U], item [B, 3], price_ratio [B, 1]     raw features, float32
    a      = MLP_a(norm(user), norm(item))                      [B, 1]
    b      = softplus(MLP_b(norm(user), norm(item))) + 1e-3     [B, 1]  > 0
    p_buy  = sigmoid(a - b * price_ratio)                       [B, 1]

the same ``logit = a - b * price / base`` parametrisation as :mod:`streams.pricing`, so the
serving side can read ``a`` and ``b`` and price in closed form. Normalisation layers adapted on
the training rows are baked in, so the exported model takes raw features. Only ``p_buy`` is
trained (binary cross-entropy); ``a`` and ``b`` are outputs of the same graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

B_EPS = 1e-3
OUTPUTS = ("p_buy", "a", "b")


@dataclass(frozen=True)
class PriceModelConfig:
    """Architecture and training knobs."""

    hidden: tuple[int, ...] = (64, 32)      # the intercept tower a(x)
    b_hidden: tuple[int, ...] = (32, 16)    # the slope tower b(x); its signal is weak: keep it
    l2: float = 1e-4                        # small and L2-regularised (an unregularised or a
    epochs: int = 20                        # linear b tower recovered sensitivity worse)
    batch_size: int = 1024
    learning_rate: float = 2e-3
    patience: int = 3
    seed: int = 0


def _tower(x: keras.KerasTensor, hidden: tuple[int, ...], name: str, l2: float = 0.0) -> keras.KerasTensor:
    reg = keras.regularizers.L2(l2) if l2 else None
    for k, h in enumerate(hidden):
        x = layers.Dense(h, activation="relu", kernel_regularizer=reg, name=f"{name}_dense{k}")(x)
    return layers.Dense(1, kernel_regularizer=reg, name=f"{name}_out")(x)


def build_price_model(user: np.ndarray, item: np.ndarray, cfg: PriceModelConfig = PriceModelConfig()) -> keras.Model:
    """The model with normalisation adapted on ``user [N, U]`` and ``item [N, 3]`` rows."""
    u_in = keras.Input((user.shape[1],), name="user", dtype="float32")
    i_in = keras.Input((item.shape[1],), name="item", dtype="float32")
    p_in = keras.Input((1,), name="price_ratio", dtype="float32")
    u_norm, i_norm = layers.Normalization(name="user_norm"), layers.Normalization(name="item_norm")
    u_norm.adapt(np.asarray(user, np.float32))
    i_norm.adapt(np.asarray(item, np.float32))
    x = layers.Concatenate(name="features")([u_norm(u_in), i_norm(i_in)])  # [B, U + 3] standardised
    a = layers.Identity(name="a")(_tower(x, cfg.hidden, "a"))
    b = layers.Activation("softplus", name="b_softplus")(_tower(x, cfg.b_hidden, "b", cfg.l2))
    b = layers.Rescaling(1.0, offset=B_EPS, name="b")(b)            # softplus + eps > 0
    logit = layers.Subtract(name="logit")([a, layers.Multiply(name="b_price")([b, p_in])])
    p_buy = layers.Activation("sigmoid", name="p_buy")(logit)
    return keras.Model({"user": u_in, "item": i_in, "price_ratio": p_in}, {"p_buy": p_buy, "a": a, "b": b},
                       name="price_model")


def inputs(user: np.ndarray, item: np.ndarray, price_ratio: np.ndarray) -> dict[str, np.ndarray]:
    """The model's input dict, float32, ``price_ratio`` as a column."""
    return {"user": np.asarray(user, np.float32), "item": np.asarray(item, np.float32),
            "price_ratio": np.asarray(price_ratio, np.float32).reshape(-1, 1)}


def fit_price_model(user: np.ndarray, item: np.ndarray, price_ratio: np.ndarray, label: np.ndarray,
                    cfg: PriceModelConfig = PriceModelConfig(), validation: tuple[np.ndarray, ...] | None = None,
                    verbose: int = 0) -> keras.Model:
    """Train on exposure rows; ``validation`` = (user, item, price_ratio, label) for early stopping."""
    keras.utils.set_random_seed(cfg.seed)
    model = build_price_model(user, item, cfg)
    # train through a view with only the p_buy head; the weights are shared with `model`
    trainer = keras.Model(model.inputs, model.outputs["p_buy"] if isinstance(model.outputs, dict)
                          else model.get_layer("p_buy").output)
    trainer.compile(keras.optimizers.Adam(cfg.learning_rate), "binary_crossentropy")
    callbacks = []
    val = None
    if validation is not None:
        val = (inputs(*validation[:3]), np.asarray(validation[3], np.float32).reshape(-1, 1))
        callbacks.append(keras.callbacks.EarlyStopping(patience=cfg.patience, restore_best_weights=True))
    trainer.fit(inputs(user, item, price_ratio), np.asarray(label, np.float32).reshape(-1, 1),
                batch_size=cfg.batch_size, epochs=cfg.epochs, validation_data=val, callbacks=callbacks,
                shuffle=True, verbose=verbose)
    return model


def predict(model: keras.Model, user: np.ndarray, item: np.ndarray, price_ratio: np.ndarray,
            batch_size: int = 8192) -> dict[str, np.ndarray]:
    """``{"p_buy", "a", "b"}`` as flat float64 arrays."""
    out = model.predict(inputs(user, item, price_ratio), batch_size=batch_size, verbose=0)
    return {k: np.asarray(out[k], np.float64).ravel() for k in OUTPUTS}
