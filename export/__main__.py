"""``python -m export``: convert a training run to a verified ONNX bundle, or verify a bundle.

    python -m export --train-dir runs/2024-06-01 --model-dir models/bundles
    python -m export verify models/bundles            # the CURRENT bundle
    python -m export verify models/bundles/3f2a9c0d1e4b

Exit codes: 0 ok, 2 parity failure, 3 bundle/contract error, 4 missing or unreadable input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from streams.features import FeatureSpec, feature_names
from streams.version import add_version

from .bundle import (
    MODEL_FILES,
    UNIFORM_FILE,
    Bundle,
    BundleError,
    load_bundle,
    parse_item_table,
    parse_uniform,
    write_bundle,
)

# Holdout keys in holdout_sample.npz for each model's inputs.
HOLDOUT_KEYS = {
    "user": {"X": "user"},
    "price": {"user": "user", "item": "item", "price_ratio": "price_ratio"},
    "recommend": {"user": "rec_user", "items": "rec_items", "price_ratio": "rec_price_ratio",
                  "mask": "rec_mask"},
    "retrieve": {"item": "item"},  # the price model's (user, item) rows: real item features
}


def _spec(summary: dict[str, Any]) -> FeatureSpec:
    """The FeatureSpec recorded by the trainer (``feature_spec`` in the summary), else default."""
    raw = summary.get("feature_spec") or {}
    kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    if raw and "memory_s" not in raw:  # trained before the sums had a memory of their own: the longest window
        kwargs["memory_s"] = max(kwargs.get("windows_s", FeatureSpec().windows_s))
    return FeatureSpec(**kwargs)


def export_train_dir(train_dir: Path, model_dir: Path, *, tol: float, rows: int,
                     progress: bool = True) -> tuple[Bundle, dict[str, Any]]:
    """Load the three trained models, convert, check parity, write the bundle (with the recommend
    model's first stage, ``retrieve``, cut out of the recommend model).

    Returns the bundle and parity figures per model; raises ``ParityError`` or ``BundleError``.
    """
    import joblib
    import keras

    from . import convert  # heavy imports only on this path: `verify` stays TensorFlow-free

    summary = json.loads((train_dir / "training_summary.json").read_text())
    spec = _spec(summary)
    if spec.memory_s != FeatureSpec().memory_s:
        raise BundleError(f"{train_dir}: trained on features whose sums decay with memory_s = {spec.memory_s:g} s; "
                          f"this version's worker computes them with {FeatureSpec().memory_s:g} s: retrain")
    npz = train_dir / "holdout_sample.npz"
    sample = dict(np.load(npz)) if npz.exists() else {}
    steps = tqdm(list(MODEL_FILES), desc="export", unit="model", disable=not progress)
    data: dict[str, bytes] = {}
    parity: dict[str, Any] = {}
    for name in steps:
        steps.set_postfix_str(name)
        if name == "user":
            est = joblib.load(train_dir / "user_model.joblib")
            shapes: dict[str, tuple[int | None, ...]] = {"X": (None, len(feature_names(spec)))}
            proto = convert.sklearn_to_onnx(est, len(feature_names(spec)))
            inputs = convert.parity_inputs(shapes, _holdout(sample, name), rows)
            ref = convert.sklearn_outputs(est, inputs["X"])
        else:
            if name == "retrieve":
                from models.recommend import build_retrieval_model

                model = build_retrieval_model(keras.saving.load_model(train_dir / "recommend_model.keras",
                                                                      compile=False))
            else:
                model = keras.saving.load_model(train_dir / f"{name}_model.keras", compile=False)
            shapes = {t.name: tuple(t.shape) for t in model.inputs}
            proto = convert.keras_to_onnx(model, name)
            inputs = convert.parity_inputs(shapes, _holdout(sample, name), rows)
            ref = convert.keras_outputs(model, inputs)
        data[name] = proto.SerializeToString()
        parity[name] = convert.check_parity(name, data[name], inputs, ref, tol).as_dict()
    bundle = write_bundle(model_dir, data, item_table=_item_table(train_dir), uniform=_uniform(train_dir), spec=spec,
                          training=summary, parity=parity)
    return bundle, parity


def _item_table(train_dir: Path) -> dict[str, tuple[float, ...]]:
    """The item table training wrote (``item_table.json``)."""
    path = train_dir / "item_table.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: a training run of this version writes it")
    return parse_item_table(path.read_bytes(), path)


def _uniform(train_dir: Path) -> dict[str, float] | None:
    """The uniform arm's price ratios training wrote (``uniform.json``); None for a training run from
    before the uniform arm (the bundle then has none, and serving prices that arm at base)."""
    path = train_dir / UNIFORM_FILE
    if not path.exists():
        print(f"note: {path} missing (a training run from before the uniform arm): the bundle has no uniform "
              "table, the uniform arm will show the base price", file=sys.stderr)
        return None
    return parse_uniform(path.read_bytes(), path)


def _holdout(sample: dict[str, np.ndarray], model: str) -> dict[str, np.ndarray]:
    return {inp: sample[key] for inp, key in HOLDOUT_KEYS[model].items() if key in sample}


def parity_table(parity: dict[str, Any]) -> str:
    """Fixed-width table: model, output, rows, max abs diff, tolerance."""
    lines = [f"{'model':<10} {'output':<14} {'rows':>7} {'max_abs_diff':>13} {'tol':>7}"]
    for model, p in parity.items():
        for out, diff in p["max_abs_diff"].items():
            lines.append(f"{model:<10} {out:<14} {p['rows']:>7} {diff:>13.3e} {p['tol']:>7.0e}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pricing-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version(p)
    sub = p.add_subparsers(dest="command")
    e = sub.add_parser("export", help="convert a training dir to a bundle (default command)")
    e.add_argument("--train-dir", type=Path, required=True, help="trainer output directory")
    e.add_argument("--model-dir", type=Path, required=True, help="bundle root (holds CURRENT)")
    e.add_argument("--tol", type=float, default=1e-5, help="max abs diff allowed (default 1e-5)")
    e.add_argument("--rows", type=int, default=10_000, help="min parity rows (default 10000)")
    e.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    v = sub.add_parser("verify", help="verify a bundle dir, or the CURRENT one under a model dir")
    v.add_argument("bundle", type=Path)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] not in ("export", "verify", "-h", "--help", "--version"):
        args_list.insert(0, "export")  # `python -m export --train-dir ...` is the default
    args = _parser().parse_args(args_list)
    if args.command is None:
        _parser().print_help()
        return 0
    try:
        if args.command == "verify":
            bundle = load_bundle(args.bundle)
            print(f"ok: bundle {bundle.version} at {bundle.path}")
            print(parity_table(bundle.manifest.get("parity", {})))
            return 0
        from .convert import ParityError

        try:
            bundle, parity = export_train_dir(args.train_dir, args.model_dir, tol=args.tol,
                                              rows=args.rows, progress=not args.no_progress)
        except ParityError as exc:
            print(f"error: {exc}; no bundle written", file=sys.stderr)
            return 2
        print(parity_table(parity))
        print(f"bundle {bundle.version} at {bundle.path} (CURRENT -> {bundle.version})")
        return 0
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (OSError, ValueError) as exc:
        print(f"error: {args.command}: {exc}", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(main())
