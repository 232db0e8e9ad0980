"""Training from decision logs leaves the slope's calibration out; a randomised history keeps it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from streams.features import ITEM_FEATURE_NAMES


def test_decision_logs_turn_the_slope_calibration_off_and_nothing_else() -> None:
    from models.train import DECISION_LOG_CONFIG

    assert DECISION_LOG_CONFIG == {"calibrate_slope": False}


@pytest.mark.slow
def test_calibration_without_the_slope_moves_u_only() -> None:
    """On rows whose true slope is twice the model's, the full calibration raises the slope; with
    ``slope=False`` the slope's calibration stays the identity and only ``u`` is fitted."""
    import keras

    from models.price_model import PriceModelConfig, build_price_model, calibrate, predict

    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(5)
    n, nu = 20_000, 6
    user, item = rng.normal(0, 1, (n, nu)), np.zeros((n, len(ITEM_FEATURE_NAMES)))
    ratio = rng.uniform(0.8, 1.2, n)
    cfg = PriceModelConfig(hidden=(4,), b_hidden=(4,), item_slope=False)

    def model() -> keras.Model:
        keras.utils.set_random_seed(5)
        return build_price_model(user, item, cfg, u0=-1.0, b0=3.0)

    m = model()
    b = predict(m, user, item, ratio)["b"]
    label = (rng.random(n) < expit(-0.5 + 2.0 * b * (1.0 - ratio))).astype(np.float32)  # true slope 2 b
    full = calibrate(m, user, item, ratio, label)
    assert full["t_shift"] + full["t_scale"] * np.log(3.0) > np.log(3.0) + 0.3          # slope raised
    m = model()
    u_only = calibrate(m, user, item, ratio, label, slope=False)
    assert (u_only["t_shift"], u_only["t_scale"]) == (0.0, 1.0)
    w, bias = m.get_layer("b_calib").get_weights()
    assert w.item() == 1.0 and bias.item() == 0.0
    assert u_only["u_shift"] != 0.0 and u_only["val_log_loss_after"] < u_only["val_log_loss_before"]
    np.testing.assert_array_equal(predict(m, user, item, ratio)["b"], b)                 # the slope as trained
