"""Scorer port: ONNX adapter == closed form, input checks, padding, hot reload and refusals.

Bundles here are hand-built ONNX graphs of DeterministicScorer's formulas (onnx.helper, no
TensorFlow), so OnnxScorer and DeterministicScorer must agree to float32 precision.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from export.bundle import CURRENT, BundleError, point_current, write_bundle
from streams.features import FEATURE_NAMES, ITEM_FEATURE_NAMES
from streams.scoring import BundleWatcher, DeterministicScorer, OnnxScorer, Scorer

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

NU, NI, K = len(FEATURE_NAMES), len(ITEM_FEATURE_NAMES), 4


def _model(name: str, nodes: list, inputs: dict, outputs: dict, consts: dict) -> bytes:
    vi = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    inits = [numpy_helper.from_array(v if getattr(v, "dtype", None) == np.int64 else np.asarray(v, np.float32), k)
             for k, v in consts.items()]
    graph = helper.make_graph(nodes, name, [vi(k, s) for k, s in inputs.items()],
                              [vi(k, s) for k, s in outputs.items()], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def graphs(shift: float = 0.0) -> dict[str, bytes]:
    """DeterministicScorer as ONNX; ``shift`` is added to ``a`` (a different model version)."""
    n = helper.make_node
    user = _model("user", [
        n("ReduceMean", ["X"], ["m"], axes=[1], keepdims=1), n("Sub", ["m", "one"], ["z"]),
        n("Sigmoid", ["z"], ["p"]), n("Sub", ["one", "p"], ["q"]),
        n("Concat", ["q", "p"], ["probabilities"], axis=1)],
        {"X": ["N", NU]}, {"probabilities": ["N", 2]}, {"one": 1.0})
    price = _model("price", [
        n("ReduceMean", ["user"], ["m"], axes=[1], keepdims=1), n("Tanh", ["m"], ["t"]),
        n("Mul", ["t", "half"], ["ht"]), n("Slice", ["item", "s1", "s2", "ax"], ["aff"]),
        n("Mul", ["aff", "half"], ["haff"]), n("Add", ["ht", "haff"], ["a0"]),
        n("Add", ["a0", "a_const"], ["a"]), n("Add", ["ht", "two"], ["b"]),
        n("Mul", ["b", "price_ratio"], ["bp"]), n("Sub", ["a", "bp"], ["logit"]),
        n("Sigmoid", ["logit"], ["p_buy"])],
        {"user": ["N", NU], "item": ["N", NI], "price_ratio": ["N", 1]},
        {"p_buy": ["N", 1], "a": ["N", 1], "b": ["N", 1]},
        {"half": 0.5, "two": 2.0, "a_const": 1.0 + shift, "s1": np.array([1], np.int64),
         "s2": np.array([2], np.int64), "ax": np.array([1], np.int64)})
    rec = _model("recommend", [
        n("MatMul", ["items", "w"], ["util0"]), n("Mul", ["price_ratio", "two"], ["pr2"]),
        n("Sub", ["util0", "pr2"], ["util"]), n("Sub", ["mask", "one"], ["off"]),
        n("Mul", ["off", "big"], ["pen"]), n("Add", ["util", "pen"], ["logit"]),
        n("Softmax", ["logit"], ["sm"], axis=-1), n("Mul", ["sm", "mask"], ["probs"])],
        {"user": ["N", NU], "items": ["N", K, NI], "price_ratio": ["N", K], "mask": ["N", K]},
        {"probs": ["N", K]}, {"w": DeterministicScorer.W_ITEM, "two": 2.0, "one": 1.0, "big": 1e9})
    return {"user": user, "price": price, "recommend": rec}


def _rows(n: int, k: int = K, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    mask = (rng.random((n, k)) < 0.6).astype(np.float64)
    mask[0] = 0.0  # a row with no real candidate
    return (rng.normal(size=(n, NU)), rng.normal(size=(n, NI)), rng.uniform(0.6, 1.4, n),
            rng.normal(size=(n, k, NI)), rng.uniform(0.6, 1.4, (n, k)), mask)


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    write_bundle(tmp_path, graphs())
    return tmp_path


def test_onnx_scorer_equals_closed_form(model_dir: Path) -> None:
    onnx_s, ref = BundleWatcher(model_dir).scorer, DeterministicScorer()
    assert isinstance(onnx_s, Scorer) and isinstance(ref, Scorer)
    user, item, pr, items, ipr, mask = _rows(256)
    for got, want in zip(onnx_s.price(user, item, pr), ref.price(user, item, pr), strict=True):
        assert got.dtype == np.float64 and got.shape == (256,)
        np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(onnx_s.propensity(user), ref.propensity(user), atol=1e-6)
    probs = onnx_s.recommend(user, items, ipr, mask)
    np.testing.assert_allclose(probs, ref.recommend(user, items, ipr, mask), atol=1e-5)
    assert np.all(probs[mask == 0] == 0) and np.allclose(probs[1:].sum(1)[mask[1:].any(1)], 1, atol=1e-5)


def test_fewer_slots_are_padded_and_bad_shapes_refused(model_dir: Path) -> None:
    s = BundleWatcher(model_dir).scorer
    user, item, pr, items, ipr, mask = _rows(8, k=2)
    np.testing.assert_allclose(s.recommend(user, items, ipr, mask),
                               DeterministicScorer().recommend(user, items, ipr, mask), atol=1e-5)
    with pytest.raises(ValueError, match=rf"user has shape \(8, {len(FEATURE_NAMES) - 1}\), expected \[N, {len(FEATURE_NAMES)}\]"):
        s.price(user[:, 1:], item, pr)
    with pytest.raises(ValueError, match="at most 4"):
        s.recommend(*_rows(2, k=6)[:1], *_rows(2, k=6)[3:])


def test_threads_are_set_deliberately(model_dir: Path) -> None:
    from export.bundle import load_bundle

    scorer = OnnxScorer(load_bundle(model_dir), threads=2)
    opts = scorer._price.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (2, 1)


def test_watcher_swaps_in_a_newer_bundle(model_dir: Path) -> None:
    w = BundleWatcher(model_dir, reload_s=10.0)
    old = w.version
    new = write_bundle(model_dir, graphs(shift=0.5)).version
    assert new != old
    assert w.maybe_reload(now=100.0) is True and w.version == new  # first check is due at once
    assert w.maybe_reload(now=105.0) is False  # checked at most every reload_s
    a_new = w.scorer.price(*_rows(4)[:3])[0]
    np.testing.assert_allclose(a_new - DeterministicScorer().price(*_rows(4)[:3])[0], 0.5, atol=1e-5)


def test_watcher_keeps_the_old_model_on_a_broken_bundle(model_dir: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    w = BundleWatcher(model_dir, reload_s=1.0)
    old, scorer = w.version, w.scorer
    broken = write_bundle(model_dir, graphs(shift=1.0))
    (broken.path / "recommend.onnx").write_bytes(b"not onnx")
    point_current(model_dir, broken.version)
    with caplog.at_level(logging.ERROR, logger="streams.scoring"):
        assert w.maybe_reload(now=0.0) is False and w.maybe_reload(now=5.0) is False
    assert w.scorer is scorer and w.version == old
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and f"rejected model bundle {broken.version}" in errors[0]
    assert "recommend.onnx: sha256" in errors[0] and f"keeping model {old}" in errors[0]


def test_watcher_tries_a_rejected_bundle_again_once_its_files_change(model_dir: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A bundle copied in by hand after CURRENT already named it: rejected while incomplete, loaded once whole."""
    w = BundleWatcher(model_dir, reload_s=1.0)
    old = w.version
    late = write_bundle(model_dir, graphs(shift=0.25))
    whole = (late.path / "price.onnx").read_bytes()
    (late.path / "price.onnx").write_bytes(whole[: len(whole) // 2])  # the copy is half way
    point_current(model_dir, late.version)
    with caplog.at_level(logging.ERROR, logger="streams.scoring"):
        assert w.maybe_reload(now=0.0) is False and w.maybe_reload(now=5.0) is False
    assert w.version == old and len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    (late.path / "price.onnx").write_bytes(whole)  # the copy completes
    assert w.maybe_reload(now=10.0) is True and w.version == late.version


def test_watcher_start_without_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no CURRENT file"):
        BundleWatcher(tmp_path)
    w = BundleWatcher(tmp_path, fallback=DeterministicScorer())
    assert w.version == "deterministic" and not (tmp_path / CURRENT).exists()
    write_bundle(tmp_path, graphs())
    assert w.maybe_reload(now=0.0) and w.version != "deterministic"


def test_uniform_table_is_shipped_hashed_and_verified(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """uniform.json: its own file, in the version hash, checked on load; a bundle without it (exported
    before the uniform arm) keeps its version, loads, logs it, and prices every item at base."""
    import json

    from export.bundle import UNIFORM_FILE, load_bundle

    with caplog.at_level(logging.INFO, logger="export.bundle"):
        old = write_bundle(tmp_path / "old", graphs())
    assert old.uniform is None and not (old.path / UNIFORM_FILE).exists()
    assert any("no uniform.json" in r.getMessage() and "base price" in r.getMessage() for r in caplog.records)
    assert OnnxScorer(old).uniform_ratio(["i1", "i2"]).tolist() == [1.0, 1.0]
    new = write_bundle(tmp_path / "new", graphs(), uniform={"i1": 0.9, "i2": 1.05})
    other = write_bundle(tmp_path / "other", graphs(), uniform={"i1": 0.91, "i2": 1.05})
    assert len({old.version, new.version, other.version}) == 3  # the table is in the version
    assert OnnxScorer(load_bundle(new.path)).uniform_ratio(["i1", "i2", "unknown"]).tolist() == [0.9, 1.05, 1.0]
    assert json.loads((new.path / "manifest.json").read_text())["uniform"]["items"] == 2
    (new.path / UNIFORM_FILE).write_text((new.path / UNIFORM_FILE).read_text().replace("0.9", "0.5"))
    with pytest.raises(BundleError, match="uniform.json: sha256"):
        load_bundle(new.path)
    with pytest.raises(BundleError, match="positive finite"):
        write_bundle(tmp_path / "bad", graphs(), uniform={"i1": 0.0})


def test_deterministic_scorer_uniform_ratio() -> None:
    s = DeterministicScorer(uniform={"a": 0.9})
    assert s.uniform_ratio(["a", "b"]).tolist() == [0.9, 1.0]
