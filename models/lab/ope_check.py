"""Off-policy estimates against the truth: does ``pricing-ope`` tell what a candidate would earn?

Run the in-process loop with exploration (``PRICING_EXPLORATION_WIDTH=0.1 pricing-loop-sim ...``),
then: ``python -m models.lab.ope_check --run <loop out> --logging <model dir> --candidate <dir> ...``.
For each candidate bundle it prints the IPW, DM and DR estimates of its profit per exposure on the
run's explored treatment exposures, and the candidate's true expected profit on the same
exposures (the simulated market's demand at the prices the candidate would have shown).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from export.bundle import load_bundle
from models.dataset import EventLog, apply_decisions, build_rows, read_events, read_prices
from models.offpolicy import bundle_prices, evaluate_bundle
from streams.catalog import Catalog
from streams.pricing import Guardrails
from streams.schemas import decision_id
from streams.scoring import OnnxScorer
from streams.settings import load_settings
from streams.version import add_version

from .evaluate import market_of
from .policy_eval import data_market_index


def check(run: Path, logging_dir: Path, candidates: list[Path], bandwidth: float, reps: int) -> list[dict]:
    """Estimates and truth per candidate on the explored exposures of the loop run in ``run``."""
    meta = json.loads((run / "meta.json").read_text())
    market = market_of(meta)
    if market is None:
        raise SystemExit(f"{run}: not a simulated run (no market in meta.json)")
    catalog = Catalog.of(market.catalog())
    log = EventLog.from_events([*read_events(run / "warm_events.jsonl"), *read_events(run / "events.jsonl")])
    prices = read_prices(run / "prices.jsonl")
    settings = load_settings()
    guard = Guardrails.from_settings(settings)
    logging = OnnxScorer(load_bundle(logging_dir))
    joined, _ = apply_decisions(log, prices)
    data = build_rows(joined, catalog)
    by_id = {p.decision_id: p for p in prices}
    assert data.row_log is not None and joined.event_ids is not None
    rows = np.array([(pe := by_id.get(decision_id(joined.event_ids[int(n)], joined.item_ids[int(joined.item[n])])))
                     is not None and pe.arm == "treatment" and pe.policy.startswith("dither:") for n in data.row_log])
    u, i = data_market_index(market, data)
    ur, ir = u[rows], i[rows]
    true_value = lambda q: float(np.mean((q - market.cost[ir]) * market.buy_prob(ur, ir, q)))  # noqa: E731
    q_logging, _, _ = bundle_prices(logging, data, rows, catalog, guard)
    out = []
    for cand in candidates:
        scorer = OnnxScorer(load_bundle(cand))
        res = evaluate_bundle(log, catalog, prices, scorer, logging, guard, bandwidth=bandwidth, reps=reps)
        q, _, _ = bundle_prices(scorer, data, rows, catalog, guard)
        res["truth"], res["truth_logging"] = true_value(q), true_value(q_logging)
        res["candidate_dir"] = str(cand)
        out.append(res)
    return out


def main(argv: list[str] | None = None) -> int:
    """Print each candidate's estimates beside its true value."""
    p = argparse.ArgumentParser(prog="python -m models.lab.ope_check", description=__doc__.split("\n\n")[0])
    add_version(p)
    p.add_argument("--run", type=Path, required=True, help="pricing-loop-sim output directory (explored)")
    p.add_argument("--logging", type=Path, required=True, help="the bundle that priced the run")
    p.add_argument("--candidate", type=Path, action="append", required=True, help="a candidate bundle (repeat)")
    p.add_argument("--bandwidth", type=float, default=0.02)
    p.add_argument("--reps", type=int, default=500)
    args = p.parse_args(argv)
    print("| candidate | IPW [95% CI] | DM | DR [95% CI] | truth | covered (IPW / DR) | support "
          "| DR minus logging's decisions, paired [95% CI] | true difference |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in check(args.run, args.logging, args.candidate, args.bandwidth, args.reps):
        ipw, dm, dr, t = r["ipw"], r["dm"], r["dr"], r["truth"]
        print(f"| {r['candidate']} | {ipw.value:.4f} [{ipw.lo:.4f}, {ipw.hi:.4f}] | {dm.value:.4f} "
              f"| {dr.value:.4f} [{dr.lo:.4f}, {dr.hi:.4f}] | {t:.4f} "
              f"| {'yes' if ipw.lo <= t <= ipw.hi else 'no'} / {'yes' if dr.lo <= t <= dr.hi else 'no'} "
              f"| {r['support']:.0%} | {r['vs_logging']['dr'].value:+.4f} [{r['vs_logging']['dr'].lo:+.4f}, "
              f"{r['vs_logging']['dr'].hi:+.4f}] | {r['truth'] - r['truth_logging']:+.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
