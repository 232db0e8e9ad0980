"""A feature that never moved in the training rows is not read by the price model.

Standardising a constant column divides by ~0, so any other value at serving became thousands of
standard deviations and the towers extrapolated without bound: in a decision log, whose priced rows
read the features of the user's first priced view, ``session_depth_log`` is constant, and one
training seed in four priced the served holdout at an efficiency of -4.2. A catalog category
unseen in training (its ``cat_share`` slot always 0) did the same.
"""

from __future__ import annotations

import numpy as np
import pytest

from streams.features import ITEM_FEATURE_NAMES


def test_varying_marks_the_columns_that_take_more_than_one_value() -> None:
    from models.price_model import varying

    x = np.array([[1.0, 0.0, 5.0], [2.0, 0.0, 5.0], [3.0, 0.0, 5.0]])
    assert varying(x).tolist() == [1.0, 0.0, 0.0]
    assert varying(np.zeros((0, 2))).tolist() == [1.0, 1.0]  # no rows: nothing to judge by, nothing masked


@pytest.mark.slow
def test_a_column_constant_in_training_cannot_move_the_served_output() -> None:
    from models.price_model import PriceModelConfig, fit_price_model, predict

    rng = np.random.default_rng(3)
    n, nu = 4_000, 5
    user = rng.normal(0, 1, (n, nu)).astype(np.float32)
    user[:, 2] = 0.0                                     # e.g. a session depth frozen at the first view
    item = rng.normal(0, 1, (n, len(ITEM_FEATURE_NAMES))).astype(np.float32)
    item[:, 1] = 0.25                                    # an item feature every training item shares
    ratio = rng.uniform(0.8, 1.2, n).astype(np.float32)
    label = (rng.random(n) < 0.2).astype(np.float32)
    cfg = PriceModelConfig(hidden=(8,), b_hidden=(4,), epochs=2, members=2, calibrate=False, ignore=(),
                           slope_features=())
    model = fit_price_model(user, item, ratio, label, cfg=cfg)
    served_user, served_item = user[:200].copy(), item[:200].copy()
    before = predict(model, served_user, served_item, ratio[:200])
    served_user[:, 2], served_item[:, 1] = 3.0, -1.0    # values the training rows never had
    after = predict(model, served_user, served_item, ratio[:200])
    for k in ("a", "b", "p_buy"):
        np.testing.assert_array_equal(after[k], before[k])
    served_user[:, 0] += 1.0                             # a feature that did move in training is still read
    assert not np.allclose(predict(model, served_user, served_item, ratio[:200])["a"], before["a"])
