"""Off-policy evaluation: what a candidate bundle would earn, estimated from logged, explored prices.

The worker's exploration (``PRICING_EXPLORATION_WIDTH``) draws each treatment price around its
decision and logs the density of ``log(price)`` under the draw (``PriceEvent.propensity``, policy
``dither:<w>``). A candidate bundle would have shown price ``q`` where the log shows ``p``. Prices
are continuous, so no logged price equals ``q`` exactly; the estimators smooth with a kernel of
bandwidth ``h`` in log price (Kallus & Zhou, *Policy evaluation and optimization with continuous
treatments*, AISTATS 2018):

* **IPW**: ``mean(K_h(log p - log q) / f(log p) * r)``, with ``r = (p - cost) * bought`` the logged
  profit of the exposure and ``f`` the logged density;
* **DM** (direct method): ``mean(m(q))`` with ``m(q) = (q - cost) * P(buy | x, q)`` from a demand
  model (here the logging bundle's price model, which did not choose the candidate);
* **DR** (doubly robust): ``DM + mean(K_h(...) / f * (r - m(p)))``: unbiased (up to the kernel's
  smoothing) if either the propensities or the demand model are right.

Intervals are a bootstrap over users (a user's exposures are resampled together). Only explored
rows enter (a point mass has no density); ``support`` says what share of them lie within ``h`` of
the candidate's price: a candidate far from what was logged cannot be judged from these logs.

>>> import numpy as np
>>> k = epanechnikov(np.array([0.0, 0.5, 1.0, 2.0]))
>>> [round(float(v), 3) for v in k]
[0.75, 0.562, 0.0, 0.0]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.bundle import BundleError, load_bundle
from streams.catalog import Catalog
from streams.pricing import Guardrails, ItemBatch, band_batch, conversion, decide_batch
from streams.schemas import PriceEvent, decision_id
from streams.scoring import OnnxScorer, Scorer
from streams.settings import load_settings
from streams.version import add_version

from .dataset import TABLE, EventLog, TrainingData, apply_decisions, build_rows, read_catalog, read_events, read_prices

F = np.ndarray


def epanechnikov(z: F) -> F:
    """The Epanechnikov kernel ``0.75 (1 - z^2)`` on ``|z| < 1`` (integrates to 1)."""
    return np.where(np.abs(z) < 1.0, 0.75 * (1.0 - z * z), 0.0)


def epanechnikov_cdf(z: F) -> F:
    """``P(Z <= z)`` under the Epanechnikov kernel."""
    u = np.clip(z, -1.0, 1.0)
    return np.asarray(0.5 + 0.75 * (u - u**3 / 3.0), np.float64)


@dataclass
class Logged:
    """Explored exposures: what was shown, at what density, and what came of it."""

    user: F          # [N] user index (for the bootstrap)
    price: F         # [N] the logged (shown) price
    cost: F          # [N] unit cost
    bought: F        # [N] 0/1
    density: F       # [N] density of log(price) under the logging draw
    lo: F | None = None   # [N] the guardrail band: no price, logged or targeted, is outside it
    hi: F | None = None

    @property
    def reward(self) -> F:
        """Logged profit per exposure."""
        return (self.price - self.cost) * self.bought


@dataclass(frozen=True)
class Estimate:
    """One estimator's value per exposure with its 95 % bootstrap interval."""

    value: float
    lo: float
    hi: float


def weights(log: Logged, target: F, h: float) -> F:
    """Importance weight per row: the kernel around the target's log price over the logged density.

    A target at an edge of its guardrail band (a common place for a decision) would lose the half
    of the kernel outside the band, where no price is ever shown: the kernel is renormalised to
    its mass inside the band (``lo``/``hi``), so such targets are not undervalued.
    """
    k = epanechnikov((np.log(log.price) - np.log(target)) / h) / h
    if log.lo is not None and log.hi is not None:
        lt = np.log(target)
        mass = epanechnikov_cdf((np.log(log.hi) - lt) / h) - epanechnikov_cdf((np.log(log.lo) - lt) / h)
        k = k / np.maximum(mass, 1e-3)
    return np.asarray(k / log.density, np.float64)


def _terms(log: Logged, target: F, m_target: F | None, m_logged: F | None, h: float) -> dict[str, F]:
    """Per-row terms whose means are the estimates."""
    w = weights(log, target, h)
    terms = {"ipw": w * log.reward}
    if m_target is not None and m_logged is not None:
        terms["dm"] = m_target
        terms["dr"] = m_target + w * (log.reward - m_logged)
    return terms


def _bootstrap(log: Logged, terms: dict[str, F], reps: int, seed: int) -> dict[str, Estimate]:
    """Mean of each per-row term with a 95 % interval from a Poisson bootstrap over users."""
    uu, inv = np.unique(log.user, return_inverse=True)
    cnt = np.bincount(inv, minlength=len(uu)).astype(np.float64)
    sums = {k: np.bincount(inv, v, minlength=len(uu)) for k, v in terms.items()}
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for k, v in terms.items():
        boot = []
        for _ in range(max(reps // 100, 1)):
            wts = rng.poisson(1.0, (min(100, reps), len(uu))).astype(np.float64)
            boot.append((wts @ sums[k]) / np.maximum(wts @ cnt, 1.0))
        lo, hi = np.quantile(np.concatenate(boot), [0.025, 0.975])
        out[k] = Estimate(float(v.mean()), float(lo), float(hi))
    return out


def estimate(log: Logged, target: F, *, m_target: F | None = None, m_logged: F | None = None,
             bandwidth: float = 0.02, reps: int = 500, seed: int = 0) -> dict[str, Any]:
    """IPW (and, given the demand model's expected profit at the target and logged prices, DM and DR)
    estimates of the target policy's profit per exposure, with user-clustered bootstrap intervals."""
    if len(log.price) == 0:
        raise ValueError("no explored exposures to evaluate from: log with PRICING_EXPLORATION_WIDTH > 0")
    out: dict[str, Any] = dict(_bootstrap(log, _terms(log, target, m_target, m_logged, bandwidth), reps, seed))
    z = np.abs(np.log(log.price) - np.log(target)) / bandwidth
    w = weights(log, target, bandwidth)
    out["support"] = float(np.mean(z < 1.0))
    out["ess"] = float(w.sum() ** 2 / max(float((w * w).sum()), 1e-300))
    out["rows"] = len(log.price)
    return out


def difference(log: Logged, target: F, baseline: F, *, m_target: F, m_baseline: F, m_logged: F,
               bandwidth: float = 0.02, reps: int = 500, seed: int = 0) -> dict[str, Estimate]:
    """Paired estimates of ``value(target) - value(baseline)`` on the same exposures (IPW, DM, DR):
    far narrower than two separate intervals, since both ride on the same users' noise."""
    a = _terms(log, target, m_target, m_logged, bandwidth)
    b = _terms(log, baseline, m_baseline, m_logged, bandwidth)
    return _bootstrap(log, {k: a[k] - b[k] for k in a}, reps, seed)


# ---------------------------------------------------------------- a candidate bundle on logged decisions
def item_terms(data: TrainingData, rows: F, catalog: Catalog) -> ItemBatch:
    """The catalog terms of the exposure ``rows``' items."""
    terms = [catalog.get(data.item_ids[int(k)]) for k in data.row_iid[rows]]
    return ItemBatch(*(np.array([getattr(t, f) for t in terms], np.float64)
                       for f in ("base_price", "unit_cost", "min_price", "max_price")))


def bundle_prices(scorer: Scorer, data: TrainingData, rows: F, catalog: Catalog,
                  guardrails: Guardrails) -> tuple[F, F, F]:
    """What ``scorer``'s bundle would decide on the exposure ``rows``: ``(price, a, b)`` per row.

    The item table's columns are the bundle's own; the step limit is left out (the logs do not say what
    the candidate would have shown before).
    """
    ids = [data.item_ids[int(k)] for k in data.row_iid[rows]]
    item = data.item[rows].copy()
    item[:, TABLE] = scorer.item_table(ids)
    a, b, _ = scorer.price(data.user[rows], item, np.ones(len(ids), np.float32))
    return decide_batch(a, b, item_terms(data, rows, catalog), guardrails).price, a, b


def evaluate_bundle(log: EventLog, catalog: Catalog, prices: list[PriceEvent], candidate: Scorer,
                    logging: Scorer, guardrails: Guardrails, *, bandwidth: float = 0.02, reps: int = 500,
                    seed: int = 0) -> dict[str, Any]:
    """IPW, DM and DR estimates of ``candidate``'s profit per exposure on the explored treatment
    exposures of a logged run, beside what the logging policy earned on the same exposures."""
    joined, stats = apply_decisions(log, prices)
    by_id = {p.decision_id: p for p in prices}
    data = build_rows(joined, catalog)
    assert data.row_log is not None
    logged = [by_id.get(decision_id(joined.event_ids[int(n)], joined.item_ids[int(joined.item[n])]))  # type: ignore[index]
              for n in data.row_log]
    rows = np.array([pe is not None and pe.arm == "treatment" and pe.policy.startswith("dither:") for pe in logged])
    if not rows.any():
        raise ValueError("no explored treatment exposures in these logs: price with PRICING_EXPLORATION_WIDTH > 0 "
                         "and keep the prices topic")
    idx = np.flatnonzero(rows)
    base = np.array([catalog.get(data.item_ids[int(k)]).base_price for k in data.row_iid[idx]])  # type: ignore[union-attr]
    cost = np.array([catalog.get(data.item_ids[int(k)]).unit_cost for k in data.row_iid[idx]])  # type: ignore[union-attr]
    shown = data.price_ratio[idx].astype(np.float64) * base
    band = band_batch(item_terms(data, rows, catalog), guardrails)
    lg = Logged(user=data.row_uid[idx], price=shown, cost=cost, bought=data.label[idx].astype(np.float64),
                density=np.array([logged[k].propensity for k in idx]),  # type: ignore[union-attr]
                lo=band.lo, hi=band.hi)
    q, _, _ = bundle_prices(candidate, data, rows, catalog, guardrails)
    q_l, a_l, b_l = bundle_prices(logging, data, rows, catalog, guardrails)
    m = lambda p: (p - cost) * conversion(a_l, b_l, base, p)  # noqa: E731 the logging bundle's demand model
    out = estimate(lg, q, m_target=m(q), m_logged=m(shown), bandwidth=bandwidth, reps=reps, seed=seed)
    # against the logging bundle's own decisions (without its exploration), paired on the same exposures
    out["vs_logging"] = difference(lg, q, q_l, m_target=m(q), m_baseline=m(q_l), m_logged=m(shown),
                                   bandwidth=bandwidth, reps=reps, seed=seed)
    out.update({"logged_value": float(lg.reward.mean()), "candidate_price_ratio": float(np.mean(q / base)),
                "logged_price_ratio": float(np.mean(shown / base)), "decisions": stats,
                "candidate": candidate.version, "logging": logging.version, "bandwidth": bandwidth})
    return out


def table(res: dict[str, Any]) -> str:
    """The estimates as a small text table."""
    lines = [f"candidate {res['candidate']} on {res['rows']:,} explored exposures logged by {res['logging']} "
             f"(bandwidth {res['bandwidth']:g} in log price; {res['support']:.0%} of them near the candidate's "
             f"price, effective sample {res['ess']:,.0f})",
             f"{'estimator':<10}{'profit/exposure':>17}{'95% CI':>22}"]
    for k in ("ipw", "dm", "dr"):
        e = res[k]
        lines.append(f"{k.upper():<10}{e.value:>17.4f}{f'[{e.lo:.4f}, {e.hi:.4f}]':>22}")
    lines.append(f"{'logged':<10}{res['logged_value']:>17.4f}   (what the logging policy earned; price/base "
                 f"{res['logged_price_ratio']:.3f}, the candidate's {res['candidate_price_ratio']:.3f})")
    d = res["vs_logging"]["dr"]
    verdict = "better" if d.lo > 0 else "worse" if d.hi < 0 else "not distinguishable"
    lines.append(f"candidate - logging bundle's decisions (DR, paired): {d.value:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]"
                 f": {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``pricing-ope``: estimate what a candidate bundle would earn, from logged explored prices."""
    p = argparse.ArgumentParser(prog="pricing-ope", description=main.__doc__,
                                epilog="The promotion path: train, estimate here, then point CURRENT at the "
                                       "candidate if its DR interval beats the logged value.")
    add_version(p)
    p.add_argument("--events", type=Path, required=True, help="clickstream JSONL (.gz ok) of the logged run")
    p.add_argument("--catalog", type=Path, required=True, help="catalog JSONL")
    p.add_argument("--prices", type=Path, required=True, help="PriceEvents JSONL of the same run (the prices topic)")
    p.add_argument("--candidate", type=Path, required=True, help="bundle directory (or model dir with CURRENT)")
    p.add_argument("--logging", type=Path, required=True,
                   help="the bundle that priced the logged run (its demand model is the DM/DR outcome model)")
    p.add_argument("--bandwidth", type=float, default=0.02, help="kernel half-width in log price")
    p.add_argument("--reps", type=int, default=500, help="bootstrap replicates")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = p.parse_args(argv)
    try:
        candidate, logging = (OnnxScorer(load_bundle(d)) for d in (args.candidate, args.logging))
        log, catalog = EventLog.from_events(read_events(args.events)), read_catalog(args.catalog)
        res = evaluate_bundle(log, catalog, read_prices(args.prices), candidate, logging,
                              Guardrails.from_settings(load_settings()), bandwidth=args.bandwidth, reps=args.reps)
    except (BundleError, ValueError, OSError) as exc:
        print(f"pricing-ope: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        res["vs_logging"] = {k: asdict(v) for k, v in res["vs_logging"].items()}
        print(json.dumps({k: (asdict(v) if isinstance(v, Estimate) else v) for k, v in res.items()}, default=float))
    else:
        print(table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
