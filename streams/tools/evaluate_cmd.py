"""``pricing-evaluate``: evaluate an A/B run, print the table, write the report.

The command joins prices with the purchases that follow (:mod:`streams.tools.evaluate`) and writes
the report (:mod:`streams.tools.report`). A shop's run has no truth to compare with. A simulated
run does: the lab's ``pricing-sim-evaluate`` (:mod:`models.lab.evaluate`) is this same command
with the simulated market's truth handed in as ``truth``, so that this tool never imports the lab.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from streams.kafka_config import cli_check_connection
from streams.settings import cli_settings
from streams.version import add_version

from .evaluate import Exposures, evaluate, load_exposure_log, load_kafka
from .report import text_table, write_report

Truth = Callable[[dict[str, Any]], Any]
"""Given a run's meta, the simulated market that produced it (its truth), or None."""


def parser(prog: str = "pricing-evaluate", with_truth: bool = False) -> argparse.ArgumentParser:
    """The command line of the evaluation; ``with_truth`` adds the simulated market's options."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_version(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--exposures", type=Path, help="closed-loop run directory (or its exposures.jsonl)")
    src.add_argument("--kafka", action="store_true", help="read the PRICING_* prices/clickstream/catalog topics")
    if with_truth:
        p.add_argument("--train-dir", type=Path,
                       help="with --kafka: the training run of the simulated market (truth)")
    p.add_argument("--since", type=float, default=-math.inf,
                   help="with --kafka: first event time (epoch s) of the experiment window")
    p.add_argument("--until", type=float, default=math.inf,
                   help="with --kafka: end (exclusive) of the experiment window, event time")
    p.add_argument("--window", type=float, default=86400.0, help="attribution window, event-time seconds")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap replicates of the intervals")
    p.add_argument("--bootstrap", help="with --kafka: override PRICING_KAFKA_BOOTSTRAP (Kafka servers, as in "
                                       "every tool)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-dir", type=Path, help="model bundle directory: adds learned vs true demand plots")
    p.add_argument("--report-dir", type=Path, help="where to write the report (default reports/<run>)")
    p.add_argument("--no-report", action="store_true", help="print the table only")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")
    return p


def main(argv: list[str] | None = None, *, truth: Truth | None = None, prog: str = "pricing-evaluate") -> int:
    """Evaluate an A/B run, print the table, write the report (with ``truth``: against the market)."""
    p = parser(prog, with_truth=truth is not None)
    args = p.parse_args(argv)
    if args.bootstrap and args.bootstrap.isdigit():  # the old meaning of this flag
        p.error(f"--bootstrap names Kafka servers (as in every tool); for {args.bootstrap} bootstrap replicates "
                f"use --resamples {args.bootstrap}")
    if args.resamples < 1:
        p.error("--resamples must be at least 1")
    if args.exposures:
        exp, pur, meta = load_exposure_log(args.exposures)
        run = meta.get("run_id") or Path(args.exposures).name
    else:
        overrides = {"kafka_bootstrap": args.bootstrap} if args.bootstrap else {}
        s = cli_settings(**overrides)
        cli_check_connection(s, prog)
        exp, pur, meta = load_kafka(s, since=args.since, until=args.until)
        if truth is not None and args.train_dir:
            meta["market"] = json.loads((args.train_dir / "training_summary.json").read_text())["knobs"]["market"]
            exp = _with_market_index(exp, truth(meta))
        run = meta["topics"]["prices"]
    if len(exp) == 0:
        print("error: no exposures to evaluate", file=sys.stderr)
        return 1
    market = truth(meta) if truth is not None and exp.user_index is not None else None
    if truth is None and (meta.get("market") or meta.get("knobs", {}).get("market")):
        print("note: this run is from a simulated market; `pricing-sim-evaluate` compares it with the truth",
              file=sys.stderr)
    result = evaluate(exp, pur, window_s=args.window, market=market, reps=args.resamples, seed=args.seed)
    print(json.dumps(result.as_dict(), indent=2, default=float) if args.json else text_table(result, meta))
    if not args.no_report:
        out = args.report_dir or Path("reports") / str(run)
        path = write_report(result, exp, meta, out, market=market, model_dir=args.model_dir,
                            events=Path(args.exposures) / "events.jsonl" if args.exposures
                            and Path(args.exposures).is_dir() else None)
        print(f"\nreport: {path}")
    return 0


def _with_market_index(exp: Exposures, market: Any) -> Exposures:
    """Market user/item indices for exposures whose ids are the market's (others are dropped)."""
    uidx = {u: k for k, u in enumerate(market.user_ids)}
    iidx = {i: k for k, i in enumerate(market.item_ids)}
    keep = np.array([u in uidx and i in iidx for u, i in zip(exp.user, exp.item, strict=True)], bool)
    exp = exp.take(keep)
    exp.user_index = np.array([uidx[u] for u in exp.user], np.int64)
    exp.item_index = np.array([iidx[i] for i in exp.item], np.int64)
    return exp


if __name__ == "__main__":
    raise SystemExit(main())
