"""The price ensemble's spread outputs: what they compute, the held-out reliability (known answer), the
export (parity, the bundle, the scorer) and bundles from before them (they load; no guard)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streams.features import FEATURE_NAMES, ITEM_FEATURE_NAMES
from tests.unit.test_export import exported, train_dir  # noqa: F401  (fixtures: a bundle without the spread)

pytestmark = pytest.mark.slow  # builds and exports Keras models
keras = pytest.importorskip("keras")
pm = pytest.importorskip("models.price_model")


def _ensemble(nu: int = len(FEATURE_NAMES), n: int = 400) -> tuple[Any, np.ndarray, np.ndarray, list[Any]]:
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(5)
    user, item = rng.normal(0, 1, (n, nu)).astype(np.float32), rng.normal(0, 1, (n, len(ITEM_FEATURE_NAMES)))
    cfg = pm.PriceModelConfig(hidden=(8,), b_hidden=(4,), slope_features=(), ignore=())
    members = [pm.build_price_model(user, item, cfg, u0=-2.0, b0=2.0 + k) for k in range(3)]
    return pm.ensemble(members, user, item, cfg), user, item.astype(np.float32), members


def test_spread_outputs_are_the_members_variance_and_the_prior() -> None:
    merged, user, item, members = _ensemble()
    x = pm.inputs(user, item, np.ones(len(user)))
    out = {k: np.asarray(v, np.float64).ravel() for k, v in merged(x, training=False).items()}
    tk = np.hstack([np.asarray(keras.Model(m.inputs, m.get_layer("b_calib").output)(x), np.float64) for m in members])
    np.testing.assert_allclose(out["t_var"], tk.var(axis=1), rtol=1e-4, atol=1e-7)
    # no held-out rows: the members' mean variance is the noise (so t_noise_var = t_var), the rest the signal
    t_mean = tk.mean(axis=1)
    np.testing.assert_allclose(out["t_noise_var"], out["t_var"], rtol=1e-6)
    np.testing.assert_allclose(out["t_signal_var"], max(t_mean.var() - tk.var(axis=1).mean(), 0.0), rtol=1e-3)
    assert np.ptp(out["t_signal_var"]) == 0.0 and out["t_var"].min() >= 0 and out["t_var"].max() > 0


def test_slope_reliability_recovers_signal_over_total() -> None:
    """t = truth + noise with var 0.09 + 0.09: the held-out fit's lam is 0.5; no signal: 0; no noise: 1."""
    rng = np.random.default_rng(0)
    n = 400_000
    truth = rng.normal(0, 0.3, n)
    ratio = rng.uniform(0.8, 1.2, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(-2.0 + np.exp(1.2 + truth) * (1 - ratio))))).astype(float)
    u, s = np.full(n, -2.0), np.zeros(n)
    half = pm.slope_reliability(u, 1.2 + truth + rng.normal(0, 0.3, n), s, ratio, y)
    assert abs(half - 0.5) < 0.12, half
    assert pm.slope_reliability(u, 1.2 + truth, s, ratio, y) > 0.85
    assert pm.slope_reliability(u, 1.2 + rng.normal(0, 0.3, n), s, ratio, y) < 0.1


def test_an_ensemble_exports_its_spread_and_the_scorer_reads_it(train_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    from export.__main__ import export_train_dir
    from streams.scoring import OnnxScorer

    d = tmp_path / "train"
    shutil.copytree(train_dir, d)
    merged, *_ = _ensemble()
    merged.save(d / "price_model.keras")
    bundle, parity = export_train_dir(d, tmp_path / "models", tol=1e-5, rows=10_000, progress=False)
    assert {"t_var", "t_noise_var", "t_signal_var"} <= set(parity["price"]["max_abs_diff"])  # checked like a, b
    outs = {o["name"] for o in bundle.manifest["models"]["price"]["outputs"]}
    assert {"p_buy", "a", "b", "t_var", "t_noise_var", "t_signal_var"} <= outs
    scorer = OnnxScorer(bundle)
    rng = np.random.default_rng(1)
    user, item = rng.normal(size=(50, len(FEATURE_NAMES))), rng.normal(size=(50, len(ITEM_FEATURE_NAMES)))
    a, b, p, spread = scorer.price_spread(user, item, np.ones(50))
    a0, b0, p0 = scorer.price(user, item, np.ones(50))
    assert scorer.has_spread and spread is not None
    assert a.tolist() == a0.tolist() and b.tolist() == b0.tolist() and p.tolist() == p0.tolist()
    ref = merged(pm.inputs(user, item, np.ones(50)), training=False)
    np.testing.assert_allclose(spread.noise_var, np.asarray(ref["t_noise_var"]).ravel(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(spread.signal_var, np.asarray(ref["t_signal_var"]).ravel(), rtol=1e-5)


def test_a_bundle_from_before_the_spread_loads_and_means_no_guard(exported: tuple[Path, Any, dict]) -> None:  # noqa: F811
    from streams.scoring import OnnxScorer

    _, bundle, _ = exported
    scorer = OnnxScorer(bundle)
    rng = np.random.default_rng(2)
    user, item = rng.normal(size=(20, len(FEATURE_NAMES))), rng.normal(size=(20, len(ITEM_FEATURE_NAMES)))
    a, b, p, spread = scorer.price_spread(user, item, np.ones(20))
    assert not scorer.has_spread and spread is None
    assert a.tolist() == scorer.price(user, item, np.ones(20))[0].tolist()


def test_a_spread_output_of_the_wrong_shape_is_refused() -> None:
    from export.bundle import BundleError, check_contract

    sig = {"inputs": [{"name": n, "dtype": "float32", "shape": [None, w]} for n, w in
                      (("user", 3), ("item", 2), ("price_ratio", 1))],
           "outputs": [{"name": n, "dtype": "float32", "shape": [None, 1]} for n in ("p_buy", "a", "b")]}
    check_contract("price", sig, 3, 2)
    sig["outputs"].append({"name": "t_noise_var", "dtype": "float32", "shape": [None, 2]})
    with pytest.raises(BundleError, match="t_noise_var"):
        check_contract("price", sig, 3, 2)


def test_the_spread_outputs_leave_the_served_prices_bit_identical() -> None:
    """The same weights without the spread outputs (the graph as it was before them): onnxruntime gives
    the very same p_buy, a and b."""
    from export import convert
    from export.bundle import make_session

    merged, user, item, _ = _ensemble()
    pruned = keras.Model(merged.inputs, {k: merged.get_layer(k).output for k in ("p_buy", "a", "b")})
    rng = np.random.default_rng(4)
    feed = {"user": user, "item": item, "price_ratio": rng.uniform(0.8, 1.2, (len(user), 1)).astype(np.float32)}
    got = [make_session(convert.keras_to_onnx(m, "price").SerializeToString()).run(["p_buy", "a", "b"], feed)
           for m in (merged, pruned)]
    for with_spread, without in zip(*got, strict=True):
        assert with_spread.tobytes() == without.tobytes()
