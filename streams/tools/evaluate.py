"""Closed-loop A/B evaluation: price decisions joined with the purchases that follow.

``pricing-evaluate --exposures var/demo/run`` reads the exposure log of
:mod:`models.lab.live_market`; ``pricing-evaluate --kafka`` reads the prices, clickstream
and catalog topics named by the ``PRICING_*`` settings (any run, simulated or not). Either way the
input becomes two tables, **exposures** (a user saw an item at a price, in an arm) and
**purchases**, and the same code does the rest:

1. attribution: a purchase counts for the newest exposure of the same (user, item) at or before
   it and at most ``window_s`` earlier (:func:`attribute`);
2. per arm, over users (a user's arm is the arm of their priced exposures; their timed-out
   exposures, shown the base price, stay in it: intention to treat): users, exposures,
   conversion, revenue and profit per user with 95 % bootstrap intervals over users, and the lift
   of treatment over control with its interval (:func:`arm_stats`, :func:`lift`); with a uniform
   arm, the lift of uniform over control (repricing) and of treatment over uniform (what
   personalization adds beyond it);
3. for simulated runs (the market's truth is known): expected profit per exposure of the shown
   prices, the base price, the best uniform price and the oracle on the *same* exposures, and
   ``efficiency = (treatment - uniform) / (oracle - uniform)`` (:func:`truth_stats`);
4. fairness: price dispersion by user segment (quartiles of true sensitivity when known, else of
   activity) and the share of buyers who paid more than the base price (:func:`fairness`);
5. welfare: consumer surplus per arm (truth), users better and worse off than at the uniform
   prices, purchases above the uniform price (:func:`streams.tools.welfare.welfare`).

>>> import numpy as np
>>> e = Exposures(np.array(["u", "u"]), np.array(["i", "i"]), np.array(["treatment"] * 2),
...               np.array([9.0, 11.0]), np.array([10.0, 10.0]), np.array([6.0, 6.0]), np.array([0.0, 100.0]))
>>> p = Purchases(np.array(["u"]), np.array(["i"]), np.array([11.0]), np.array([1]), np.array([150.0]))
>>> attribute(e, p, window_s=3600.0).bought.tolist()   # the newest exposure before it wins
[False, True]
"""

from __future__ import annotations

import bisect
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from streams.kafka_config import kafka_python_config
from streams.schemas import SchemaError, decision_id, parse_catalog, parse_click, parse_price
from streams.settings import Settings

from .stats import bootstrap_sums, percentile_ci
from .welfare import welfare

F = NDArray[np.float64]
ARMS = ("control", "uniform", "treatment")  # uniform: one learnt price per item (absent from two-arm runs)


# ---------------------------------------------------------------- the two tables
@dataclass
class Exposures:
    """Columns of exposures; ``user_index``/``item_index``/``buy_prob`` only for simulated runs."""

    user: NDArray[Any]
    item: NDArray[Any]
    arm: NDArray[Any]           # control | uniform | treatment | none (no price arrived: base price shown)
    price: F
    base_price: F
    unit_cost: F
    ts: F
    user_index: NDArray[np.int64] | None = None
    item_index: NDArray[np.int64] | None = None
    expected_conversion: F | None = None   # the model's conversion at the shown price (NaN if none)
    bought: NDArray[np.bool_] | None = None     # filled by attribute()
    revenue: F | None = None
    profit: F | None = None

    def __len__(self) -> int:
        return len(self.user)

    def take(self, mask: NDArray[np.bool_]) -> Exposures:
        """The rows where ``mask`` is True."""
        return Exposures(**{k: (v[mask] if isinstance(v, np.ndarray) else v) for k, v in vars(self).items()})


@dataclass
class Purchases:
    """Columns of purchase events: who bought which item, at what price, how many, when."""

    user: NDArray[Any]
    item: NDArray[Any]
    price: F
    quantity: NDArray[np.int64]
    ts: F


def attribute(exp: Exposures, pur: Purchases, window_s: float) -> Exposures:
    """Credit each purchase to the newest exposure of its (user, item) with
    ``exposure.ts <= purchase.ts <= exposure.ts + window_s``; fills bought, revenue and profit.

    Profit uses the exposure's unit cost; a purchase with no such exposure is not credited.
    """
    by_key: dict[tuple[str, str], tuple[list[float], list[int]]] = defaultdict(lambda: ([], []))
    for k in np.argsort(exp.ts, kind="stable"):
        ts, idx = by_key[(exp.user[k], exp.item[k])]
        ts.append(float(exp.ts[k]))
        idx.append(int(k))
    bought = np.zeros(len(exp), bool)
    revenue, profit = np.zeros(len(exp)), np.zeros(len(exp))
    for u, i, price, qty, t in zip(pur.user, pur.item, pur.price, pur.quantity, pur.ts, strict=True):
        entry = by_key.get((u, i))
        if entry is None:
            continue
        j = bisect.bisect_right(entry[0], float(t)) - 1
        if j < 0 or t - entry[0][j] > window_s:
            continue
        k = entry[1][j]
        bought[k] = True
        revenue[k] += price * qty
        profit[k] += (price - exp.unit_cost[k]) * qty
    exp.bought, exp.revenue, exp.profit = bought, revenue, profit
    return exp


def user_arms(exp: Exposures) -> tuple[NDArray[Any], NDArray[Any], NDArray[np.int64]]:
    """``(users, arm per user, user position of every exposure)``; a user's arm is the most common
    arm of their priced exposures, ``none`` when no price ever arrived for them."""
    users, pos = np.unique(exp.user, return_inverse=True)
    arm = np.full(len(users), "none", dtype=object)
    for a in ARMS:  # "treatment" last: a tie (never happens with hashed arms) goes to treatment
        n = np.bincount(pos, exp.arm == a, minlength=len(users))
        other = np.bincount(pos, (exp.arm != a) & (exp.arm != "none"), minlength=len(users))
        arm[(n > 0) & (n >= other)] = a
    return users, arm, pos


# ---------------------------------------------------------------- intervals: streams.tools.stats


# ---------------------------------------------------------------- per arm and lift
@dataclass
class ArmStats:
    """One arm: counts, rates and per-user means with 95 % intervals ``(lo, hi)``."""

    arm: str
    users: int
    exposures: int
    timeouts: int
    purchases: int
    conversion: float
    conversion_ci: tuple[float, float]
    revenue_per_user: float
    revenue_per_user_ci: tuple[float, float]
    profit_per_user: float
    profit_per_user_ci: tuple[float, float]
    mean_price_ratio: float
    replicates: dict[str, F] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """Plain values (no replicates)."""
        d = asdict(self)
        d.pop("replicates")
        return d


def per_user(exp: Exposures, pos: NDArray[np.int64], n_users: int) -> dict[str, F]:
    """Per-user sums: exposures, purchases (bought exposures), revenue, profit."""
    assert exp.bought is not None and exp.revenue is not None and exp.profit is not None
    return {"exposures": np.bincount(pos, minlength=n_users).astype(float),
            "bought": np.bincount(pos, exp.bought, minlength=n_users),
            "revenue": np.bincount(pos, exp.revenue, minlength=n_users),
            "profit": np.bincount(pos, exp.profit, minlength=n_users)}


def arm_stats(exp: Exposures, arm: str, reps: int = 2000, seed: int = 0) -> ArmStats:
    """Stats of the users of one arm (``exp`` holds only that arm's users' exposures)."""
    users, pos = np.unique(exp.user, return_inverse=True)
    cols = per_user(exp, pos, len(users))
    n = max(len(users), 1)
    rng = np.random.default_rng(seed)
    ex, bo, rv, pr = bootstrap_sums([cols[k] for k in ("exposures", "bought", "revenue", "profit")], reps, rng)
    with np.errstate(invalid="ignore", divide="ignore"):
        rep = {"conversion": bo / ex, "revenue_per_user": rv / n, "profit_per_user": pr / n}
    n_exp = max(len(exp), 1)
    return ArmStats(arm, len(users), len(exp), int((exp.arm == "none").sum()), int(exp.bought.sum()),  # type: ignore[union-attr]
                    float(cols["bought"].sum() / n_exp), percentile_ci(rep["conversion"]),
                    float(cols["revenue"].sum() / n), percentile_ci(rep["revenue_per_user"]),
                    float(cols["profit"].sum() / n), percentile_ci(rep["profit_per_user"]),
                    float(np.mean(exp.price / exp.base_price)) if len(exp) else math.nan, rep)


def lift(t: ArmStats, c: ArmStats, metric: str = "profit_per_user") -> tuple[float, float, float]:
    """Relative lift ``t/c - 1`` of ``metric`` with the bootstrap interval ``(lo, estimate, hi)``
    (the two arms' users are resampled independently)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        lo, hi = percentile_ci(t.replicates[metric] / c.replicates[metric] - 1.0)
        est = getattr(t, metric) / getattr(c, metric) - 1.0 if getattr(c, metric) else math.nan
    return lo, est, hi


# ---------------------------------------------------------------- the truth (simulated runs)
def efficiency(policy: float, uniform: float, oracle: float) -> float:
    """``(policy - uniform) / (oracle - uniform)``: 0 = one price per item, 1 = knowing every user.

    >>> round(efficiency(1.9, 1.8, 2.0), 6)
    0.5
    >>> math.isnan(efficiency(1.0, 2.0, 2.0))   # no edge to capture: undefined
    True

    Undefined (NaN) too when the oracle's edge is below 0.1 % of the uniform profit: in a market
    without heterogeneity that "edge" is only the uniform price grid's rounding.
    """
    edge = oracle - uniform
    return (policy - uniform) / edge if edge > NO_EDGE * abs(uniform) else math.nan


NO_EDGE = 1e-3


def truth_stats(exp: Exposures, market: Any, reps: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Expected profit per exposure under the true demand on ``exp``'s (user, item) exposures:
    shown prices, base, best uniform price per item (for this population), oracle; efficiency of
    the shown prices with a user-bootstrap interval (the uniform prices stay fixed)."""
    assert exp.user_index is not None and exp.item_index is not None
    u, i = exp.user_index, exp.item_index
    if len(u) == 0:
        return {"n_exposures": 0}
    cost = market.cost[i]
    uniform_p = market.uniform_prices((u, i))[i]
    prices = {"shown": exp.price, "base": market.base[i], "uniform": uniform_p, "oracle": market.oracle_price(u, i)}
    per = {k: (p - cost) * market.buy_prob(u, i, p) for k, p in prices.items()}
    users, pos = np.unique(u, return_inverse=True)
    cols = [np.bincount(pos, minlength=len(users)).astype(float)] + [
        np.bincount(pos, per[k], minlength=len(users)) for k in ("shown", "uniform", "oracle")]
    n, s, un, o = bootstrap_sums(cols, reps, np.random.default_rng(seed))
    with np.errstate(invalid="ignore", divide="ignore"):
        eff_rep = np.where(o - un > NO_EDGE * np.abs(un), (s - un) / (o - un), np.nan)
    out: dict[str, Any] = {f"{k}_profit": float(v.mean()) for k, v in per.items()}
    out.update({f"{k}_price_ratio": float(np.mean(p / market.base[i])) for k, p in prices.items()})
    out["efficiency"] = efficiency(out["shown_profit"], out["uniform_profit"], out["oracle_profit"])
    out["efficiency_ci"] = percentile_ci(eff_rep)
    out["over_uniform"] = out["shown_profit"] / out["uniform_profit"]
    out["over_uniform_ci"] = percentile_ci(s / un)
    out["n_exposures"], out["n_users"] = int(len(u)), int(len(users))
    out["expected_profit_per_user"] = float(per["shown"].sum() / len(users))
    return out


def by_day(exp: Exposures, market: Any, day_s: float = 86400.0) -> dict[str, Any]:
    """Efficiency and shown/uniform per simulated day of the run (day 0 = the first exposure's):
    shows how personalization improves as the users' feature windows fill up."""
    if len(exp) == 0:
        return {}
    day = ((exp.ts - exp.ts.min()) // day_s).astype(int)
    out = {}
    for d in np.unique(day):
        t = truth_stats(exp.take(day == d), market, reps=100)
        out[str(int(d))] = {k: t[k] for k in ("n_exposures", "efficiency", "over_uniform", "shown_price_ratio")}
    return out


# ---------------------------------------------------------------- fairness
def segments(exp: Exposures, market: Any | None, n: int = 4) -> tuple[NDArray[np.int64], str]:
    """Segment (0..n-1) of every exposure's user: quantiles of the true price sensitivity when the
    market is known (0 = least sensitive), else of activity (exposures per user; 0 = least active)."""
    users, pos = np.unique(exp.user, return_inverse=True)
    value, name = np.zeros(0), ""
    if market is not None and exp.user_index is not None and len(users):
        first = np.zeros(len(users), int)
        first[pos[::-1]] = np.arange(len(pos))[::-1]
        value, name = market.beta[exp.user_index[first]], "true price sensitivity (beta) quartile"
    if len(value) == 0 or np.ptp(value) < 1e-9:  # no truth, or all users alike: segment by activity
        value, name = np.bincount(pos, minlength=len(users)).astype(float), "activity (exposures) quartile"
    edges = np.quantile(value, np.linspace(0, 1, n + 1)[1:-1]) if len(value) else np.zeros(n - 1)
    return np.searchsorted(edges, value, side="right")[pos], name


def fairness(exp: Exposures, market: Any | None = None, n: int = 4) -> dict[str, Any]:
    """Price dispersion per segment and arm, and the share of buyers who paid more than base."""
    assert exp.bought is not None
    seg, name = segments(exp, market, n)
    ratio = exp.price / exp.base_price
    rows = []
    for a in (*ARMS, "none"):
        for k in range(n):
            m = (exp.arm == a) & (seg == k)
            if not m.any():
                continue
            r = ratio[m]
            rows.append({"arm": a, "segment": k, "users": int(len(np.unique(exp.user[m]))), "exposures": int(m.sum()),
                         "mean_ratio": float(r.mean()), "sd_ratio": float(r.std()),
                         "p10_ratio": float(np.quantile(r, 0.1)), "p90_ratio": float(np.quantile(r, 0.9)),
                         "above_base": float(np.mean(r > 1.0 + 1e-9))})
    paid: dict[str, Any] = {}
    for a in ARMS:
        m = exp.arm == a
        if a == "uniform" and not m.any():
            continue  # a two-arm run
        buyers = np.unique(exp.user[m & exp.bought])
        above = np.unique(exp.user[m & exp.bought & (ratio > 1.0 + 1e-9)])
        users = np.unique(exp.user[m])
        paid[a] = {"buyers": int(len(buyers)), "buyers_paid_above_base": int(len(above)),
                   "share_of_buyers": len(above) / len(buyers) if len(buyers) else math.nan,
                   "share_of_users": len(above) / len(users) if len(users) else math.nan}
    return {"segment_by": name, "segments": rows, "paid_above_base": paid}


# ---------------------------------------------------------------- the whole evaluation
@dataclass
class Evaluation:
    """Everything the table and the report show."""

    arms: dict[str, ArmStats]
    lift: dict[str, tuple[float, float, float]]
    truth: dict[str, dict[str, Any]]
    fairness: dict[str, Any]
    counts: dict[str, Any]
    window_s: float
    # profit per user: "uniform_over_control" (repricing) and "treatment_over_uniform" (what personalization
    # adds beyond it), (lo, estimate, hi); empty without a uniform arm
    arm_lift: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    welfare: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"arms": {k: v.as_dict() for k, v in self.arms.items()}, "lift": self.lift, "truth": self.truth,
                "fairness": self.fairness, "counts": self.counts, "window_s": self.window_s,
                "arm_lift": self.arm_lift, "welfare": self.welfare}


def evaluate(exp: Exposures, pur: Purchases, *, window_s: float = 86400.0, market: Any | None = None,
             reps: int = 2000, seed: int = 0) -> Evaluation:
    """Attribute, then per-arm stats with intervals, lift, truth (if ``market``) and fairness."""
    attribute(exp, pur, window_s)
    users, arm_of_user, pos = user_arms(exp)
    user_arm = arm_of_user[pos]
    # the uniform arm only when it had users: a two-arm run reports as before
    present = tuple(a for a in ARMS if a != "uniform" or (arm_of_user == a).any())
    arms = {a: arm_stats(exp.take(user_arm == a), a, reps, seed + k) for k, a in enumerate(ARMS) if a in present}
    lifts = {m: lift(arms["treatment"], arms["control"], m)
             for m in ("profit_per_user", "revenue_per_user", "conversion")}
    arm_lift = {} if "uniform" not in arms else {
        "uniform_over_control": lift(arms["uniform"], arms["control"]),
        "treatment_over_uniform": lift(arms["treatment"], arms["uniform"])}
    truth: dict[str, dict[str, Any]] = {}
    if market is not None and exp.user_index is not None:
        for a in present:
            truth[a] = truth_stats(exp.take(user_arm == a), market, reps=min(reps, 1000), seed=seed)
        truth["treatment_by_day"] = by_day(exp.take(user_arm == "treatment"), market)
    counts = {"exposures": len(exp), "users": int(len(users)), "purchases_in": int(len(pur.user)),
              "purchases_attributed": int(np.count_nonzero(exp.bought)) if exp.bought is not None else 0,
              "timeouts": int((exp.arm == "none").sum()), "users_without_arm": int((arm_of_user == "none").sum())}
    truth_market = market if exp.user_index is not None else None
    return Evaluation(arms, lifts, truth, fairness(exp, market), counts, window_s, arm_lift,
                      welfare(exp, user_arm, present, truth_market, reps=min(reps, 1000), seed=seed))


# ---------------------------------------------------------------- inputs
def load_exposure_log(path: str | Path) -> tuple[Exposures, Purchases, dict[str, Any]]:
    """The closed loop's ``exposures.jsonl`` (a file, or the run directory with ``meta.json``):
    exposures, the purchases they led to (at ``purchase_ts``) and the run's meta."""
    p = Path(path)
    log = p / "exposures.jsonl" if p.is_dir() else p
    meta_path = log.parent / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    rows = [orjson.loads(line) for line in log.read_bytes().splitlines() if line.strip()]
    col = lambda k, dt=None: np.array([r[k] for r in rows], dtype=dt)  # noqa: E731
    nan = lambda v: math.nan if v is None else v  # noqa: E731
    exp = Exposures(col("user_id", object), col("item_id", object), col("arm", object), col("price", float),
                    col("base_price", float), col("unit_cost", float), col("ts", float),
                    col("user_index", np.int64) if rows and "user_index" in rows[0] else None,
                    col("item_index", np.int64) if rows and "item_index" in rows[0] else None,
                    np.array([nan(r.get("expected_conversion")) for r in rows], float))
    bought = [r for r in rows if r.get("purchase_ts") is not None]
    pur = Purchases(np.array([r["user_id"] for r in bought], object), np.array([r["item_id"] for r in bought], object),
                    np.array([r["price"] for r in bought], float), np.ones(len(bought), np.int64),
                    np.array([r["purchase_ts"] for r in bought], float))
    return exp, pur, meta


def load_kafka(s: Settings, *, exclude_prefix: str = "probe-", timeout_s: float = 60.0,
               since: float = -math.inf, until: float = math.inf) -> tuple[Exposures, Purchases, dict[str, Any]]:
    """Exposures and purchases from the topics of ``s`` (everything up to their current end).

    Only views with event time in ``[since, until)`` are exposures, and only purchases from
    ``since`` on count: the experiment's window, without the history before it (for instance a
    closed loop's warm-up); purchases after ``until`` still attribute to the window's views.

    An exposure is a ``view`` on the clickstream with the decision the worker made for that
    view's own item (``decision_id(event_id, item_id)``); a view without one is an exposure at
    the price on the event, arm ``none``. Unit costs come from the catalog topic.
    """

    prices = {pe.decision_id: pe for pe in _read_topic(s, s.topic_prices, parse_price, timeout_s)}
    cost = {c.item_id: c.unit_cost for c in _read_topic(s, s.topic_catalog, parse_catalog, timeout_s)}
    clicks = [ev for ev in _read_topic(s, s.topic_clickstream, lambda b: parse_click(b, now=math.inf), timeout_s)
              if not ev.user_id.startswith(exclude_prefix or "\x00") and since <= ev.ts]
    views = [e for e in clicks if e.type == "view" and e.ts < until]
    buys = [e for e in clicks if e.type == "purchase"]
    rows = []
    for v in views:
        pe = prices.get(decision_id(v.event_id, v.item_id))
        rows.append((v.user_id, v.item_id, pe.arm if pe else "none", pe.price if pe else v.price,
                     pe.base_price if pe else v.price, cost.get(v.item_id, math.nan), v.ts,
                     math.nan if pe is None or pe.expected_conversion is None else pe.expected_conversion))
    cols: list[Any] = list(zip(*rows, strict=True)) if rows else [()] * 8
    f = [np.array(c, float) for c in cols[3:8]]
    exp = Exposures(np.array(cols[0], object), np.array(cols[1], object), np.array(cols[2], object),
                    f[0], f[1], f[2], f[3], expected_conversion=f[4])
    pur = Purchases(np.array([b.user_id for b in buys], object), np.array([b.item_id for b in buys], object),
                    np.array([b.price for b in buys], float), np.array([b.quantity for b in buys], np.int64),
                    np.array([b.ts for b in buys], float))
    return exp, pur, {"source": "kafka", "decisions": len(prices), "views": len(views), "topics": {
        "prices": s.topic_prices, "clickstream": s.topic_clickstream, "catalog": s.topic_catalog}}


def _read_topic(s: Settings, topic: str, parse: Callable[[bytes], Any], timeout_s: float) -> list[Any]:
    """Every parsable record of ``topic`` from the beginning to its end offsets at call time."""
    from kafka import KafkaConsumer, TopicPartition


    consumer = KafkaConsumer(enable_auto_commit=False, group_id=None, **kafka_python_config(s))
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: not read to its end within {timeout_s:.0f} s")
            for msgs in consumer.poll(timeout_ms=500, max_records=50_000).values():
                for m in msgs:
                    if m.value is None:
                        continue
                    try:
                        out.append(parse(m.value))
                    except SchemaError:
                        continue
        return out
    finally:
        consumer.close()
