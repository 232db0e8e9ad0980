"""Keras and scikit-learn models to ONNX, checked for parity against the originals.

This is the only module that imports TensorFlow, Keras, tf2onnx and skl2onnx; the serving
process never imports it (``export.bundle`` and ``streams.scoring`` stay import-light).

Converted graphs are *canonicalized* (node, tensor and symbolic-dimension names renumbered,
doc strings dropped) because both converters embed process-global counters and random ids
in names: without it, exporting the same weights twice would give different bytes and so a
different bundle version.

Parity: each ONNX graph runs in onnxruntime beside the original model on the same
``>= 10,000`` float32 rows; any output whose max abs difference exceeds ``tol`` raises
:class:`ParityError` naming the model and output.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported

import hashlib  # noqa: E402
import heapq  # noqa: E402
from collections.abc import Mapping  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

OPSET = 17
PARITY_TOL = 1e-5
MIN_PARITY_ROWS = 10_000
Arrays = dict[str, np.ndarray]


class ParityError(RuntimeError):
    """An ONNX graph disagrees with the model it was converted from."""

    def __init__(self, model: str, output: str, max_abs_diff: float, tol: float, rows: int) -> None:
        super().__init__(f"parity failed for model {model!r}, output {output!r}: max abs diff "
                         f"{max_abs_diff:.3g} > tolerance {tol:.0e} over {rows} rows")
        self.model, self.output, self.max_abs_diff, self.tol = model, output, max_abs_diff, tol


@dataclass(frozen=True, slots=True)
class Parity:
    """Parity figures for one model: rows compared and max abs difference per output."""

    model: str
    rows: int
    max_abs_diff: dict[str, float]
    tol: float = PARITY_TOL

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the manifest."""
        return {"rows": self.rows, "tol": self.tol, "max_abs_diff": dict(self.max_abs_diff)}


def canonicalize(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """Rename nodes, internal tensors and symbolic dims deterministically (in place, returned).

    Graph input/output names are kept (they are the contract). Graphs with sub-graphs
    (``If``/``Loop``) keep their tensor names, since inner graphs may capture outer names.
    """
    g = model.graph
    model.doc_string, g.doc_string, g.name = "", "", name
    dims: dict[str, str] = {}
    for vi in list(g.input) + list(g.output):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") or not d.HasField("dim_value"):
                d.dim_param = dims.setdefault(d.dim_param, f"d{len(dims)}")
    del g.value_info[:]  # optional shape hints carrying converter-local names
    has_subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                       for n in g.node for a in n.attribute)
    keep = {vi.name for vi in list(g.input) + list(g.output)} | {""}
    rename: dict[str, str] = {}
    if not has_subgraph:
        _canonical_order(g)
        for t in [i.name for i in g.initializer] + [o for n in g.node for o in n.output]:
            if t not in keep and t not in rename:
                rename[t] = f"t{len(rename)}"
        for init in g.initializer:
            init.name = rename.get(init.name, init.name)
    for k, node in enumerate(g.node):
        node.name = f"n{k}_{node.op_type}"
        node.input[:] = [rename.get(t, t) for t in node.input]
        node.output[:] = [rename.get(t, t) for t in node.output]
    return model


def _canonical_order(g: onnx.GraphProto) -> None:
    """Re-sort nodes (and initializers by first use) into an order that depends only on the
    computation: tf2onnx emits a different valid topological order from run to run.

    A node's signature hashes its op, attributes and its inputs' signatures (graph-input name,
    initializer content, or producer signature and output slot); among the ready nodes the
    smallest signature goes first.
    """
    sig: dict[str, bytes] = {vi.name: b"in:" + vi.name.encode() for vi in g.input}
    sig[""] = b""
    for init in g.initializer:
        anon = onnx.TensorProto()
        anon.CopyFrom(init)
        anon.name = ""
        sig[init.name] = hashlib.sha256(anon.SerializeToString()).digest()
    node_sig = []
    for node in g.node:  # ONNX node lists are topologically sorted already
        h = hashlib.sha256(f"{node.domain}:{node.op_type}".encode())
        for attr in sorted(node.attribute, key=lambda x: x.name):
            h.update(attr.SerializeToString())
        for t in node.input:
            h.update(sig.get(t, b"?" + t.encode()))
        node_sig.append(h.digest())
        for k, out in enumerate(node.output):
            sig[out] = node_sig[-1] + bytes([k])
    producer = {out: i for i, n in enumerate(g.node) for out in n.output}
    waiting = [sum(1 for t in set(n.input) if t in producer) for n in g.node]
    consumers: dict[int, list[int]] = {}
    for i, n in enumerate(g.node):
        for p in {producer[t] for t in n.input if t in producer}:
            consumers.setdefault(p, []).append(i)
    ready = [(node_sig[i], i) for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(i)
        for c in consumers.get(i, []):
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(ready, (node_sig[c], c))
    nodes = [g.node[i] for i in order]
    first_use = {t: k for k, n in reversed(list(enumerate(nodes))) for t in n.input}
    inits = sorted(g.initializer, key=lambda t: (first_use.get(t.name, len(nodes)), sig[t.name]))
    for field, items in ((g.node, nodes), (g.initializer, inits)):
        copies = [type(x)() for x in items]
        for c, x in zip(copies, items, strict=True):
            c.CopyFrom(x)
        del field[:]
        field.extend(copies)


def keras_to_onnx(model: Any, name: str, opset: int = OPSET) -> onnx.ModelProto:
    """Convert a functional Keras model with named inputs and named outputs.

    Traces a ``tf.function`` that calls the model with a dict of inputs and returns a dict of
    outputs, so ONNX names equal Keras names whatever the model's input structure
    (``from_keras`` feeds a dict-input model positionally, in the wrong order). Tensors the
    model captured by value (Keras 3 ``Normalization`` mean/variance) are frozen into the
    graph as ``from_keras`` does; ``from_function`` would leave them as extra graph inputs.
    """
    import tensorflow as tf
    from tf2onnx import convert as tfc
    from tf2onnx import tf_loader

    names = [t.name for t in model.inputs]
    sig = [tf.TensorSpec([None, *t.shape[1:]], tf.float32, name=t.name) for t in model.inputs]

    @tf.function(input_signature=sig)
    def serve(*args: Any) -> dict[str, Any]:
        return _named(model, model(dict(zip(names, args, strict=True)), training=False))

    func = serve.get_concrete_function()
    captured = {t.name for t in func.graph.function_captures.by_val_internal.values()}
    inputs = [t.name for t in func.inputs if t.name not in captured and t.dtype != tf.resource]
    outputs = [t.name for t in func.outputs if t.dtype != tf.resource]
    renames = tfc.tensor_names_from_structed(func, inputs, outputs)
    with tf.device("/cpu:0"):
        frozen, tables = tf_loader.from_trackable(model, func, inputs, outputs, False)
        proto, _ = tfc._convert_common(frozen, name=name, opset=opset, input_names=inputs,
                                       output_names=outputs, tensors_to_rename=renames,
                                       initialized_tables=tables)
    if (got := [i.name for i in proto.graph.input]) != names:
        raise RuntimeError(f"{name}: ONNX inputs {got} are not the Keras inputs {names}")
    return canonicalize(proto, name)


def sklearn_to_onnx(estimator: Any, n_features: int, name: str = "user",
                    opset: int = OPSET) -> onnx.ModelProto:
    """Convert a classifier (or Pipeline ending in one): input ``X`` float32 ``[None, n_features]``,
    outputs ``label`` and ``probabilities`` ``[None, n_classes]`` (ZipMap off)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    proto = convert_sklearn(estimator, initial_types=[("X", FloatTensorType([None, n_features]))],
                            options={id(final): {"zipmap": False}},
                            target_opset={"": opset, "ai.onnx.ml": 3})
    return canonicalize(proto, name)


def _named(model: Any, out: Any) -> dict[str, Any]:
    """Keras outputs (tensor, list or dict) as a dict keyed by output name."""
    if isinstance(out, Mapping):
        return dict(out)
    seq = out if isinstance(out, (list, tuple)) else [out]
    return dict(zip(model.output_names, seq, strict=True))


def keras_outputs(model: Any, inputs: Mapping[str, np.ndarray]) -> Arrays:
    """Reference outputs of a Keras model (inference mode) as float32 numpy arrays."""
    out = _named(model, model({k: np.asarray(v, np.float32) for k, v in inputs.items()},
                              training=False))
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def sklearn_outputs(estimator: Any, X: np.ndarray) -> Arrays:
    """Reference ``probabilities`` of a classifier on float32 rows."""
    return {"probabilities": estimator.predict_proba(np.asarray(X, np.float32))}


def check_parity(name: str, model: onnx.ModelProto | bytes, inputs: Mapping[str, np.ndarray],
                 reference: Mapping[str, np.ndarray], tol: float = PARITY_TOL) -> Parity:
    """Run ``model`` in onnxruntime on ``inputs`` and compare each ``reference`` output.

    Raises :class:`ParityError` on the first output whose max difference exceeds ``tol`` (NaN
    anywhere counts as infinite difference). The difference is absolute for values up to 1 in
    magnitude (every probability) and relative above: a logit-scale output near 100 (``a`` of a
    saturated slope) has a float32 spacing of 7.6e-6, so two ulps of rounding broke an absolute
    1e-5 bar on a tiny CI model.
    """
    data = model if isinstance(model, bytes) else model.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    feed = {i.name: np.asarray(inputs[i.name], np.float32) for i in sess.get_inputs()}
    outs = list(reference)
    got = dict(zip(outs, sess.run(outs, feed), strict=True))
    rows = len(next(iter(feed.values())))
    diffs: dict[str, float] = {}
    for out in outs:
        ref = np.asarray(reference[out], np.float64)
        d = np.abs(got[out].astype(np.float64) - ref) / np.maximum(1.0, np.abs(ref))
        diffs[out] = float(np.nanmax(d)) if not np.isnan(d).any() else float("inf")
        if not diffs[out] <= tol:
            raise ParityError(name, out, diffs[out], tol, rows)
    return Parity(name, rows, diffs, tol)


def parity_inputs(model_inputs: Mapping[str, tuple[int | None, ...]], sample: Mapping[str, np.ndarray],
                  rows: int = MIN_PARITY_ROWS, seed: int = 0) -> Arrays:
    """Inputs for a parity run: holdout rows (``sample``, reshaped to each input's shape),
    topped up to ``rows`` with jittered resamples; standard-normal rows if no sample.

    Holdout arrays keep their own trailing shape (a dynamic K takes the sample's K); ``mask``
    inputs stay 0/1 with the first slot real.
    """
    rng = np.random.default_rng(seed)
    have = min((len(sample[k]) for k in model_inputs if k in sample), default=0)
    n = max(rows, have)
    take = rng.integers(0, have, n - have) if have else None
    out: Arrays = {}
    for key, shape in model_inputs.items():
        tail = tuple(8 if d is None else d for d in shape[1:])  # 8 slots for a dynamic K
        if have:
            base = np.asarray(sample[key], np.float32)[:have]
            if base.ndim != len(shape):  # e.g. price_ratio [N] for an input [N, 1]
                base = base.reshape(have, *tail)
            extra = base[take]
            if key != "mask":
                extra = extra + 0.01 * rng.standard_normal(extra.shape) * (base.std(0) + 1e-3)
            x = np.concatenate([base, extra.astype(np.float32)])
        elif key == "mask":
            x = (rng.random((n, *tail)) < 0.7).astype(np.float32)
            x[:, 0] = 1.0
        elif key == "price_ratio":
            x = rng.uniform(0.6, 1.4, (n, *tail)).astype(np.float32)
        else:
            x = rng.standard_normal((n, *tail)).astype(np.float32)
        out[key] = x
    return out
