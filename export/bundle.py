"""The model bundle: ONNX files plus a manifest, written atomically and loaded with checks.

Layout::

    <model_dir>/CURRENT                 one line: the live version (replaced atomically)
    <model_dir>/<version>/manifest.json version, created_at, feature names + spec, models, parity
    <model_dir>/<version>/user.onnx     X [N,U] -> probabilities [N,2]
    <model_dir>/<version>/price.onnx    user, item, price_ratio [N,1] -> p_buy, a, b [N,1]
                                        (+ t_var, t_noise_var, t_signal_var [N,1], optional: the ensemble's
                                        spread for the uncertainty guard; bundles without them price unguarded)
    <model_dir>/<version>/recommend.onnx user, items [N,K,I], price_ratio, mask [N,K] -> probs [N,K]
    <model_dir>/<version>/retrieve.onnx item [N,I] -> score [N,1]   (optional: the recommend model's
                                        first stage, affine in item; bundles without it rank every item)
    <model_dir>/<version>/items.json    the item table: {"features": [...], "values": {item_id: [values]}}
    <model_dir>/<version>/uniform.json  the uniform arm's price ratio per item (optional: bundles exported
                                        before the uniform arm lack it, and price that arm at base)

The item table holds, per item, statistics of the training history that are item features
(``ITEM_TABLE_FEATURES``: ``item_conv_lift``, :func:`models.dataset.item_conv_lift`, and
``item_log_slope``, :mod:`models.elasticity`); an item it does not list gets 0s, the neutral values.
``uniform.json`` (:mod:`models.uniform`) maps item id -> price / base of the one price per item the
``uniform`` arm shows; an item it does not list gets 1 (the base price).
``version`` is a content hash (ONNX bytes + item table + uniform table, if any, + feature names), so
re-exporting identical models is a no-op. Imports only onnxruntime, the standard library and ``streams.features``: the
serving process loads bundles without TensorFlow (or even numpy, until it scores).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnxruntime as ort

from streams.features import FEATURE_NAMES, ITEM_FEATURE_NAMES, ITEM_TABLE_FEATURES, FeatureSpec, feature_names

FORMAT = 1
MANIFEST, CURRENT = "manifest.json", "CURRENT"
MODEL_FILES = {"user": "user.onnx", "price": "price.onnx", "recommend": "recommend.onnx",
               "retrieve": "retrieve.onnx"}
OPTIONAL_MODELS = frozenset({"retrieve"})  # bundles exported before the first stage existed lack it
ITEM_TABLE_FILE = "items.json"
ItemRow = tuple[float, ...]  # one item's ITEM_TABLE_FEATURES
UNIFORM_FILE, UNIFORM_FEATURE = "uniform.json", "uniform_price_ratio"
log = logging.getLogger(__name__)
# Per model: contract inputs (exactly these) and outputs (at least these). Dims: "N" dynamic
# batch, "U"/"I" user/item feature counts, "K" candidate slots (same everywhere in the model).
CONTRACT: dict[str, tuple[dict[str, tuple[Any, ...]], dict[str, tuple[Any, ...]]]] = {
    "user": ({"X": ("N", "U")}, {"probabilities": ("N", 2)}),
    "price": ({"user": ("N", "U"), "item": ("N", "I"), "price_ratio": ("N", 1)},
              {"p_buy": ("N", 1), "a": ("N", 1), "b": ("N", 1)}),
    "recommend": ({"user": ("N", "U"), "items": ("N", "K", "I"), "price_ratio": ("N", "K"),
                   "mask": ("N", "K")}, {"probs": ("N", "K")}),
    "retrieve": ({"item": ("N", "I")}, {"score": ("N", 1)}),
}
# Optional outputs: absent in bundles exported before them; where present they must have these dims.
OPTIONAL_OUTPUTS: dict[str, dict[str, tuple[Any, ...]]] = {
    "price": {"t_var": ("N", 1), "t_noise_var": ("N", 1), "t_signal_var": ("N", 1)},
}

_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(int64)": "int64"}


class BundleError(RuntimeError):
    """A bundle that is missing, incomplete, tampered with or does not fit the contract."""


def session_options(threads: int = 1) -> ort.SessionOptions:
    """Deliberate threading: ``threads`` intra-op, one inter-op, sequential execution."""
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


def make_session(data: bytes, threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session over serialized ONNX bytes."""
    return ort.InferenceSession(data, session_options(threads), providers=["CPUExecutionProvider"])


def _tensors(infos: Sequence[Any]) -> list[dict[str, Any]]:
    """Names, shapes (symbolic dims as None) and dtypes of session inputs/outputs."""
    return [{"name": t.name, "dtype": _DTYPES.get(t.type, t.type),
             "shape": [d if isinstance(d, int) else None for d in t.shape]} for t in infos]


def describe(sess: ort.InferenceSession) -> dict[str, list[dict[str, Any]]]:
    """The manifest view of a session's graph signature."""
    return {"inputs": _tensors(sess.get_inputs()), "outputs": _tensors(sess.get_outputs())}


def check_contract(name: str, sig: Mapping[str, list[dict[str, Any]]], n_user: int, n_item: int) -> None:
    """Raise :class:`BundleError` unless ``sig`` satisfies :data:`CONTRACT` for ``name``."""
    want_in, want_out = CONTRACT[name]
    ins = {t["name"]: t for t in sig["inputs"]}
    outs = {t["name"]: t for t in sig["outputs"]}
    if set(ins) != set(want_in):
        raise BundleError(f"model {name!r}: inputs {sorted(ins)} are not the contract's {sorted(want_in)}")
    if missing := set(want_out) - set(outs):
        raise BundleError(f"model {name!r}: outputs {sorted(missing)} missing (has {sorted(outs)})")
    sizes: dict[str, Any] = {"N": None, "U": n_user, "I": n_item}
    optional = [(k, v) for k, v in OPTIONAL_OUTPUTS.get(name, {}).items() if k in outs]
    for tname, dims in [*want_in.items(), *want_out.items(), *optional]:
        t = ins.get(tname) or outs[tname]
        if t["dtype"] != "float32" or len(t["shape"]) != len(dims):
            raise BundleError(f"model {name!r}: {tname} is {t['dtype']}{t['shape']}, contract "
                              f"wants float32 with dims {list(dims)}")
        for got, want in zip(t["shape"], dims, strict=True):
            expect = sizes.setdefault(want, got) if isinstance(want, str) else want
            if got != expect:
                raise BundleError(f"model {name!r}: {tname} has shape {t['shape']}, contract "
                                  f"wants {list(dims)} with U={n_user}, I={n_item}, K={sizes.get('K')}")


def bundle_version(data: Mapping[str, bytes], names: Sequence[str], item_names: Sequence[str],
                   item_table: bytes = b"", uniform: bytes | None = None) -> str:
    """Content hash: sha256 over each model's name and bytes, the item table bytes, the uniform
    table's (only when there is one, so bundles from before it keep their version) and the feature
    names, 12 hex."""
    h = hashlib.sha256()
    for model in sorted(data):
        h.update(model.encode() + b"\0" + hashlib.sha256(data[model]).digest())
    h.update(b"items\0" + hashlib.sha256(item_table).digest())
    if uniform is not None:
        h.update(b"uniform\0" + hashlib.sha256(uniform).digest())
    h.update(json.dumps([list(names), list(item_names)]).encode())
    return h.hexdigest()[:12]


def _row(k: object, v: object) -> ItemRow:
    """One item's values, checked: a str id and one finite number per ``ITEM_TABLE_FEATURES``."""
    ok = (isinstance(k, str) and isinstance(v, (list, tuple)) and len(v) == len(ITEM_TABLE_FEATURES)
          and all(isinstance(x, (int, float)) and x == x and abs(x) != float("inf") for x in v))
    if not ok:
        raise BundleError(f"item table: {k!r} -> {v!r} is not an item id with {len(ITEM_TABLE_FEATURES)} finite "
                          f"numbers ({', '.join(ITEM_TABLE_FEATURES)})")
    return tuple(float(x) for x in v)  # type: ignore[attr-defined,union-attr]


def item_table_bytes(values: Mapping[str, Sequence[float]]) -> bytes:
    """The item table file for ``values`` (item id -> its ``ITEM_TABLE_FEATURES``), keys sorted."""
    rows = {k: _row(k, v) for k, v in values.items()}
    return json.dumps({"features": list(ITEM_TABLE_FEATURES), "values": {k: list(rows[k]) for k in sorted(rows)}},
                      separators=(",", ":")).encode()


def parse_item_table(raw: bytes, where: Path) -> dict[str, ItemRow]:
    """Inverse of :func:`item_table_bytes`; :class:`BundleError` naming ``where`` if it is not one."""
    try:
        obj = json.loads(raw)
        values = obj["values"]
        if obj.get("features") != list(ITEM_TABLE_FEATURES) or not isinstance(values, dict):
            got = obj.get("features", obj.get("feature"))
            raise ValueError(f"features {got!r} are not {list(ITEM_TABLE_FEATURES)!r} (written by an older "
                             "pricing-train? retrain), or no values")
        return {str(k): _row(str(k), v) for k, v in values.items()}
    except (ValueError, KeyError, TypeError, AttributeError, BundleError) as exc:
        raise BundleError(f"{where}: not an item table: {exc}") from exc


def uniform_bytes(values: Mapping[str, float], **info: Any) -> bytes:
    """The uniform table file: ``{"feature": "uniform_price_ratio", "values": {item_id: ratio}, **info}``,
    keys sorted; every ratio a positive finite number."""
    for k, v in values.items():
        if not isinstance(k, str) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise BundleError(f"uniform table: {k!r} -> {v!r} is not an item id with a positive finite ratio")
    return json.dumps({"feature": UNIFORM_FEATURE, **info, "values": {k: round(float(values[k]), 6)
                                                                       for k in sorted(values)}},
                      separators=(",", ":")).encode()


def parse_uniform(raw: bytes, where: Path) -> dict[str, float]:
    """Inverse of :func:`uniform_bytes`; :class:`BundleError` naming ``where`` if it is not one."""
    try:
        obj = json.loads(raw)
        values = obj["values"]
        if obj.get("feature") != UNIFORM_FEATURE or not isinstance(values, dict):
            raise ValueError(f"feature {obj.get('feature')!r} is not {UNIFORM_FEATURE!r}, or no values")
        out = {str(k): float(v) for k, v in values.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BundleError(f"{where}: not a uniform table: {exc}") from exc
    if bad := [k for k, v in out.items() if not (math.isfinite(v) and v > 0)]:
        raise BundleError(f"{where}: uniform ratio of {bad[0]!r} is {out[bad[0]]!r}, not positive and finite")
    return out


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its directory, manifest and the exact ONNX bytes that were checked."""

    path: Path
    manifest: dict[str, Any]
    data: Mapping[str, bytes]
    item_table: Mapping[str, ItemRow] = field(default_factory=dict)  # item id -> its ITEM_TABLE_FEATURES
    uniform: Mapping[str, float] | None = None  # item id -> uniform price ratio; None: a bundle without one
    _sessions: dict[tuple[str, int], ort.InferenceSession] = field(default_factory=dict, repr=False)

    @property
    def version(self) -> str:
        """Content-hash version (also the directory name)."""
        return str(self.manifest["version"])

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Ordered user-feature names the models expect."""
        return tuple(self.manifest["feature_names"])

    @property
    def item_feature_names(self) -> tuple[str, ...]:
        """Ordered item-feature names the models expect."""
        return tuple(self.manifest["item_feature_names"])

    def session(self, model: str, threads: int = 1) -> ort.InferenceSession:
        """A (cached) session for ``model`` with ``threads`` intra-op threads."""
        key = (model, threads)
        if key not in self._sessions:
            self._sessions[key] = make_session(self.data[model], threads)
        return self._sessions[key]


def _verify(data: Mapping[str, bytes], n_user: int, n_item: int) -> tuple[dict[str, Any], dict[tuple[str, int], Any]]:
    """Open each model, check it against the contract; return signatures and sessions."""
    sigs, sessions = {}, {}
    for model in MODEL_FILES:
        if model not in data:
            if model in OPTIONAL_MODELS:
                continue
            raise BundleError(f"model {model!r} missing from the bundle")
        try:
            sess = make_session(data[model])
        except Exception as exc:  # onnxruntime raises several untyped errors on bad graphs
            raise BundleError(f"model {model!r}: onnxruntime cannot load it: {exc}") from exc
        sigs[model] = describe(sess)
        check_contract(model, sigs[model], n_user, n_item)
        sessions[(model, 1)] = sess
    return sigs, sessions


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_current(model_dir: str | os.PathLike[str]) -> str | None:
    """The version named by ``<model_dir>/CURRENT``, or None if there is none yet."""
    try:
        version = (Path(model_dir) / CURRENT).read_text().strip()
    except FileNotFoundError:
        return None
    if not version or "/" in version or version.startswith("."):
        raise BundleError(f"{Path(model_dir) / CURRENT} holds {version!r}, not a version name")
    return version


def point_current(model_dir: str | os.PathLike[str], version: str) -> None:
    """Atomically make ``version`` the live bundle (temp file + fsync + os.replace)."""
    fd, tmp = tempfile.mkstemp(prefix=".CURRENT-", dir=model_dir)
    os.close(fd)
    os.chmod(tmp, 0o644)
    _fsync_write(Path(tmp), f"{version}\n".encode())
    os.replace(tmp, Path(model_dir) / CURRENT)
    _fsync_dir(Path(model_dir))


def _fsync_dir(path: Path) -> None:
    """Persist renames in ``path`` (directory entries) across a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bundle(model_dir: str | os.PathLike[str], data: Mapping[str, bytes], *,
                 item_table: Mapping[str, Sequence[float]] | None = None,
                 uniform: Mapping[str, float] | None = None, spec: FeatureSpec | None = None,
                 training: Mapping[str, Any] | None = None, parity: Mapping[str, Any] | None = None,
                 now: datetime | None = None) -> Bundle:
    """Verify ``data`` (model -> ONNX bytes), write ``<model_dir>/<version>/`` with ``item_table``
    (item id -> its ``ITEM_TABLE_FEATURES``; none = every item neutral) and ``uniform`` (item id ->
    uniform price ratio; None = no uniform table, that arm priced at base) atomically and point CURRENT
    at it. An existing, valid bundle of the same version is reused as is."""
    root, spec = Path(model_dir), spec or FeatureSpec()
    root.mkdir(parents=True, exist_ok=True)
    names = feature_names(spec)
    sigs, _ = _verify(data, len(names), len(ITEM_FEATURE_NAMES))
    items = item_table_bytes(item_table or {})
    uni = uniform_bytes(uniform) if uniform is not None else None
    version = bundle_version(data, names, ITEM_FEATURE_NAMES, items, uni)
    if not (root / version).exists():
        training = dict(training or {})
        manifest = {
            "format": FORMAT, "version": version,
            "created_at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
            "feature_names": list(names), "item_feature_names": list(ITEM_FEATURE_NAMES),
            "feature_spec": asdict(spec), "onnxruntime": ort.__version__,
            "models": {m: {"file": f, "sha256": hashlib.sha256(data[m]).hexdigest(), **sigs[m]}
                       for m, f in MODEL_FILES.items() if m in data},
            "item_table": {"file": ITEM_TABLE_FILE, "sha256": hashlib.sha256(items).hexdigest(),
                           "features": list(ITEM_TABLE_FEATURES), "items": len(item_table or {})},
            **({"uniform": {"file": UNIFORM_FILE, "sha256": hashlib.sha256(uni).hexdigest(),
                            "feature": UNIFORM_FEATURE, "items": len(uniform or {})}} if uni is not None else {}),
            "training": training, "holdout_metrics": training.get("metrics", {}),
            "parity": dict(parity or {}),
        }
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
        try:
            os.chmod(tmp, 0o755)  # mkdtemp makes 0700; serving may run as another user
            for m, f in MODEL_FILES.items():
                if m in data:
                    _fsync_write(tmp / f, data[m])
            _fsync_write(tmp / ITEM_TABLE_FILE, items)
            if uni is not None:
                _fsync_write(tmp / UNIFORM_FILE, uni)
            _fsync_write(tmp / MANIFEST, json.dumps(manifest, indent=2, default=str).encode())
            os.rename(tmp, root / version)  # the version dir appears complete or not at all
        except OSError:
            if not (root / version).exists():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # only left if a concurrent writer won
    bundle = load_bundle(root / version, spec=spec)
    point_current(root, version)
    return bundle


def _resolve(path: Path) -> Path:
    if (path / MANIFEST).exists():
        return path
    version = read_current(path)
    if version is None:
        raise BundleError(f"no bundle at {path}: neither {MANIFEST} nor {CURRENT} found")
    return path / version


def _names_error(kind: str, got: Sequence[str], want: Sequence[str]) -> BundleError:
    i = next((k for k, (g, w) in enumerate(zip(got, want, strict=False)) if g != w), min(len(got), len(want)))
    return BundleError(f"bundle {kind} do not match the serving contract: bundle has {len(got)}, "
                       f"expected {len(want)}; first difference at position {i}: "
                       f"{got[i] if i < len(got) else None!r} vs {want[i] if i < len(want) else None!r}")


def load_bundle(path: str | os.PathLike[str], *, spec: FeatureSpec | None = None,
                names: Sequence[str] | None = None,
                item_names: Sequence[str] = ITEM_FEATURE_NAMES) -> Bundle:
    """Load a bundle directory (or the CURRENT one under a model dir) and verify it completely:
    feature names, file hashes, content version, graph signatures vs manifest and contract."""
    bdir = _resolve(Path(path))
    try:
        manifest = json.loads((bdir / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{bdir / MANIFEST}: unreadable manifest: {exc}") from exc
    want = tuple(names if names is not None else feature_names(spec) if spec else FEATURE_NAMES)
    if (got := tuple(manifest.get("feature_names", ()))) != want:
        raise _names_error("feature_names", got, want)
    if (got := tuple(manifest.get("item_feature_names", ()))) != tuple(item_names):
        raise _names_error("item_feature_names", got, tuple(item_names))
    # the names cover the windows and the buckets; the sums' memory changes values, not names
    memory, want_memory = (manifest.get("feature_spec") or {}).get("memory_s"), (spec or FeatureSpec()).memory_s
    if memory != want_memory:
        trained = "absent (a bundle from before it existed: 7 days)" if memory is None else f"{memory} s"
        raise BundleError(f"{bdir}: the models were trained on features whose sums decay with memory_s = {trained}; "
                          f"this code computes them with {want_memory:g} s: train and export a bundle with "
                          f"this version")
    data = {model: _read_listed(bdir, entry, f"model {model!r} file")
            for model, entry in manifest.get("models", {}).items()}
    items = _read_listed(bdir, manifest.get("item_table"), "item table")
    uni = _read_listed(bdir, manifest["uniform"], "uniform table") if manifest.get("uniform") else None
    if (version := bundle_version(data, want, item_names, items, uni)) != manifest.get("version"):
        raise BundleError(f"{bdir}: content version {version} != manifest version {manifest.get('version')}")
    sigs, sessions = _verify(data, len(want), len(item_names))
    for model, sig in sigs.items():
        listed = {k: manifest["models"][model].get(k) for k in ("inputs", "outputs")}
        if listed != sig:
            raise BundleError(f"{bdir}: model {model!r} graph signature {sig} differs from manifest {listed}")
    if uni is None:
        log.info("bundle %s has no %s (exported before the uniform arm): the uniform arm shows the base price",
                 manifest.get("version"), UNIFORM_FILE)
    uniform = parse_uniform(uni, bdir / manifest["uniform"]["file"]) if uni is not None else None
    return Bundle(bdir, manifest, data, parse_item_table(items, bdir / manifest["item_table"]["file"]),
                  uniform, sessions)


def _read_listed(bdir: Path, entry: Any, what: str) -> bytes:
    """The bytes of a file the manifest lists as ``{"file", "sha256"}``, checked against the hash."""
    try:
        raw = (bdir / entry["file"]).read_bytes()
    except (OSError, KeyError, TypeError) as exc:
        raise BundleError(f"{bdir}: {what} unreadable: {exc}") from exc
    if (digest := hashlib.sha256(raw).hexdigest()) != entry.get("sha256"):
        raise BundleError(f"{bdir / entry['file']}: sha256 {digest[:12]}... does not match the "
                          f"manifest's {str(entry.get('sha256'))[:12]}...: file altered or corrupt")
    return bytes(raw)
