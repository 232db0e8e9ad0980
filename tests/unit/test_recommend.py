"""Recommend model: exact conditional logit in linear mode, a better nonlinear fit, ONNX parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.choice import (
    SIM_NAMES,
    SIM_TRUTH,
    ChoiceTableError,
    choice_probs,
    fit_conditional_logit,
    main,
    read_choice_table,
    simulate_choices,
)
from models.recommend import (
    build_recommend_model,
    build_retrieval_model,
    choice_loglik,
    fit_recommend,
    predict_probs,
    shortlist_metrics,
)

DATA = Path(__file__).parent.parent / "data" / "choice_small.csv"


@pytest.fixture(scope="module")
def sim() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3000 occasions of 4 alternatives, 3 features + price, known truth ``SIM_TRUTH``."""
    return simulate_choices(3000, n_alts=(4, 4), seed=1)


def test_clogit_matches_statsmodels_and_recovers_truth(sim: tuple[np.ndarray, ...]) -> None:
    from statsmodels.discrete.conditional_models import ConditionalLogit

    X, chosen, mask = sim
    ours = fit_conditional_logit(X, chosen, mask, SIM_NAMES)
    n, k, f = X.shape
    y = np.zeros((n, k))
    y[np.arange(n), chosen] = 1.0
    ref = ConditionalLogit(y.ravel(), X.reshape(-1, f), groups=np.repeat(np.arange(n), k)).fit(
        disp=0, method="bfgs", gtol=1e-10, maxiter=500)
    np.testing.assert_allclose(ours.coef, ref.params, atol=1e-3)
    np.testing.assert_allclose(ours.se, ref.bse, rtol=1e-3)
    assert ours.loglik == pytest.approx(ref.llf, abs=1e-4)
    assert np.all(np.abs(ours.coef - SIM_TRUTH) < 4 * ours.se)
    assert ours.loglik_null == pytest.approx(-n * np.log(k))
    assert 0.0 < ours.pseudo_r2 < 1.0 and ours.n_occasions == n


@pytest.mark.slow
def test_keras_linear_model_is_the_conditional_logit(sim: tuple[np.ndarray, ...]) -> None:
    X, chosen, mask = sim
    user = np.random.default_rng(2).normal(size=(len(chosen), 5))  # must not matter
    model = fit_recommend(user, X[..., :3], X[..., 3], chosen, mask, linear=True)
    np.testing.assert_allclose(model.clogit.coef, fit_conditional_logit(X, chosen, mask).coef)
    probs = predict_probs(model, user, X[..., :3], X[..., 3], mask)
    np.testing.assert_allclose(probs, choice_probs(model.clogit.coef, X, mask), atol=1e-5)
    assert choice_loglik(probs, chosen) == pytest.approx(model.clogit.loglik, rel=1e-5)


@pytest.mark.slow
def test_nonlinear_model_starts_at_the_clogit(sim: tuple[np.ndarray, ...]) -> None:
    X, chosen, mask = sim
    user = np.random.default_rng(3).normal(size=(len(chosen), 5))
    start = fit_recommend(user, X[..., :3], X[..., 3], chosen, mask, epochs=0)  # warm start only
    coef = fit_conditional_logit(X, chosen, mask).coef
    np.testing.assert_allclose(predict_probs(start, user, X[..., :3], X[..., 3], mask),
                               choice_probs(coef, X, mask), atol=1e-5)


def test_padding_gets_zero_probability_and_changes_nothing() -> None:
    X, chosen, mask = simulate_choices(400, n_alts=(2, 5), seed=3)
    assert mask.min() == 0.0  # varying set sizes really padded
    res = fit_conditional_logit(X, chosen, mask)
    X_junk = np.where(mask[..., None] > 0, X, 99.0)  # garbage in padded slots is ignored
    np.testing.assert_allclose(fit_conditional_logit(X_junk, chosen, mask).coef, res.coef)
    model = build_recommend_model(4, 3, linear=True)
    probs = predict_probs(model, np.zeros((400, 4)), X_junk[..., :3], X_junk[..., 3], mask)
    assert np.all(probs[mask == 0] == 0.0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_read_choice_table_pads_varying_sets() -> None:
    X, chosen, mask, names = read_choice_table(DATA, "occ", "alt", "chosen", "price")
    assert names == ("quality", "promo", "price")  # non-numeric `brand` left out, price last
    assert X.shape == (5, 4, 3)
    np.testing.assert_array_equal(mask.sum(axis=1), [3, 3, 4, 2, 3])  # s2's rows need not be adjacent
    np.testing.assert_array_equal(chosen, [1, 0, 2, 0, 0])
    np.testing.assert_allclose(X[1, 2], [-0.8, 1.0, 0.70])
    _, _, _, only = read_choice_table(DATA, "occ", "alt", "chosen", "price", ["promo"])
    assert only == ("promo", "price")


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("s1,a,0", "s1,a,1"), "2 chosen rows"),
    (lambda t: t.replace("s1,a,0", "s1,a,2"), "must be 0 or 1"),
    (lambda t: t.replace("s1,c,", "s1,b,"), "appears twice"),
    (lambda t: t.replace("0.5,0,acme", "x,0,acme"), "not a number"),
    (lambda t: t.replace("price", "cost"), "missing columns"),
])
def test_bad_tables_raise_typed_errors(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.csv"
    bad.write_text(edit(DATA.read_text()))
    with pytest.raises(ChoiceTableError, match=message):
        read_choice_table(bad, "occ", "alt", "chosen", "price", ["quality", "promo"])


def test_unidentifiable_coefficient_is_refused() -> None:
    X, chosen, mask = simulate_choices(200, seed=4)
    X[..., 1] = 1.0  # constant within every choice set: cancels in the softmax
    with pytest.raises(ChoiceTableError, match="not identifiable"):
        fit_conditional_logit(X, chosen, mask)


def test_perfect_separation_is_reported() -> None:
    X, chosen, mask, _ = read_choice_table(DATA, "occ", "alt", "chosen", "price")
    with pytest.raises(ChoiceTableError, match="perfect separation"):
        fit_conditional_logit(X[:3], chosen[:3], mask[:3])  # the first three occasions separate


def test_cli_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "sim.csv"
    assert main(["--simulate", "1500", "--seed", "5", "--write", str(path)]) == 0
    out = capsys.readouterr().out
    assert "truth" in out and "log-likelihood" in out and "McFadden" in out
    X, chosen, mask = simulate_choices(1500, seed=5)
    assert main([str(path), "--features", "quality,promo,rating"]) == 0
    coef_line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("price"))
    expected = fit_conditional_logit(X, chosen, mask).coef[-1]  # CSV keeps 6 significant digits
    assert float(coef_line.split()[1]) == pytest.approx(expected, abs=1e-3)
    assert main([str(DATA), "--occasion", "nope"]) == 2


def _interaction_data(n: int, seed: int) -> tuple[np.ndarray, ...]:
    """Utility = user x item interactions - user-specific price sensitivity * price ratio."""
    rng = np.random.default_rng(seed)
    A = np.random.default_rng(99).normal(size=(6, 3))  # same taste map for train and test
    user, items = rng.normal(size=(n, 6)), rng.normal(size=(n, 4, 3))
    price = rng.uniform(0.7, 1.3, (n, 4))
    sens = 2.0 + 1.5 * np.tanh(user[:, :1])
    u = np.einsum("nkf,nf->nk", items, user @ A) - sens * price + rng.gumbel(size=(n, 4))
    return user, items, price, u.argmax(axis=1)


@pytest.mark.slow
def test_nonlinear_beats_linear_and_is_monotone_in_own_price() -> None:
    user, items, price, chosen = _interaction_data(4000, seed=6)
    tu, ti, tp, tc = _interaction_data(1000, seed=7)
    nonlinear = fit_recommend(user, items, price, chosen, epochs=25, batch_size=128)
    linear = fit_recommend(user, items, price, chosen, linear=True)
    ll_nl = choice_loglik(predict_probs(nonlinear, tu, ti, tp), tc)
    ll_lin = choice_loglik(predict_probs(linear, tu, ti, tp), tc)
    assert ll_nl > ll_lin + 100, (ll_nl, ll_lin)
    base = predict_probs(nonlinear, tu[:200], ti[:200], tp[:200])
    for k in range(4):
        dearer = tp[:200].copy()
        dearer[:, k] *= 1.2
        moved = predict_probs(nonlinear, tu[:200], ti[:200], dearer)
        assert np.all(moved[:, k] < base[:, k])
        others = np.delete(np.arange(4), k)
        assert np.all(moved[:, others] >= base[:, others] - 1e-6)  # substitution, never less


@pytest.mark.parametrize("linear", [False, True])
@pytest.mark.slow
def test_tf2onnx_conversion_parity(linear: bool) -> None:
    tf = pytest.importorskip("tensorflow")
    tf2onnx = pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(8)
    model = build_recommend_model(27, 3, linear=linear,
                                  user_stats=(rng.normal(size=27), rng.uniform(1, 4, 27)),
                                  item_stats=(rng.normal(size=3), rng.uniform(1, 4, 3)))
    spec = [tf.TensorSpec([None, 27], tf.float32, name="user"),
            tf.TensorSpec([None, None, 3], tf.float32, name="items"),
            tf.TensorSpec([None, None], tf.float32, name="price_ratio"),
            tf.TensorSpec([None, None], tf.float32, name="mask")]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    assert [i.name for i in proto.graph.input] == ["user", "items", "price_ratio", "mask"]
    assert [o.name for o in proto.graph.output] == ["probs"]
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for k in (3, 7):  # K is dynamic
        feed = {"user": rng.normal(size=(5, 27)), "items": rng.normal(size=(5, k, 3)),
                "price_ratio": rng.uniform(0.5, 1.5, (5, k)), "mask": np.ones((5, k))}
        feed["mask"][:, -1] = 0.0
        feed = {name: v.astype(np.float32) for name, v in feed.items()}
        (onnx_probs,) = sess.run(["probs"], feed)
        np.testing.assert_allclose(onnx_probs, predict_probs(model, **feed), atol=1e-5)
        assert np.all(onnx_probs[:, -1] == 0.0)


def _first_stage(model, items: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    flat = np.asarray(items, np.float32).reshape(-1, items.shape[-1])
    return np.asarray(build_retrieval_model(model)(flat), np.float64).reshape(items.shape[:-1])


def test_first_stage_of_the_linear_model_ranks_exactly_as_it_at_equal_prices(sim: tuple[np.ndarray, ...]) -> None:
    """Linear mode: the first stage is the clogit's item part, so at equal prices its top-m is the
    model's top-m (the shortlist always holds the full model's top-k)."""
    X, chosen, mask = sim
    model = fit_recommend(np.zeros((len(chosen), 5)), X[..., :3], X[..., 3], chosen, mask, linear=True)
    items, ones = X[:500, :, :3], np.ones((500, X.shape[1]))
    probs = predict_probs(model, np.zeros((500, 5)), items, ones)
    first = _first_stage(model, items)
    np.testing.assert_array_equal(np.argsort(-first, 1)[:, :2], np.argsort(-probs, 1)[:, :2])
    np.testing.assert_allclose(first, items @ model.clogit.coef[:3], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_first_stage_is_the_nonlinear_models_item_part_and_scored_on_the_holdout() -> None:
    """Nonlinear mode: the first stage is ``item_linear`` over the standardised items (affine, the
    clogit the MLP starts from); a shortlist as long as the choice set changes nothing, a shorter one
    loses choices here (tastes are pure user x item interactions, which only the MLP sees)."""
    user, items, price, chosen = _interaction_data(3000, seed=6)
    tu, ti, tp, tc = _interaction_data(600, seed=7)
    model = fit_recommend(user, items, price, chosen, epochs=8, batch_size=128)
    first = _first_stage(model, ti)
    x = ti.reshape(-1, ti.shape[-1]).astype(np.float32)
    f = np.asarray(build_retrieval_model(model)(x), np.float64).ravel()
    f0, fa = (np.asarray(build_retrieval_model(model)(v), np.float64).ravel() for v in (0 * x[:1], 2 * x))
    np.testing.assert_allclose(fa - f0, 2 * (f - f0), rtol=1e-4, atol=1e-4)  # affine
    assert first.shape == ti.shape[:-1]
    m = shortlist_metrics(model, tu, ti, tp, np.ones(tp.shape), tc, sizes=(1, 2, 4))
    full = float(np.mean(predict_probs(model, tu, ti, tp).argmax(1) == tc))
    assert m["shortlist4_top1_accuracy"] == pytest.approx(full) and m["shortlist4_chosen_kept"] == 1.0
    assert m["shortlist1_chosen_kept"] <= m["shortlist2_chosen_kept"] <= 1.0
    assert m["shortlist4_favourite_kept"] == 1.0 and m["shortlist1_favourite_kept"] < 1.0
