"""Scoring port: the ``Scorer`` protocol, its ONNX adapter, a deterministic one for tests, and
a watcher that hot-swaps a newer bundle without a restart.

Imports onnxruntime (through ``export.bundle``) and numpy only, never TensorFlow. Every call
is batched (one onnxruntime call per batch costs ~10-25 us, so score many rows at once) and
returns float64 arrays.

Reloads never expose a half-loaded model: :class:`BundleWatcher` loads and verifies the new
bundle completely, then swaps one reference. A batch should read ``watcher.scorer`` once and
use that object (and its ``version``) for all of its calls, so each PriceEvent names the model
that actually priced it.

>>> s = DeterministicScorer()
>>> a, b, p = s.price(np.zeros((1, 57)), np.array([[2.3, 0.5, 0.6, 0.2, 0.1, 0.0]]), np.array([1.0]))
>>> round(float(a[0]), 3), round(float(b[0]), 3), round(float(p[0]), 3)
(1.25, 2.0, 0.321)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from export.bundle import Bundle, BundleError, load_bundle, read_current
from streams.features import FEATURE_NAMES, ITEM_FEATURE_NAMES, ITEM_TABLE_FEATURES

F = NDArray[np.float64]
log = logging.getLogger(__name__)


SPREAD_OUTPUTS = ("t_noise_var", "t_signal_var")  # the price graph's outputs the uncertainty guard reads


class Spread(NamedTuple):
    """How sure the price model is of each row's user slope: the noise variance of the estimate and the
    true slopes' variance across users (the prior), per row (:func:`streams.pricing.shrink_weight`)."""

    noise_var: F
    signal_var: F


@runtime_checkable
class Scorer(Protocol):
    """Batched model scoring; ``version`` names the models behind every answer."""

    version: str

    def price(self, user: ArrayLike, item: ArrayLike, price_ratio: ArrayLike) -> tuple[F, F, F]:
        """Demand curve per row: ``(a, b, p)`` with ``p = sigmoid(a - b * price_ratio)``."""
        ...

    def recommend(self, user: ArrayLike, items: ArrayLike, price_ratio: ArrayLike, mask: ArrayLike) -> F:
        """Purchase probability per candidate slot ``[N, K]``; padding slots (mask 0) get ~0."""
        ...

    def propensity(self, user: ArrayLike) -> F:
        """P(user buys anything) per row ``[N]``."""
        ...

    def retrieve(self, item: ArrayLike) -> F | None:
        """First-stage score per item-feature row ``[N]``, affine in the row (so it factorises into
        an item part and a user part), ranking like ``recommend`` up to what its nonlinear part adds;
        None when this scorer has no first stage (then every catalog item goes to ``recommend``)."""
        ...

    def item_table(self, item_ids: Sequence[str]) -> F:
        """The item-table features (``ITEM_TABLE_FEATURES``) per id ``[N, 2]``: 0s for items the models
        never saw."""
        ...

    def uniform_ratio(self, item_ids: Sequence[str]) -> F:
        """The uniform arm's price / base per id ``[N]``: 1 (the base price) for items it has none for."""
        ...

    # Optional (read with getattr): ``price_spread(user, item, price_ratio) -> (a, b, p, Spread | None)``,
    # :meth:`price` plus the model's uncertainty in the same call; None where the model has none.


def _f32(x: ArrayLike, ndim: int, what: str, tail: tuple[int | None, ...]) -> NDArray[np.float32]:
    """As a C-contiguous float32 array, checking rank and the fixed trailing dims."""
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim != ndim or any(w is not None and g != w for g, w in zip(a.shape[1:], tail, strict=True)):
        raise ValueError(f"{what} has shape {a.shape}, expected [N, {', '.join(map(str, tail))}]")
    return a


class OnnxScorer:
    """Scores a verified :class:`~export.bundle.Bundle` with one onnxruntime session per model."""

    def __init__(self, bundle: Bundle, threads: int = 1) -> None:
        self.version = bundle.version
        self._u, self._i = len(bundle.feature_names), len(bundle.item_feature_names)
        self._user, self._price, self._rec = (bundle.session(m, threads)
                                              for m in ("user", "price", "recommend"))
        self._retrieve = bundle.session("retrieve", threads) if "retrieve" in bundle.data else None
        if self._retrieve is not None:
            _check_affine(self.retrieve, self._i, bundle.version)
        self._items = bundle.item_table
        self._uniform = bundle.uniform or {}  # a bundle from before the uniform arm: every item at base
        outs = {o.name for o in self._price.get_outputs()}
        # a bundle exported before the guard (or of a one-member model) has no spread: serving prices as before
        self.has_spread = set(SPREAD_OUTPUTS) <= outs
        if not self.has_spread:
            log.info("bundle %s: the price model has no %s outputs; the uncertainty guard "
                     "(PRICING_UNCERTAINTY_SCALE) does not act on it (retrain and export an ensemble for it)",
                     bundle.version, "/".join(SPREAD_OUTPUTS))
        k = {t.name: t.shape for t in self._rec.get_inputs()}["mask"][1]
        self._k: int | None = k if isinstance(k, int) else None  # fixed slot count, if any

    def price(self, user: ArrayLike, item: ArrayLike, price_ratio: ArrayLike) -> tuple[F, F, F]:
        """See :meth:`Scorer.price`."""
        feed = {"user": _f32(user, 2, "user", (self._u,)), "item": _f32(item, 2, "item", (self._i,)),
                "price_ratio": np.ascontiguousarray(price_ratio, np.float32).reshape(-1, 1)}
        p, a, b = self._price.run(["p_buy", "a", "b"], feed)
        return a.astype(np.float64).ravel(), b.astype(np.float64).ravel(), p.astype(np.float64).ravel()

    def price_spread(self, user: ArrayLike, item: ArrayLike, price_ratio: ArrayLike) -> tuple[F, F, F, Spread | None]:
        """:meth:`price` and the model's :class:`Spread` from one onnxruntime call (None: the bundle has none)."""
        if not self.has_spread:
            return (*self.price(user, item, price_ratio), None)
        feed = {"user": _f32(user, 2, "user", (self._u,)), "item": _f32(item, 2, "item", (self._i,)),
                "price_ratio": np.ascontiguousarray(price_ratio, np.float32).reshape(-1, 1)}
        p, a, b, noise, signal = (x.astype(np.float64).ravel()
                                  for x in self._price.run(["p_buy", "a", "b", *SPREAD_OUTPUTS], feed))
        return a, b, p, Spread(noise, signal)

    def recommend(self, user: ArrayLike, items: ArrayLike, price_ratio: ArrayLike, mask: ArrayLike) -> F:
        """See :meth:`Scorer.recommend`; fewer than the model's fixed K slots are padded."""
        its = _f32(items, 3, "items", (None, self._i))
        n, k = its.shape[:2]
        feed = {"user": _f32(user, 2, "user", (self._u,)), "items": its,
                "price_ratio": _f32(price_ratio, 2, "price_ratio", (k,)),
                "mask": _f32(mask, 2, "mask", (k,))}
        if self._k is not None and k != self._k:
            if k > self._k:
                raise ValueError(f"{k} candidate slots, the model takes at most {self._k}")
            pad = self._k - k  # padding slots are masked out, then cut off again
            for key in ("items", "price_ratio", "mask"):
                widths = [(0, 0), (0, pad)] + [(0, 0)] * (feed[key].ndim - 2)
                feed[key] = np.pad(feed[key], widths, constant_values=1.0 if key == "price_ratio" else 0.0)
        (probs,) = self._rec.run(["probs"], feed)
        return np.asarray(probs[:, :k], np.float64)

    def propensity(self, user: ArrayLike) -> F:
        """See :meth:`Scorer.propensity`: P(class 1) of the user model."""
        (proba,) = self._user.run(["probabilities"], {"X": _f32(user, 2, "user", (self._u,))})
        return np.asarray(proba[:, 1], np.float64)

    def retrieve(self, item: ArrayLike) -> F | None:
        """See :meth:`Scorer.retrieve`: the bundle's ``retrieve`` model, None if it has none."""
        if self._retrieve is None:
            return None
        (score,) = self._retrieve.run(["score"], {"item": _f32(item, 2, "item", (self._i,))})
        return np.asarray(score, np.float64).ravel()

    def item_table(self, item_ids: Sequence[str]) -> F:
        """See :meth:`Scorer.item_table`: the bundle's item table."""
        get, zero = self._items.get, (0.0,) * len(ITEM_TABLE_FEATURES)
        return np.array([get(i, zero) for i in item_ids], np.float64).reshape(len(item_ids), len(zero))

    def uniform_ratio(self, item_ids: Sequence[str]) -> F:
        """See :meth:`Scorer.uniform_ratio`: the bundle's uniform table."""
        get = self._uniform.get
        return np.fromiter((get(i, 1.0) for i in item_ids), np.float64, len(item_ids))


def _check_affine(retrieve: Callable[[ArrayLike], F | None], n_item: int, version: str,
                  tol: float = 1e-4) -> None:
    """Refuse (:class:`BundleError`) a first stage that is not affine in its input: the pipeline
    splits it into an item part and a user part, ``f(a + b) = f(a) + f(b) - f(0)``."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 64, n_item))
    fa, fb, fab, f0 = (retrieve(x) for x in (a, b, a + b, np.zeros((1, n_item))))
    assert fa is not None and fb is not None and fab is not None and f0 is not None
    err = np.abs(fab - (fa + fb - f0)) / np.maximum(1.0, np.abs(fab))
    if not float(err.max()) <= tol:
        raise BundleError(f"bundle {version}: its retrieve model is not affine in the item features "
                          f"(relative error {float(err.max()):.2g} > {tol:g}); the first stage must be")


def _sigmoid(z: F) -> F:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class DeterministicScorer:
    """Closed-form scorer for tests (no files, no onnxruntime), with ``m = mean(user)``:

    * ``a = 1 + 0.5 tanh(m) + 0.5 item[:, 1]`` (cat_affinity), ``b = 2 + 0.5 tanh(m)`` (> 0),
      ``p = sigmoid(a - b price_ratio)``;
    * ``recommend``: softmax over real slots of ``items @ W_ITEM - 2 price_ratio``;
      padding slots get 0 (a row with no real slot is all 0);
    * ``propensity = sigmoid(m - 1)``; ``item_table`` 0s for every item;
    * ``uniform_ratio``: ``uniform[id]`` for the ids of the ``uniform`` mapping given, else 1 (base);
    * ``retrieve = items @ W_ITEM``: the first stage ranks exactly as ``recommend``;
    * ``price_spread``: ``price`` and the ``spread`` given as ``(noise_var, signal_var)`` on every row
      (None: no spread, as a bundle without one).
    """

    W_ITEM = np.array([-0.1, 2.0, -0.5, 1.0, 1.0, 0.5, 0.0])  # ITEM_FEATURE_NAMES order

    def __init__(self, version: str = "deterministic", uniform: dict[str, float] | None = None,
                 spread: tuple[float, float] | None = None) -> None:
        self.version = version
        self.uniform = dict(uniform or {})
        self.spread = spread

    def price(self, user: ArrayLike, item: ArrayLike, price_ratio: ArrayLike) -> tuple[F, F, F]:
        """See :meth:`Scorer.price`."""
        t = np.tanh(np.asarray(user, np.float64).mean(axis=1))
        a = 1.0 + 0.5 * t + 0.5 * np.asarray(item, np.float64)[:, 1]
        b = 2.0 + 0.5 * t
        return a, b, _sigmoid(a - b * np.asarray(price_ratio, np.float64).ravel())

    def price_spread(self, user: ArrayLike, item: ArrayLike, price_ratio: ArrayLike) -> tuple[F, F, F, Spread | None]:
        """See :meth:`OnnxScorer.price_spread`."""
        a, b, p = self.price(user, item, price_ratio)
        if self.spread is None:
            return a, b, p, None
        return a, b, p, Spread(np.full(len(a), float(self.spread[0])), np.full(len(a), float(self.spread[1])))

    def recommend(self, user: ArrayLike, items: ArrayLike, price_ratio: ArrayLike, mask: ArrayLike) -> F:
        """See :meth:`Scorer.recommend`."""
        real = np.asarray(mask, np.float64) > 0.5
        util = np.asarray(items, np.float64) @ self.W_ITEM - 2.0 * np.asarray(price_ratio, np.float64)
        util = np.where(real, util, -np.inf)
        top = np.max(util, axis=1, keepdims=True)
        e = np.where(real, np.exp(util - np.where(np.isfinite(top), top, 0.0)), 0.0)
        return np.asarray(e / np.maximum(e.sum(axis=1, keepdims=True), 1e-300), np.float64)

    def propensity(self, user: ArrayLike) -> F:
        """See :meth:`Scorer.propensity`."""
        return _sigmoid(np.asarray(user, np.float64).mean(axis=1) - 1.0)

    def retrieve(self, item: ArrayLike) -> F | None:
        """See :meth:`Scorer.retrieve`: ``item @ W_ITEM``, which ranks exactly as ``recommend`` at
        equal prices."""
        return np.asarray(np.asarray(item, np.float64) @ self.W_ITEM, np.float64)

    def item_table(self, item_ids: Sequence[str]) -> F:
        """See :meth:`Scorer.item_table`."""
        return np.zeros((len(item_ids), len(ITEM_TABLE_FEATURES)))

    def uniform_ratio(self, item_ids: Sequence[str]) -> F:
        """See :meth:`Scorer.uniform_ratio`."""
        return np.array([self.uniform.get(i, 1.0) for i in item_ids], np.float64)


class ScorerHolder:
    """Holds the current scorer; swapping is one reference assignment (atomic under the GIL)."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer: Scorer = scorer

    @property
    def version(self) -> str:
        """Version of the scorer in use now."""
        return self.scorer.version


class BundleWatcher(ScorerHolder):
    """Follows ``<model_dir>/CURRENT``: loads the bundle now, then a newer one when it appears.

    Raises :class:`~export.bundle.BundleError` at start if no valid bundle exists and no
    ``fallback`` scorer is given. A bundle that fails verification is logged once and skipped;
    the scorer in use is kept. It is tried again when its files change (a bundle copied in by hand
    while CURRENT already named it loads once the copy completes).
    """

    def __init__(self, model_dir: str | os.PathLike[str], reload_s: float = 30.0,
                 feature_names: tuple[str, ...] = FEATURE_NAMES, *, threads: int = 1,
                 item_feature_names: tuple[str, ...] = ITEM_FEATURE_NAMES,
                 fallback: Scorer | None = None) -> None:
        self.model_dir, self.reload_s, self.threads = Path(model_dir), reload_s, threads
        self.names, self.item_names = tuple(feature_names), tuple(item_feature_names)
        self._checked_at = -float("inf")
        self._rejected: tuple[str, tuple[tuple[str, int, int], ...]] | None = None  # version, its files then
        self.loaded_at: float | None = None  # wall time the bundle in use was loaded; None: the fallback
        try:
            super().__init__(self._load(read_current(self.model_dir)))
            self.loaded_at = time.time()
        except BundleError as exc:
            if fallback is None:
                raise
            log.error("no usable model bundle in %s (%s); serving with %s", model_dir, exc, fallback.version)
            super().__init__(fallback)

    def _load(self, version: str | None) -> OnnxScorer:
        if version is None:
            raise BundleError(f"{self.model_dir}: no CURRENT file, no bundle exported yet")
        bundle = load_bundle(self.model_dir / version, names=self.names, item_names=self.item_names)
        return OnnxScorer(bundle, self.threads)

    def _files(self, version: str) -> tuple[tuple[str, int, int], ...]:
        """Name, size and mtime of each file of the version's directory (empty if unreadable)."""
        try:
            return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns)
                                for e in os.scandir(self.model_dir / version) if e.is_file()))
        except OSError:
            return ()

    def maybe_reload(self, now: float) -> bool:
        """Check CURRENT if ``reload_s`` passed since the last check (``now`` is a monotonic
        clock reading from the caller); swap in a newer bundle. Returns True on a swap."""
        if now - self._checked_at < self.reload_s:
            return False
        self._checked_at = now
        try:
            version = read_current(self.model_dir)
        except (BundleError, OSError) as exc:
            log.warning("cannot read %s/CURRENT: %s; keeping model %s", self.model_dir, exc, self.version)
            return False
        if version is None or version == self.version:
            return False
        files = self._files(version)
        if self._rejected == (version, files):
            return False
        try:
            scorer = self._load(version)
        except (BundleError, OSError) as exc:
            self._rejected = (version, files)  # log once per bad version and state of its files
            log.error("rejected model bundle %s: %s; keeping model %s (tried again when its files change)",
                      version, exc, self.version)
            return False
        old, self.scorer = self.version, scorer  # the swap: one reference, fully loaded
        self.loaded_at = time.time()
        log.info("model bundle %s -> %s", old, version)
        return True
