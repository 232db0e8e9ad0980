"""Scoring cost per row vs batch size: OnnxScorer (1 and 2 intra-op threads) beside numpy.

    python bench/bench_scoring.py                      # builds a stand-in bundle first
    python bench/bench_scoring.py --model-dir DIR      # times an exported bundle

The stand-in bundle is built in a *subprocess* from the real model builders (untrained
weights; cost does not depend on weight values), so the timing process imports only
onnxruntime and numpy, as serving does. The numpy baseline re-implements the user model
(standardise + dot + sigmoid), the one model where that is easy.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BATCHES = (1, 8, 32, 128, 512)


def build(model_dir: Path) -> None:
    """Convert untrained real-architecture models into a bundle; save the logistic params."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from export import convert
    from export.bundle import write_bundle
    from models.price_model import build_price_model
    from models.recommend import build_recommend_model
    from streams.features import FEATURE_NAMES, ITEM_FEATURE_NAMES

    nu, ni = len(FEATURE_NAMES), len(ITEM_FEATURE_NAMES)
    rng = np.random.default_rng(0)
    user, item = rng.normal(size=(2000, nu)).astype(np.float32), rng.normal(size=(2000, ni)).astype(np.float32)
    clf = make_pipeline(StandardScaler(), LogisticRegression()).fit(user, user[:, 0] > 0)
    data = {"user": convert.sklearn_to_onnx(clf, nu).SerializeToString(),
            "price": convert.keras_to_onnx(build_price_model(user, item), "price").SerializeToString(),
            "recommend": convert.keras_to_onnx(build_recommend_model(nu, ni, linear=False),
                                               "recommend").SerializeToString()}
    write_bundle(model_dir, data)
    sc, lr = clf.steps[0][1], clf.steps[-1][1]
    np.savez(model_dir / "logistic.npz", mean=sc.mean_, scale=sc.scale_, coef=lr.coef_[0],
             intercept=lr.intercept_)


def numpy_logistic(u: np.ndarray, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray,
                   intercept: np.ndarray) -> np.ndarray:
    """The user model by hand: P(class 1) of StandardScaler + LogisticRegression."""
    return 1.0 / (1.0 + np.exp(-(((u - mean) / scale) @ coef + intercept)))


def per_row_us(fn: Callable[[], object], rows: int, budget_s: float = 0.25) -> float:
    """Median over 5 rounds of the mean time per call (each round ~budget_s / 5), per row."""
    fn()
    t0 = time.perf_counter()
    fn()
    reps = max(1, int(budget_s / 5 / max(time.perf_counter() - t0, 1e-7)))
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        rounds.append((time.perf_counter() - t0) / reps)
    return float(np.median(rounds)) * 1e6 / rows


def main() -> None:
    """Parse arguments, build a stand-in bundle if needed, print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, help="bundle dir or model dir with CURRENT")
    ap.add_argument("--build-into", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, default=16, help="candidate slots for recommend (default 16)")
    args = ap.parse_args()
    if args.build_into:
        build(args.build_into)
        return
    tmp = None
    if args.model_dir is None:
        tmp = tempfile.TemporaryDirectory()
        args.model_dir = Path(tmp.name)
        subprocess.run([sys.executable, __file__, "--build-into", tmp.name], check=True,
                       stderr=subprocess.DEVNULL)
    from export.bundle import load_bundle
    from streams.scoring import OnnxScorer

    bundle = load_bundle(args.model_dir)
    s1, s2 = OnnxScorer(bundle, threads=1), OnnxScorer(bundle, threads=2)
    assert "tensorflow" not in sys.modules
    lg = np.load(bundle.path.parent / "logistic.npz") if (bundle.path.parent / "logistic.npz").exists() else None
    nu, ni, k = len(bundle.feature_names), len(bundle.item_feature_names), args.k
    rng = np.random.default_rng(1)
    if lg is not None:  # the baseline must compute the same thing
        u = rng.normal(size=(64, nu)).astype(np.float32)
        np.testing.assert_allclose(numpy_logistic(u, *(lg[x] for x in ("mean", "scale", "coef", "intercept"))),
                                   s1.propensity(u), atol=1e-5)
    print(f"bundle {bundle.version}; us per row (median of 5); recommend K={k}; "
          f"numpy logistic = standardise + dot + sigmoid")
    head = ["batch", "price t1", "price t2", "price t1 /call", "recommend t1", "propensity t1", "numpy logistic"]
    print(" | ".join(f"{h:>14}" for h in head))
    for n in BATCHES:
        u, it = rng.normal(size=(n, nu)).astype(np.float32), rng.normal(size=(n, ni)).astype(np.float32)
        pr = rng.uniform(0.7, 1.3, n).astype(np.float32)
        items, ipr = rng.normal(size=(n, k, ni)).astype(np.float32), np.ones((n, k), np.float32)
        row = [per_row_us(partial(s.price, u, it, pr), n) for s in (s1, s2)]
        row.append(row[0] * n)
        row.append(per_row_us(partial(s1.recommend, u, items, ipr, ipr), n))
        row.append(per_row_us(partial(s1.propensity, u), n))
        if lg is not None:
            params = (lg[x] for x in ("mean", "scale", "coef", "intercept"))
            row.append(per_row_us(partial(numpy_logistic, u, *params), n))
        else:  # an exported bundle: the logistic's parameters are not at hand
            row.append(float("nan"))
        print(" | ".join([f"{n:>14}"] + [f"{v:>14.2f}" for v in row]))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
