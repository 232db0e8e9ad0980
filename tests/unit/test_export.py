"""Export: Keras/sklearn -> ONNX parity, the bundle on disk, the loader's refusals, the CLI,
and that serving never imports TensorFlow. Stand-in models have the trainers' exact I/O."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from export.bundle import CURRENT, ITEM_TABLE_FILE, MANIFEST, MODEL_FILES, BundleError, load_bundle, write_bundle
from streams.features import FEATURE_NAMES, ITEM_FEATURE_NAMES, FeatureSpec, feature_names

pytestmark = pytest.mark.slow  # trains or exports models: not in `make test-fast`

convert = pytest.importorskip("export.convert")  # needs the `train` extra (TensorFlow)
keras = pytest.importorskip("keras")

NU, NI, K = len(FEATURE_NAMES), len(ITEM_FEATURE_NAMES), 5  # K: holdout slots; the model's is dynamic
ROOT = Path(__file__).resolve().parents[2]


ITEMS = {"i1": (0.25, 0.1), "i2": (-0.5, -0.3)}  # item_conv_lift, item_log_slope


def _price_model() -> Any:
    u, it, pr = (keras.Input(s, name=n) for s, n in (((NU,), "user"), ((NI,), "item"), ((1,), "price_ratio")))
    norm = keras.layers.Normalization()  # adapted stats are captured tensors, not variables:
    norm.adapt(np.random.default_rng(2).normal(3.0, 2.0, (256, NU)).astype(np.float32))  # must freeze
    h = keras.layers.Dense(16, activation="relu")(keras.layers.Concatenate()([norm(u), it]))
    a = keras.layers.Dense(1, name="a")(h)
    b = keras.layers.Dense(1, activation="softplus", name="b")(h)
    logit = keras.layers.Subtract()([a, keras.layers.Multiply()([b, pr])])
    p = keras.layers.Activation("sigmoid", name="p_buy")(logit)
    return keras.Model({"user": u, "item": it, "price_ratio": pr}, {"p_buy": p, "a": a, "b": b})


def _recommend_model() -> Any:
    """The trainer's nonlinear recommend model, small, with random weights everywhere (so its
    MLP residual is not 0 and its first stage is not the whole model)."""
    from models.recommend import build_recommend_model

    rng = np.random.default_rng(7)
    model = build_recommend_model(NU, NI, linear=False, hidden=8,
                                  item_stats=(rng.normal(size=NI), rng.uniform(0.5, 2.0, NI)))
    for layer in model.layers:
        if layer.name in ("item_linear", "residual", "hidden"):
            layer.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in layer.get_weights()])
    return model


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trainer output directory with tiny stand-ins and a 3,000-row holdout (topped up)."""
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    d = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, NU))
    clf = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, X[:, 0] + X[:, 3] > 0)
    joblib.dump(clf, d / "user_model.joblib")
    _price_model().save(d / "price_model.keras")
    _recommend_model().save(d / "recommend_model.keras")
    n = 3000
    mask = (rng.random((n, K)) < 0.7).astype(np.float32)
    mask[:, 0] = 1
    np.savez(d / "holdout_sample.npz", user=rng.normal(size=(n, NU)), item=rng.normal(size=(n, NI)),
             price_ratio=rng.uniform(0.7, 1.3, n), rec_user=rng.normal(size=(n, NU)),
             rec_items=rng.normal(size=(n, K, NI)), rec_price_ratio=rng.uniform(0.7, 1.3, (n, K)),
             rec_mask=mask)
    (d / "item_table.json").write_text(json.dumps({"features": ["item_conv_lift", "item_log_slope"], "values": ITEMS}))
    (d / "training_summary.json").write_text(json.dumps(
        {"rows": 400, "users": 40, "date_range": ["2024-01-01", "2024-01-31"], "metrics": {"auc": 0.9}}))
    return d


@pytest.fixture(scope="module")
def exported(train_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, dict]:
    from export.__main__ import export_train_dir

    model_dir = tmp_path_factory.mktemp("bundles")
    bundle, parity = export_train_dir(train_dir, model_dir, tol=1e-5, rows=10_000, progress=False)
    return model_dir, bundle, parity


def test_parity_within_tolerance_on_10k_rows(exported: tuple[Path, Any, dict]) -> None:
    _, _, parity = exported
    assert set(parity) == {"user", "price", "recommend", "retrieve"}
    for model, p in parity.items():
        assert p["rows"] >= 10_000
        assert max(p["max_abs_diff"].values()) < 1e-5, model
    assert set(parity["price"]["max_abs_diff"]) == {"p_buy", "a", "b"}


def test_parity_error_when_a_weight_is_tampered(train_dir: Path) -> None:
    model = keras.saving.load_model(train_dir / "price_model.keras")
    proto = convert.keras_to_onnx(model, "price")
    init = next(t for t in proto.graph.initializer if len(t.dims) == 2)
    w = np.frombuffer(init.raw_data, np.float32).copy()
    init.raw_data = (w * 1.01).tobytes()
    inputs = convert.parity_inputs({t.name: tuple(t.shape) for t in model.inputs}, {})
    with pytest.raises(convert.ParityError, match=r"model 'price', output '(p_buy|a|b)'.*max abs diff"):
        convert.check_parity("price", proto, inputs, convert.keras_outputs(model, inputs))


def test_conversion_is_deterministic_in_process(train_dir: Path, exported: tuple[Path, Any, dict]) -> None:
    model = keras.saving.load_model(train_dir / "recommend_model.keras")
    assert convert.keras_to_onnx(model, "recommend").SerializeToString() == exported[1].data["recommend"]


def test_canonical_bytes_do_not_depend_on_node_order(exported: tuple[Path, Any, dict]) -> None:
    import onnx

    proto = onnx.load_from_string(exported[1].data["recommend"])
    nodes, rng = list(proto.graph.node), np.random.default_rng(0)
    made = {i.name for i in proto.graph.input} | {i.name for i in proto.graph.initializer} | {""}
    shuffled = []
    while nodes:  # a random valid topological order, as tf2onnx emits from run to run
        ready = [n for n in nodes if set(n.input) <= made]
        pick = ready[rng.integers(len(ready))]
        nodes.remove(pick)
        shuffled.append(pick)
        made |= set(pick.output)
    other = onnx.ModelProto()
    other.CopyFrom(proto)
    del other.graph.node[:]
    other.graph.node.extend(shuffled)
    assert [n.op_type for n in other.graph.node] != [n.op_type for n in proto.graph.node]
    canon = convert.canonicalize(other, "recommend").SerializeToString()
    assert canon == exported[1].data["recommend"]


def test_manifest_round_trip(exported: tuple[Path, Any, dict]) -> None:
    model_dir, bundle, parity = exported
    again = load_bundle(model_dir)  # through CURRENT
    m = again.manifest
    assert again.version == bundle.version == again.path.name and len(again.version) == 12
    assert m["feature_names"] == list(FEATURE_NAMES) and m["item_feature_names"] == list(ITEM_FEATURE_NAMES)
    assert m["feature_spec"]["windows_s"] == list(FeatureSpec().windows_s) and m["parity"] == parity
    assert m["holdout_metrics"] == {"auc": 0.9} and m["training"]["users"] == 40
    assert m["created_at"].endswith("+00:00")
    rec = m["models"]["recommend"]
    assert [t["name"] for t in rec["inputs"]] == ["user", "items", "price_ratio", "mask"]
    assert rec["inputs"][1] == {"name": "items", "dtype": "float32", "shape": [None, None, NI]}
    assert rec["outputs"] == [{"name": "probs", "dtype": "float32", "shape": [None, None]}]


def test_bundle_is_complete_and_reexport_is_a_noop(exported: tuple[Path, Any, dict]) -> None:
    model_dir, bundle, _ = exported
    version = (model_dir / CURRENT).read_text().strip()
    assert version == bundle.version
    assert sorted(p.name for p in (model_dir / version).iterdir()) == sorted(
        [MANIFEST, ITEM_TABLE_FILE, *MODEL_FILES.values()])
    assert [p.name for p in model_dir.iterdir() if p.name.startswith(".")] == []  # no temp leftovers
    before = (model_dir / version / MANIFEST).read_bytes()
    again = write_bundle(model_dir, bundle.data, item_table=dict(ITEMS), training={"rows": 1})
    assert again.version == version and (model_dir / version / MANIFEST).read_bytes() == before
    assert sorted(p.name for p in model_dir.iterdir()) == sorted([CURRENT, version])


def test_item_table_ships_with_the_bundle(exported: tuple[Path, Any, dict], tmp_path: Path) -> None:
    from streams.scoring import OnnxScorer

    bundle = exported[1]
    assert bundle.item_table == ITEMS and bundle.manifest["item_table"]["items"] == 2
    table = OnnxScorer(bundle).item_table(["i2", "unknown", "i1"])
    assert table.tolist() == [[-0.5, -0.3], [0.0, 0.0], [0.25, 0.1]]  # an item the history did not have is neutral
    other = write_bundle(tmp_path / "m", bundle.data, item_table={"i1": (0.25, 0.2)})
    assert other.version != bundle.version  # the table is part of the content version
    with pytest.raises(BundleError, match="not an item id with 2 finite numbers"):
        write_bundle(tmp_path / "m", bundle.data, item_table={"i1": (0.1, float("nan"))})
    with pytest.raises(BundleError, match="not an item id with 2 finite numbers"):
        write_bundle(tmp_path / "m", bundle.data, item_table={"i1": 0.3})  # type: ignore[dict-item]


def test_an_item_table_from_before_the_slope_column_says_retrain(tmp_path: Path) -> None:
    from export.bundle import parse_item_table

    old = json.dumps({"feature": "item_conv_lift", "values": {"i1": 0.3}}).encode()
    with pytest.raises(BundleError, match="older pricing-train.*retrain"):
        parse_item_table(old, tmp_path / "items.json")


def test_loader_refuses_mismatched_feature_names(exported: tuple[Path, Any, dict]) -> None:
    model_dir = exported[0]
    with pytest.raises(BundleError, match="feature_names do not match.*position 0"):
        load_bundle(model_dir, names=tuple(reversed(FEATURE_NAMES)))
    with pytest.raises(BundleError, match="feature_names do not match"):
        load_bundle(model_dir, spec=FeatureSpec(windows_s=(900.0, 86400.0)))
    n, n1 = len(FEATURE_NAMES), len(feature_names(FeatureSpec(windows_s=(86400.0,))))
    with pytest.raises(BundleError, match=rf"model 'user'.*shape \[None, {n}\].*U={n1}"):
        write_bundle(model_dir / "other", exported[1].data, spec=FeatureSpec(windows_s=(86400.0,)))


def test_loader_refuses_a_bundle_trained_with_another_sums_memory(exported: tuple[Path, Any, dict],
                                                                  tmp_path: Path) -> None:
    """The sums' memory changes feature values, not names: the manifest's spec is checked as well."""
    copy = tmp_path / exported[1].version
    shutil.copytree(exported[1].path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["feature_spec"]["memory_s"] == FeatureSpec().memory_s
    load_bundle(copy)
    for memory in (604800.0, None):  # another memory; a bundle from before memory_s existed
        if memory is None:
            del manifest["feature_spec"]["memory_s"]
        else:
            manifest["feature_spec"]["memory_s"] = memory
        (copy / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(BundleError, match="memory_s = (604800.0 s|absent)"):
            load_bundle(copy)


def test_loader_refuses_a_tampered_file(exported: tuple[Path, Any, dict], tmp_path: Path) -> None:
    copy = tmp_path / exported[1].version
    shutil.copytree(exported[1].path, copy)
    raw = bytearray((copy / "price.onnx").read_bytes())
    raw[-1] ^= 0xFF
    (copy / "price.onnx").write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"price.onnx: sha256 .* does not match"):
        load_bundle(copy)
    shutil.copy(exported[1].path / "price.onnx", copy / "price.onnx")
    (copy / ITEM_TABLE_FILE).write_text(json.dumps({"feature": "item_conv_lift", "values": {"i1": 9.0}}))
    with pytest.raises(BundleError, match=r"items.json: sha256 .* does not match"):
        load_bundle(copy)


def test_serving_imports_no_tensorflow(exported: tuple[Path, Any, dict]) -> None:
    code = f"""
import sys, numpy as np
from export.bundle import load_bundle
from streams.scoring import OnnxScorer

s = OnnxScorer(load_bundle({str(exported[0])!r}))
a, b, p = s.price(np.zeros((4, {NU})), np.zeros((4, {NI})), np.ones(4))
assert p.shape == (4,) and s.recommend(np.zeros((2, {NU})), np.zeros((2, 3, {NI})), np.ones((2, 3)),
                                       np.ones((2, 3))).shape == (2, 3)
heavy = [m for m in ("tensorflow", "keras", "tf2onnx", "skl2onnx", "sklearn") if m in sys.modules]
assert not heavy, heavy
print("ok", s.version)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", exported[1].version]


def test_onnx_scorer_matches_keras(train_dir: Path, exported: tuple[Path, Any, dict]) -> None:
    from streams.scoring import OnnxScorer

    model = keras.saving.load_model(train_dir / "price_model.keras")
    rng = np.random.default_rng(5)
    user, item, pr = rng.normal(size=(64, NU)), rng.normal(size=(64, NI)), rng.uniform(0.8, 1.2, 64)
    a, b, p = OnnxScorer(exported[1]).price(user, item, pr)
    ref = convert.keras_outputs(model, {"user": user, "item": item, "price_ratio": pr[:, None]})
    for got, key in ((a, "a"), (b, "b"), (p, "p_buy")):
        np.testing.assert_allclose(got, ref[key].ravel(), atol=1e-5)


def test_cli_verify_and_parity_failure(exported: tuple[Path, Any, dict], train_dir: Path,
                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from export.__main__ import main

    assert main(["verify", str(exported[0])]) == 0
    assert exported[1].version in capsys.readouterr().out
    code = main(["--train-dir", str(train_dir), "--model-dir", str(tmp_path / "m"), "--tol", "-1",
                 "--no-progress"])
    assert code == 2 and "parity failed for model 'user'" in capsys.readouterr().err
    assert not (tmp_path / "m" / CURRENT).exists()
    assert main(["--train-dir", str(tmp_path / "nope"), "--model-dir", str(tmp_path / "m")]) == 4
    old = tmp_path / "old"  # a training run from before the item table
    shutil.copytree(train_dir, old)
    (old / "item_table.json").unlink()
    capsys.readouterr()
    assert main(["--train-dir", str(old), "--model-dir", str(tmp_path / "m"), "--no-progress"]) == 4
    assert "item_table.json missing" in capsys.readouterr().err
    summary = json.loads((train_dir / "training_summary.json").read_text())
    summary["feature_spec"] = {"windows_s": [3600.0, 86400.0, 604800.0], "n_buckets": 32}  # before memory_s
    shutil.copy(train_dir / "item_table.json", old / "item_table.json")
    (old / "training_summary.json").write_text(json.dumps(summary))
    assert main(["--train-dir", str(old), "--model-dir", str(tmp_path / "m"), "--no-progress"]) == 3
    assert "memory_s = 604800 s" in capsys.readouterr().err


def test_retrieve_is_the_recommend_models_linear_item_part(train_dir: Path, exported: tuple[Path, Any, dict]) -> None:
    """The bundle's first stage scores items as the recommend model's ``item_linear`` term does (up
    to a constant), and the serving scorer accepts it as affine."""
    from streams.scoring import OnnxScorer

    model = keras.saving.load_model(train_dir / "recommend_model.keras")
    rng = np.random.default_rng(8)
    items = rng.normal(size=(32, NI)).astype(np.float32)
    score = OnnxScorer(exported[1]).retrieve(items)
    sub = keras.Model(model.inputs[1],
                      model.get_layer("item_linear").output)
    ref = np.asarray(sub(items[None]), np.float64)[0, :, 0]
    assert score is not None
    np.testing.assert_allclose(score - score[0], ref - ref[0], atol=1e-4)


def test_scorer_refuses_a_first_stage_that_is_not_affine(exported: tuple[Path, Any, dict], tmp_path: Path) -> None:
    """The worker splits the first stage into item and user parts, valid only if it is affine."""
    from streams.scoring import OnnxScorer

    item = keras.Input((NI,), name="item")
    score = keras.layers.Dense(1, name="score")(keras.layers.Dense(4, activation="relu")(item))
    proto = convert.keras_to_onnx(keras.Model(item, score), "retrieve")
    data = dict(exported[1].data) | {"retrieve": proto.SerializeToString()}
    bundle = write_bundle(tmp_path, data, item_table=dict(ITEMS))
    with pytest.raises(BundleError, match="not affine"):
        OnnxScorer(bundle)


def test_bundle_without_a_first_stage_still_loads(exported: tuple[Path, Any, dict], tmp_path: Path) -> None:
    """Bundles exported before the first stage existed have no retrieve model: served, ranking every item."""
    from streams.scoring import OnnxScorer

    data = {k: v for k, v in exported[1].data.items() if k != "retrieve"}
    bundle = load_bundle(write_bundle(tmp_path, data, item_table=dict(ITEMS)).path)
    assert "retrieve" not in bundle.manifest["models"]
    assert OnnxScorer(bundle).retrieve(np.zeros((2, NI))) is None
