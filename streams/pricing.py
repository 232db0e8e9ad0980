"""Profit-optimal personalized prices under guardrails: pure numpy, no Faust.

Demand is logistic in the price ratio: ``P(buy | p) = sigmoid(a - b * p / base)`` with ``b > 0``.
Profit ``(p - c) * P(buy | p)`` is log-concave for ``p > c`` and rising for ``p < c``, so its
optimum over an interval is the unconstrained optimum clipped into the interval, and that
optimum is exact via Lambert W: with ``b' = b / base``, ``p* = c + (1 + W(exp(a - b'c - 1))) / b'``.

Band rule (``band``/``band_batch``): guards are intersected in priority order, and a guard that
would empty the band is skipped (reason ``BAND_EMPTY``); the band keeps the guards before it.

1. item bounds ``[min_price, max_price]`` - always hold;
2. deviation ``base * (1 +- max_deviation)`` - holds whenever it meets the item bounds;
3. margin floor ``p >= unit_cost * (1 + margin_floor)`` - holds whenever it meets band 1-2;
4. step limit ``previous * (1 +- max_step)``, only if the previous price for this user and item
   is at most ``max_step_window_s`` old (or stamped in the future) - holds whenever it meets 1-3;
5. uniform cap ``p <= max(base, uniform price)``, only with ``cap_at_uniform`` and the item's
   uniform price ratio given (``uniform_ratio``) - holds whenever it meets 1-4.

The ``uniform`` arm's price (:func:`decide_uniform`) is ``base * uniform_ratio`` put through the
same band and rounding: reason ``UNIFORM`` plus the clips that moved it.

Uncertainty guard (``shrink``, before the band): where the model is unsure of a user's slope, the
optimum is shrunk in log space toward the item's uniform price (``base * uniform_ratio``; base where
there is none), ``log p = log p_uniform + w (log p* - log p_uniform)`` with the empirical-Bayes weight
:func:`shrink_weight` ``w`` in [0, 1]: 1 keeps the personalized price, 0 is the uniform one. The
guardrails then apply to the shrunk price as to any other.

The price is the clipped optimum (base price if the model output is invalid), rounded to whole
cents inside the band (ceil at the lower edge, floor at the upper); if the band holds no whole
cent, the nearest band edge. It is always finite and always inside the band.

>>> item = ItemTerms("sku-1", base_price=10.0, unit_cost=6.0, min_price=5.0, max_price=20.0)
>>> d = decide(2.0, 3.0, item, Guardrails())
>>> d.price, d.reasons
(10.42, ('OPTIMAL',))
>>> decide(float("nan"), 3.0, item, Guardrails()).reasons
('MODEL_INVALID',)
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

F = NDArray[np.float64]


def lambertw_exp(z: ArrayLike) -> F:
    """``W(exp(z))`` on the principal branch for any real ``z``, without forming ``exp(z)``.

    Solves ``w + ln w = z`` with Fritsch's iteration (fourth order) from Winitzki's start.

    >>> [round(float(v), 12) for v in lambertw_exp([1.0, 1000.0])]
    [1.0, 993.099169472389]
    """
    z = np.asarray(z, dtype=np.float64)
    with np.errstate(all="ignore"):
        soft = np.logaddexp(0.0, z)  # ln(1 + x), stable for huge z
        w = soft * (1.0 - np.log1p(soft) / (2.0 + soft))
        for _ in range(3):
            r = z - np.log(w) - w  # residual of w + ln w = z
            q = 2.0 * (1.0 + w) * (1.0 + w + 2.0 / 3.0 * r)
            w = w * (1.0 + r / (1.0 + w) * (q - r) / (q - 2.0 * r))
        # W(x) = x to double precision for x < 1e-17; +inf maps to +inf.
        w = np.where(z < -40.0, np.exp(z), w)
        w = np.where(z > 1e100, z - np.log(z), w)  # where the iteration would overflow
        w = np.where(z == np.inf, np.inf, w)
    return np.asarray(w, dtype=np.float64)


def lambertw0(x: ArrayLike) -> F:
    """Principal branch ``W(x)`` for ``x >= 0`` (``nan`` below zero).

    >>> float(lambertw0(0.0)), round(float(lambertw0(math.e)), 12)
    (0.0, 1.0)
    """
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = lambertw_exp(np.log(x))
    w = np.where((x >= 0.0) & (x < 1e-17), x, w)  # W(x) = x - x^2 + ...
    return np.asarray(np.where(x < 0.0, np.nan, w), dtype=np.float64)


def conversion(a: ArrayLike, b: ArrayLike, base: ArrayLike, price: ArrayLike) -> F:
    """Expected conversion ``sigmoid(a - b * price / base)``, overflow-safe, broadcasting."""
    with np.errstate(all="ignore"):
        logit = np.asarray(a) - np.asarray(b) * np.asarray(price) / np.asarray(base)
        return np.asarray(np.exp(-np.logaddexp(0.0, -logit)), dtype=np.float64)


def optimal_price(a: ArrayLike, b: ArrayLike, base: ArrayLike, cost: ArrayLike) -> F:
    """Unconstrained profit-optimal price under logit demand (``nan``/``inf`` where b <= 0).

    >>> round(float(optimal_price(2.0, 3.0, 10.0, 6.0)), 4)
    10.4158
    """
    with np.errstate(all="ignore"):
        bp = np.asarray(b, dtype=np.float64) / np.asarray(base, dtype=np.float64)
        c = np.asarray(cost, dtype=np.float64)
        w = lambertw_exp(np.asarray(a) - bp * c - 1.0)
        return np.asarray(c + (1.0 + w) / bp, dtype=np.float64)


def shrink_weight(signal_var: ArrayLike, noise_var: ArrayLike, scale: float) -> F:
    """Weight of the personalized price against the uniform one, per row: ``tau2 / (tau2 + scale * noise)``
    with ``tau2 = signal_var`` (the true user slopes' variance) and ``noise_var`` (the noise variance of
    this row's slope estimate), the posterior weight of a normal estimate under a normal prior. ``scale``
    0 is no guard (weight 1); where there is no signal (``tau2 <= 0``) or the inputs are not finite and
    non-negative, the weight is 0 (the uniform price: no harm first).

    >>> [round(float(w), 3) for w in shrink_weight([0.1, 0.1, 0.0], [0.0, 0.1, 0.1], 1.0)]
    [1.0, 0.5, 0.0]
    """
    tau2, noise = np.asarray(signal_var, np.float64), np.asarray(noise_var, np.float64)
    if not scale > 0:
        return np.ones(np.broadcast(tau2, noise).shape)
    with np.errstate(all="ignore"):
        w = tau2 / (tau2 + scale * noise)
    ok = np.isfinite(tau2) & np.isfinite(noise) & (tau2 > 0) & (noise >= 0)
    return np.asarray(np.where(ok, np.clip(w, 0.0, 1.0), 0.0), np.float64)


def shrink_toward(target: F, anchor: F, w: F) -> F:
    """``exp(log anchor + w (log target - log anchor))``: ``target`` pulled toward ``anchor`` in log space
    (both positive); ``w`` 1 keeps ``target``, 0 gives ``anchor``.

    >>> p = shrink_toward(np.array([12.0, 12.0]), np.array([10.0, 10.0]), np.array([0.5, 0.0]))
    >>> [round(float(x), 4) for x in p]
    [10.9545, 10.0]
    """
    with np.errstate(all="ignore"):
        step = np.where(w > 0, w * (np.log(target) - np.log(anchor)), 0.0)  # w 0 is the anchor, even for target inf
        out = np.exp(np.log(anchor) + step)
        return np.asarray(np.where(np.isnan(out), anchor, out), np.float64)  # inf - inf: no direction, the anchor


class Reason(enum.IntFlag):
    """Why a price is what it is; a decision carries one or more."""

    OPTIMAL = 1
    CLIP_MIN_PRICE = 2
    CLIP_MAX_PRICE = 4
    CLIP_MAX_DEVIATION = 8
    CLIP_MARGIN_FLOOR = 16
    CLIP_STEP_LIMIT = 32
    MODEL_INVALID = 64
    BAND_EMPTY = 128
    EXPLORED = 256      # drawn around the decision (exploration); the event's propensity says how
    UNIFORM = 512       # the uniform arm: the item's one learnt price, the same for every user
    CLIP_UNIFORM_CAP = 1024  # a treatment price cut to max(base, uniform price) (cap_at_uniform)


@functools.lru_cache(maxsize=1024)
def reason_names(flags: int) -> tuple[str, ...]:
    """Reason flags as names in declaration order.

    >>> reason_names(Reason.CLIP_MAX_PRICE | Reason.BAND_EMPTY)
    ('CLIP_MAX_PRICE', 'BAND_EMPTY')
    """
    return tuple(r.name for r in Reason if r & flags and r.name is not None)


@dataclass(frozen=True, slots=True)
class Guardrails:
    """Limits every price obeys; see the module docstring for how they combine."""

    max_deviation: float = 0.2
    margin_floor: float = 0.05
    max_step: float = 0.1
    max_step_window_s: float = 3600.0
    cap_at_uniform: bool = False

    def __post_init__(self) -> None:
        ok = (0 <= self.max_deviation <= 1, 0 <= self.margin_floor <= 10, 0 <= self.max_step <= 1)
        if not all(ok) or not 0 <= self.max_step_window_s < math.inf:
            raise ValueError(f"guardrails out of range: {self}")

    @classmethod
    def from_settings(cls, s: object) -> Guardrails:
        """Take the knobs from any object that has them (e.g. ``streams.settings.Settings``);
        ``cap_at_uniform`` is off where the object has no such attribute."""
        d, m, st, w = (float(getattr(s, f)) for f in ("max_deviation", "margin_floor", "max_step", "max_step_window_s"))
        return cls(d, m, st, w, cap_at_uniform=bool(getattr(s, "cap_at_uniform", False)))


@dataclass(frozen=True, slots=True)
class ItemTerms:
    """One item's catalog terms: base price, unit cost and hard price bounds."""

    item_id: str
    base_price: float
    unit_cost: float
    min_price: float
    max_price: float

    def __post_init__(self) -> None:
        if not (0 < self.base_price < math.inf and 0 <= self.unit_cost < math.inf
                and 0 <= self.min_price <= self.max_price < math.inf):
            raise ValueError(f"invalid item terms: {self}")


@dataclass(frozen=True, slots=True)
class ItemBatch:
    """Column arrays of many items' terms, for ``decide_batch``."""

    base_price: F
    unit_cost: F
    min_price: F
    max_price: F

    @classmethod
    def of(cls, items: Sequence[ItemTerms]) -> ItemBatch:
        """Columns from already validated ``ItemTerms``."""
        cols = np.array([(i.base_price, i.unit_cost, i.min_price, i.max_price) for i in items], np.float64)
        return cls(*cols.reshape(-1, 4).T)


@dataclass(frozen=True, slots=True)
class PriceDecision:
    """The price for one user and item, with what the model expects at that price."""

    price: float
    base_price: float
    expected_conversion: float  # nan when the model output was invalid
    expected_profit: float  # per impression, (price - cost) * conversion
    reasons: tuple[str, ...]


class Band(NamedTuple):
    """Allowed price interval and the reasons it carries (``BAND_EMPTY`` if a guard was skipped)."""

    lo: float
    hi: float
    reasons: tuple[str, ...]


class BandBatch(NamedTuple):
    """Vectorised bands: edges, the reason a clip at each edge reports, and band flags."""

    lo: F
    hi: F
    lo_reason: NDArray[np.int64]
    hi_reason: NDArray[np.int64]
    flags: NDArray[np.int64]


class BatchDecision(NamedTuple):
    """Vectorised decisions; ``reasons`` are ``Reason`` flag ints.

    ``propensity`` is 1 where the price is the decision itself (a point mass), and where it was
    drawn (``Reason.EXPLORED``) the density of ``log(price)`` at the drawn price (:func:`explore`).
    """

    price: F
    expected_conversion: F
    expected_profit: F
    reasons: NDArray[np.int64]
    propensity: F | None = None


def explore(price: F, lo: F, hi: F, width: float, u: F) -> tuple[F, F, NDArray[np.bool_]]:
    """Draw each price log-uniformly on ``[max(lo, price/e^w), min(hi, price*e^w)]`` with uniforms ``u``.

    The draw never leaves the band ``[lo, hi]`` (the interval is cut to it, not clipped, so no
    price edge gets a point mass), and is rounded to whole cents inside the band. Returns the
    prices, the density of ``log(price)`` under the draw (``1 / log(b / a)``; 1 where the interval
    is a point, and the price is the decision itself), and which rows were drawn.

    >>> p, dens, drawn = explore(np.array([10.0]), np.array([8.0]), np.array([12.0]), 0.1, np.array([0.5]))
    >>> float(p[0]), round(float(dens[0]), 3), bool(drawn[0])
    (10.0, 5.0, True)
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.maximum(lo, price * math.exp(-width))
        b = np.minimum(hi, price * math.exp(width))
        span = np.log(b) - np.log(a)
        drawn = np.isfinite(span) & (span > 1e-12)
        draw = np.exp(np.log(a) + np.clip(u, 0.0, 1.0) * span)
        out = round_into(np.where(drawn, draw, price), lo, hi)
        density = np.where(drawn, 1.0 / np.where(drawn, span, 1.0), 1.0)
    return out, np.asarray(density, np.float64), drawn


def band_batch(items: ItemBatch, g: Guardrails, now_ts: float | F = 0.0,
               prev_price: F | None = None, prev_ts: F | None = None, uniform_ratio: F | None = None) -> BandBatch:
    """Allowed price bands per row (``prev_price`` nan = no previous price).

    ``now_ts`` is the decision's event time, one for all rows or one per row (rows of a batch
    come from triggers at different times); a previous price within ``max_step_window_s`` of it
    limits the step. With ``g.cap_at_uniform`` and ``uniform_ratio`` (uniform price / base per
    row), the band ends at ``max(base, base * uniform_ratio)`` (rows with a non-finite ratio: no cap).
    """
    n = items.base_price.shape[0]
    lo, hi = items.min_price.copy(), items.max_price.copy()
    lo_r = np.full(n, int(Reason.CLIP_MIN_PRICE), np.int64)
    hi_r = np.full(n, int(Reason.CLIP_MAX_PRICE), np.int64)
    flags = np.zeros(n, np.int64)
    inf = np.full(n, np.inf)
    guards = [(items.base_price * (1 - g.max_deviation), items.base_price * (1 + g.max_deviation),
               Reason.CLIP_MAX_DEVIATION, np.ones(n, bool)),
              (items.unit_cost * (1 + g.margin_floor), inf, Reason.CLIP_MARGIN_FLOOR, np.ones(n, bool))]
    if prev_price is not None and prev_ts is not None:
        with np.errstate(invalid="ignore"):
            fresh = (now_ts - prev_ts <= g.max_step_window_s) & np.isfinite(prev_price) & (prev_price > 0)
        step = (prev_price * (1 - g.max_step), prev_price * (1 + g.max_step))
        guards.append((*step, Reason.CLIP_STEP_LIMIT, fresh))
    if g.cap_at_uniform and uniform_ratio is not None:
        ur = np.asarray(uniform_ratio, np.float64)
        cap = items.base_price * np.maximum(1.0, np.where(np.isfinite(ur), ur, 1.0))
        guards.append((np.zeros(n), cap, Reason.CLIP_UNIFORM_CAP, np.isfinite(ur) & (ur > 0)))
    for glo, ghi, reason, on in guards:
        nlo, nhi = np.maximum(lo, glo), np.minimum(hi, ghi)
        ok = on & (nlo <= nhi)
        flags |= np.where(on & ~ok, int(Reason.BAND_EMPTY), 0)
        lo_r = np.where(ok & (glo > lo), int(reason), lo_r)
        hi_r = np.where(ok & (ghi < hi), int(reason), hi_r)
        lo, hi = np.where(ok, nlo, lo), np.where(ok, nhi, hi)
    return BandBatch(lo, hi, lo_r, hi_r, flags)


def round_into(price: F, lo: F, hi: F) -> F:
    """Round to whole cents without leaving ``[lo, hi]`` (the nearest edge if no cent fits)."""
    cents = np.clip(np.round(price * 100.0), np.ceil(lo * 100.0), np.floor(hi * 100.0)) / 100.0
    return np.asarray(np.clip(cents, lo, hi), dtype=np.float64)


def decide_batch(a: ArrayLike, b: ArrayLike, items: ItemBatch, g: Guardrails, now_ts: float | F = 0.0,
                 prev_price: F | None = None, prev_ts: F | None = None, *, explore_width: float = 0.0,
                 explore_u: F | None = None, uniform_ratio: F | None = None,
                 shrink: F | None = None) -> BatchDecision:
    """Guarded profit-optimal prices for a batch of model outputs ``(a, b)``, one row per item.

    With ``explore_width > 0``, each price is drawn around its decision (:func:`explore`, uniforms
    ``explore_u``, one per row), inside the same band; conversion and profit are those of the
    drawn price, and ``propensity`` its density. ``uniform_ratio`` (per row) is read with
    ``g.cap_at_uniform`` (the uniform cap, guard 5) and with ``shrink``: the weight per row of the
    personalized optimum against the uniform price (:func:`shrink_weight`, the uncertainty guard;
    rows without a finite positive ratio shrink toward base), applied before the guardrails.
    """
    a_, b_ = np.asarray(a, np.float64), np.asarray(b, np.float64)
    bd = band_batch(items, g, now_ts, prev_price, prev_ts, uniform_ratio)
    with np.errstate(all="ignore"):
        target = optimal_price(a_, b_, items.base_price, items.unit_cost)
        invalid = ~(np.isfinite(a_) & np.isfinite(b_) & (b_ > 0) & np.isfinite(b_ / items.base_price)
                    & ~np.isnan(target))
        if shrink is not None:
            ur = np.ones_like(target) if uniform_ratio is None else np.asarray(uniform_ratio, np.float64)
            anchor = items.base_price * np.where(np.isfinite(ur) & (ur > 0), ur, 1.0)
            anchor = np.where(np.isfinite(anchor) & (anchor > 0), anchor, items.base_price)  # a ratio that overflows
            w = np.clip(np.where(np.isfinite(shrink), shrink, 0.0), 0.0, 1.0)
            target = np.where(invalid | (target <= 0), target, shrink_toward(target, anchor, w))
        target = np.where(invalid, items.base_price, target)
        reasons = bd.flags | np.where(invalid, int(Reason.MODEL_INVALID), 0)
        reasons |= np.where(target < bd.lo, bd.lo_reason, 0) | np.where(target > bd.hi, bd.hi_reason, 0)
        reasons |= np.where(reasons & ~int(Reason.BAND_EMPTY), 0, int(Reason.OPTIMAL))
        price = round_into(np.clip(target, bd.lo, bd.hi), bd.lo, bd.hi)
        propensity = np.ones_like(price)
        if explore_width > 0:
            if explore_u is None or np.shape(explore_u) != price.shape:
                raise ValueError("explore_width > 0 needs one uniform per row in explore_u")
            price, propensity, drawn = explore(price, bd.lo, bd.hi, explore_width, explore_u)
            reasons = reasons | np.where(drawn, int(Reason.EXPLORED), 0)
        conv = np.where(invalid, np.nan, conversion(a_, b_, items.base_price, price))
    return BatchDecision(price, conv, (price - items.unit_cost) * conv, reasons, propensity)


def decide_uniform(uniform_ratio: ArrayLike, a: ArrayLike, b: ArrayLike, items: ItemBatch, g: Guardrails,
                   now_ts: float | F = 0.0, prev_price: F | None = None, prev_ts: F | None = None) -> BatchDecision:
    """The uniform arm's prices: ``base * uniform_ratio`` clipped into the band of guards 1-4 and
    rounded to cents as :func:`decide_batch` does, reasons ``UNIFORM`` plus the clips (a non-finite
    or non-positive ratio means the base price); conversion and profit from the model's ``(a, b)``
    at that price (nan where they are invalid), propensity 1.

    >>> it = ItemBatch.of([ItemTerms("sku-1", 10.0, 6.0, 5.0, 20.0)])
    >>> d = decide_uniform([0.7], [2.0], [3.0], it, Guardrails())
    >>> float(d.price[0]), reason_names(int(d.reasons[0]))
    (8.0, ('CLIP_MAX_DEVIATION', 'UNIFORM'))
    """
    r, a_, b_ = (np.asarray(x, np.float64) for x in (uniform_ratio, a, b))
    bd = band_batch(items, g, now_ts, prev_price, prev_ts)  # no cap: it only bounds personalized prices
    with np.errstate(all="ignore"):
        target = items.base_price * np.where(np.isfinite(r) & (r > 0), r, 1.0)
        reasons = bd.flags | int(Reason.UNIFORM)
        reasons |= np.where(target < bd.lo, bd.lo_reason, 0) | np.where(target > bd.hi, bd.hi_reason, 0)
        price = round_into(np.clip(target, bd.lo, bd.hi), bd.lo, bd.hi)
        valid = np.isfinite(a_) & np.isfinite(b_) & (b_ > 0)
        conv = np.where(valid, conversion(a_, b_, items.base_price, price), np.nan)
    return BatchDecision(price, conv, (price - items.unit_cost) * conv, reasons, np.ones_like(price))


def _prev(previous: tuple[float, float] | None) -> tuple[F | None, F | None]:
    if previous is None:
        return None, None
    return np.array([previous[0]], np.float64), np.array([previous[1]], np.float64)


def band(item: ItemTerms, g: Guardrails, previous: tuple[float, float] | None = None,
         now_ts: float = 0.0) -> Band:
    """Allowed price interval for one item; ``previous`` is ``(price, ts)`` shown to this user."""
    bd = band_batch(ItemBatch.of([item]), g, now_ts, *_prev(previous))
    return Band(float(bd.lo[0]), float(bd.hi[0]), reason_names(int(bd.flags[0])))


def decide(a: float, b: float, item: ItemTerms, g: Guardrails,
           previous: tuple[float, float] | None = None, now_ts: float = 0.0) -> PriceDecision:
    """Guarded profit-optimal price for one model output ``(a, b)`` and item."""
    d = decide_batch([a], [b], ItemBatch.of([item]), g, now_ts, *_prev(previous))
    return PriceDecision(float(d.price[0]), item.base_price, float(d.expected_conversion[0]),
                         float(d.expected_profit[0]), reason_names(int(d.reasons[0])))
