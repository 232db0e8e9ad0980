"""Rolling per-user behaviour features: one code path for training rows and serving rows.

Windows are **exponentially decayed counters** in event time, not windowed tables: a counter
with time constant ``tau`` holds ``sum_i exp(-(T - t_i) / tau)`` over the user's events. That
costs a few floats per user whatever the traffic (bounded memory), needs no window-close
timers, and is *order independent*: folding an out-of-order event in with weight
``exp(-(T - t) / tau)`` gives exactly the state an in-order stream would have given.

Late and out-of-order events: an event up to ``max_lateness_s`` behind the newest event seen
for the user is folded in at its own event time (exact for every counter; recency and
session depth follow the newest event only). An older event raises :class:`LateEvent`; the
stream dead-letters it with that reason and leaves the state untouched.

Sums that measure traits (the price level and price ratio of views and buys, ratings) decay the
same way with their own, longer time constant ``FeatureSpec.memory_s`` (28 days): a user's price
sensitivity does not change in a week, and every view of it is evidence.

The ordered name list returned by :func:`feature_names` is the contract between ``models/``,
``export/`` and ``streams/``: the bundle manifest records it and the scorer refuses a bundle
whose names differ, or whose ``memory_s`` differs (it changes values, not names).

>>> spec = FeatureSpec()
>>> s = new_state(spec)
>>> ev = ClickEvent("e1", 1000.0, "u", "s1", "view", "i1", 8.0)
>>> s = update(s, ev, spec, base_price=10.0, category="shoes")
>>> round(user_features(s, spec, now=1000.0)[FEATURE_NAMES.index("view_price_ratio")], 3)
0.9
>>> len(FEATURE_NAMES), len(ITEM_FEATURE_NAMES), ITEM_FEATURE_NAMES[-2:]
(57, 7, ('item_conv_lift', 'item_log_slope'))
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np
import orjson

from .schemas import EVENT_TYPES, ClickEvent

STATE_VERSION = 1


class Sum:
    """Named slots of :attr:`UserState.sums`: decayed with ``FeatureSpec.memory_s``, each a (sum, weight) pair.

    The slots stay a flat list (compact on the changelog, one loop to decay); these names are
    the only way the code reads or writes them. The order is the wire format of the state.
    """

    VIEW_W = 0          # views of items with a known base price
    VIEW_RATIO = 1      # their shown price / base, summed
    BUY_W = 2           # carts and purchases with a known base price
    BUY_RATIO = 3       # their price / base, summed
    VIEW_LOG_BASE = 4   # log base price of viewed items, summed
    VIEW_LOG_BASE_W = 5
    RATING = 6          # review ratings, summed
    RATING_W = 7
    VIEW_LEVEL = 8      # level of the viewed item within its category, summed
    VIEW_LEVEL_W = 9


N_SUMS = 10  # states written before the level-in-category sums had 8: decode pads them with zeros
SEGMENTS = ("views", "clicks", "carts")  # decayed counts per category bucket, in this order
_TYPE_INDEX = {t: i for i, t in enumerate(EVENT_TYPES)}


class LateEvent(ValueError):
    """An event older than the lateness bound; the state is left as it was."""

    code = "LATE_EVENT"


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """The parameters the feature names derive from; part of the model contract."""

    windows_s: tuple[float, ...] = (3600.0, 86400.0, 604800.0)
    n_buckets: int = 32  # hashed category buckets: few enough to stay small, many enough to rarely collide
    max_lateness_s: float = 86400.0  # sessions come from the events' session_id, not from gaps
    # decay time of the per-user sums (price level and price ratio of views, buys, reviews): they
    # measure traits, price sensitivity above all, so they keep a longer memory than the counters
    memory_s: float = 28 * 86400.0

    @classmethod
    def from_settings(cls, s: object) -> FeatureSpec:
        """Build from any object with ``feature_windows_s`` and ``max_lateness_s``."""
        return cls(tuple(s.feature_windows_s), max_lateness_s=s.max_lateness_s)  # type: ignore[attr-defined]


def _window_label(seconds: float) -> str:
    """3600 -> '1h', 86400 -> '24h', 900 -> '15m', 45 -> '45s'."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def feature_names(spec: FeatureSpec = FeatureSpec()) -> tuple[str, ...]:
    """The ordered user-feature names for ``spec`` (the model contract)."""
    names = [f"{t}_decay_{_window_label(w)}" for w in spec.windows_s for t in EVENT_TYPES]
    long = _window_label(max(spec.windows_s))
    names += [f"click_rate_{long}", f"cart_rate_{long}", f"purchase_rate_{long}"]
    names += ["gap_log_s", "session_depth_log", "view_price_ratio", "discount_response",
              "view_log_base_price", "view_level_in_category", "review_mean"]
    names += [f"cat_share_{k}" for k in range(spec.n_buckets)]
    return tuple(names)


FEATURE_NAMES: tuple[str, ...] = feature_names()
# per (user, item): the first five from the user's state and the catalog (:func:`item_features`), the
# last two from the model bundle's item table (per-item statistics of the training history: the item's
# conversion lift, and its price sensitivity's log-multiplier, models.elasticity)
ITEM_FEATURE_NAMES: tuple[str, ...] = ("log_base_price", "cat_affinity", "cost_ratio", "cat_click_rate",
                                       "cat_cart_rate", "item_conv_lift", "item_log_slope")
ITEM_TABLE_FEATURES: tuple[str, ...] = ITEM_FEATURE_NAMES[-2:]


def category_levels(categories: list[str], base_prices: list[float]) -> list[float]:
    """Each item's price level within its category: ``log(base) - mean log(base)`` of the category.

    A policy-invariant trace of price sensitivity: which items a user chooses to view, at
    catalog prices, not at the prices we charged; within the category, so that a taste for
    expensive categories does not pass for insensitivity.

    >>> [round(x, 3) for x in category_levels(["a", "a", "b"], [10.0, 40.0, 7.0])]
    [-0.693, 0.693, 0.0]
    """
    sums: dict[str, list[float]] = {}
    for c, b in zip(categories, base_prices, strict=True):
        acc = sums.setdefault(c, [0.0, 0.0])
        acc[0] += math.log(b)
        acc[1] += 1.0
    return [math.log(b) - sums[c][0] / sums[c][1] for c, b in zip(categories, base_prices, strict=True)]


def category_bucket(category: str, n_buckets: int = 32) -> int:
    """Stable bucket of a category name (crc32, identical across processes and runs)."""
    return zlib.crc32(category.encode("utf-8")) % n_buckets


@dataclass(slots=True)
class UserState:
    """Everything one user's features need; a few dozen floats whatever the traffic."""

    t: float = -math.inf          # newest event time seen; counters are decayed to it
    prev_t: float = -math.inf     # event time of the event before the newest
    counts: list[float] = field(default_factory=list)   # len(windows) x len(EVENT_TYPES)
    # sums decayed with FeatureSpec.memory_s, in the slots that Sum names
    sums: list[float] = field(default_factory=lambda: [0.0] * N_SUMS)
    # decayed counts per category bucket, one block of n_buckets per SEGMENTS entry: views, clicks,
    # carts and purchases (a bought item counts twice there: its cart and its purchase)
    buckets: list[float] = field(default_factory=list)
    session: str = ""
    depth: int = 0


def new_state(spec: FeatureSpec) -> UserState:
    """An empty state sized for ``spec``."""
    return UserState(counts=[0.0] * (len(spec.windows_s) * len(EVENT_TYPES)),
                     buckets=[0.0] * (len(SEGMENTS) * spec.n_buckets))


def _decay(values: list[float], factor: float, start: int = 0, stop: int | None = None) -> None:
    for i in range(start, len(values) if stop is None else stop):
        values[i] *= factor


def update(state: UserState, ev: ClickEvent, spec: FeatureSpec, *, base_price: float | None = None,
           category: str | None = None, level: float | None = None) -> UserState:
    """Fold one event into ``state`` (in place, and returned for re-assignment into a table).

    ``base_price``, ``category`` and ``level`` (:func:`category_levels`) come from the catalog;
    unknown items update the counters but not the price or category features.
    """
    if ev.ts < state.t - spec.max_lateness_s:
        raise LateEvent(f"event at {ev.ts:.0f} is {state.t - ev.ts:.0f} s behind the user's newest event")
    n_types = len(EVENT_TYPES)
    long_tau = max(spec.windows_s)
    if ev.ts >= state.t:  # in order: decay everything forward to the event, add weight 1
        if state.t > -math.inf:
            for w, tau in enumerate(spec.windows_s):
                _decay(state.counts, math.exp(-(ev.ts - state.t) / tau), w * n_types, (w + 1) * n_types)
            _decay(state.sums, math.exp(-(ev.ts - state.t) / spec.memory_s))
            _decay(state.buckets, math.exp(-(ev.ts - state.t) / long_tau))
        if ev.session_id != state.session:
            state.session, state.depth = ev.session_id, 0
        state.prev_t, state.t = state.t, ev.ts
        state.depth += 1
        weights = [1.0] * len(spec.windows_s)
        wl = ws = 1.0
    else:  # out of order: add with the weight it would have had by now
        weights = [math.exp(-(state.t - ev.ts) / tau) for tau in spec.windows_s]
        wl = math.exp(-(state.t - ev.ts) / long_tau)
        ws = math.exp(-(state.t - ev.ts) / spec.memory_s)
    k = _TYPE_INDEX[ev.type]
    for w, weight in enumerate(weights):
        state.counts[w * n_types + k] += weight
    s = state.sums
    ratio = ev.price / base_price if base_price and base_price > 0 else None
    if ev.type == "view":
        if ratio is not None:  # the catalog's base price: what the user chose, not what we charged
            s[Sum.VIEW_W] += ws
            s[Sum.VIEW_RATIO] += ws * ratio
            s[Sum.VIEW_LOG_BASE] += ws * math.log(base_price)  # type: ignore[arg-type]
            s[Sum.VIEW_LOG_BASE_W] += ws
        if level is not None:
            s[Sum.VIEW_LEVEL] += ws * level
            s[Sum.VIEW_LEVEL_W] += ws
    elif ev.type in ("add_to_cart", "purchase") and ratio is not None:
        s[Sum.BUY_W] += ws
        s[Sum.BUY_RATIO] += ws * ratio
    elif ev.type == "review" and ev.rating is not None:
        s[Sum.RATING] += ws * ev.rating
        s[Sum.RATING_W] += ws
    if category is not None and ev.type != "review":
        seg = 0 if ev.type == "view" else 1 if ev.type == "click" else 2
        state.buckets[seg * spec.n_buckets + category_bucket(category, spec.n_buckets)] += wl
    return state


def user_features(state: UserState, spec: FeatureSpec, now: float) -> list[float]:
    """The feature vector in ``feature_names(spec)`` order, decayed to event time ``now``.

    Ratios are shrunk toward neutral values with a pseudo-count of one so that a user with a
    single event does not look extreme.
    """
    n_types = len(EVENT_TYPES)
    dt = max(0.0, now - state.t) if state.t > -math.inf else 0.0
    out = []
    for w, tau in enumerate(spec.windows_s):
        f = math.exp(-dt / tau)
        out += [math.log1p(c * f) for c in state.counts[w * n_types:(w + 1) * n_types]]
    lw = len(spec.windows_s) - 1  # rates over the longest window (decay cancels in ratios)
    views, clicks, carts, buys = (state.counts[lw * n_types + i] for i in range(4))
    out += [clicks / (views + 1.0), carts / (views + 1.0), buys / (views + 1.0)]
    gap = state.t - state.prev_t if state.prev_t > -math.inf else 0.0
    out += [math.log1p(min(gap, 30 * 86400.0)), math.log1p(state.depth)]
    s = state.sums
    view_ratio = (s[Sum.VIEW_RATIO] + 1.0) / (s[Sum.VIEW_W] + 1.0)
    buy_ratio = (s[Sum.BUY_RATIO] + view_ratio) / (s[Sum.BUY_W] + 1.0)
    out += [view_ratio, buy_ratio - view_ratio, s[Sum.VIEW_LOG_BASE] / (s[Sum.VIEW_LOG_BASE_W] + 1.0),
            s[Sum.VIEW_LEVEL] / (s[Sum.VIEW_LEVEL_W] + 1.0), (s[Sum.RATING] + 3.0) / (s[Sum.RATING_W] + 1.0)]
    per_bucket = state.buckets[:spec.n_buckets]  # views
    total = sum(per_bucket)
    out += [b / (total + 1.0) for b in per_bucket]
    return out


# category standing: floor of the view share (an unseen category stays finite), and the prior clicks
# and carts per view that a user's own rates start from (pseudo-count: one view)
_SHARE_FLOOR, _CLICK_PRIOR, _CART_PRIOR = 0.02, 0.3, 0.1


def _standing(state: UserState, nb: int, buckets: range | list[int]) -> list[tuple[float, float, float]]:
    """(affinity, click rate, cart rate) of each of ``buckets`` (see :func:`category_profile`)."""
    b = state.buckets
    total = sum(b[:nb]) + 1.0
    click_rate, cart_rate = (sum(b[nb:2 * nb]) + _CLICK_PRIOR) / total, (sum(b[2 * nb:]) + _CART_PRIOR) / total
    return [(math.log(b[k] / total + _SHARE_FLOOR), (b[nb + k] + click_rate) / (b[k] + 1.0),
             (b[2 * nb + k] + cart_rate) / (b[k] + 1.0)) for k in buckets]


def category_profile(state: UserState, spec: FeatureSpec) -> list[list[float]]:
    """The user's standing with every category bucket: three rows of ``n_buckets``.

    * ``cat_affinity``: log of the bucket's share of the user's views (plus a floor, so an unseen
      category is finite); how much the user looks at the category;
    * ``cat_click_rate``, ``cat_cart_rate``: clicks and carts (purchases included) per view in the
      bucket, shrunk toward the user's own rate over all buckets with a pseudo-count of one view.
      Interest, not just attention: who clicks and buys in a category likes it.
    """
    cols = _standing(state, spec.n_buckets, range(spec.n_buckets))
    return [list(row) for row in zip(*cols, strict=True)]


def category_profiles(buckets: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """:func:`category_profile` of many users at once: ``buckets [T, 3 * n_buckets]`` (their states'
    ``buckets``) -> ``[T, 3, n_buckets]``. The serving path's batch form; the same numbers."""
    b = np.asarray(buckets, np.float64).reshape(len(buckets), len(SEGMENTS), spec.n_buckets)
    views, clicks, carts = b[:, 0], b[:, 1], b[:, 2]
    total = views.sum(axis=1, keepdims=True) + 1.0
    click_rate = (clicks.sum(axis=1, keepdims=True) + _CLICK_PRIOR) / total
    cart_rate = (carts.sum(axis=1, keepdims=True) + _CART_PRIOR) / total
    return np.stack([np.log(views / total + _SHARE_FLOOR), (clicks + click_rate) / (views + 1.0),
                     (carts + cart_rate) / (views + 1.0)], axis=1)


def item_features(state: UserState, spec: FeatureSpec, *, base_price: float, unit_cost: float,
                  category: str, conv_lift: float = 0.0, log_slope: float = 0.0) -> list[float]:
    """Per (user, item) features in ``ITEM_FEATURE_NAMES`` order; ``conv_lift`` and ``log_slope`` are the
    item's entries in the model bundle's item table (0 for an item the training history did not have)."""
    [(affinity, click, cart)] = _standing(state, spec.n_buckets, [category_bucket(category, spec.n_buckets)])
    return [math.log(base_price), affinity, unit_cost / base_price, click, cart, conv_lift, log_slope]


def encode_state(state: UserState) -> bytes:
    """Compact bytes for a table value / changelog record (versioned)."""
    return orjson.dumps([STATE_VERSION, state.t, state.prev_t, state.counts, state.sums,
                         state.buckets, state.session, state.depth],
                        option=orjson.OPT_SERIALIZE_NUMPY)


def decode_state(data: bytes, spec: FeatureSpec = FeatureSpec()) -> UserState:
    """Inverse of :func:`encode_state`; -inf round-trips through JSON null.

    A state written with another bucket layout (older workers kept 8 view buckets) has its
    category counts reset: the buckets hash differently, and they refill within the window.
    """
    v, t, prev_t, counts, sums, buckets, session, depth = orjson.loads(data)
    if v != STATE_VERSION:
        raise ValueError(f"user state version {v} is not {STATE_VERSION}")
    if len(buckets) != len(SEGMENTS) * spec.n_buckets:
        buckets = [0.0] * (len(SEGMENTS) * spec.n_buckets)
    return UserState(-math.inf if t is None else t, -math.inf if prev_t is None else prev_t,
                     counts, sums + [0.0] * (N_SUMS - len(sums)), buckets, session, depth)
