"""``pricing-generations``: does the pricing keep learning when it retrains on its own logs?

``python -m models.lab.generations --small --generations 2 --widths 0,0.05 --out var/generations``

Generation 0 is trained on the simulated market's randomised history and exported. Then, for
each exploration width ``w`` (``PRICING_EXPLORATION_WIDTH``), every generation prices the same
market in the in-process closed loop (:mod:`models.lab.loop_sim`), and generation ``k + 1`` is
trained **only** on generation ``k``'s loop: its clickstream with the decided prices joined in
(``pricing-train --events ... --prices prices.jsonl``). The loop's warm-up history builds the
users' features, but its own (randomised) views are not training rows: every exposure a later
generation learns from was priced by the previous generation. Every loop uses the same loop seed
(same users, same session schedule), so generations and widths differ only by their prices and
what those prices caused.

Each generation is judged against the market's truth (``pricing-sim-evaluate``'s efficiency,
with its user-bootstrap interval) and the table shows, per width and generation: efficiency,
profit lift over control, mean treatment price over base, the price-variation diagnostic of the
data it was trained on (all rows, and treatment rows alone) and any training failure.
Pipeline settings are the defaults apart from the width, so runs are reproducible.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from export.bundle import BundleError
from export.convert import ParityError
from models.dataset import (
    EventLog,
    apply_decisions,
    build_rows,
    decided_views,
    price_variation,
    read_events,
    read_prices,
    rows_from,
)
from models.train import CONFOUNDED_RESIDUAL_SD, TrainingDataError, train_all
from streams.catalog import Catalog
from streams.features import FEATURE_NAMES, FeatureSpec, feature_names
from streams.schemas import decision_id
from streams.scoring import BundleWatcher
from streams.settings import load_settings
from streams.tools.evaluate import evaluate, load_exposure_log
from streams.version import add_version

from .evaluate import market_of
from .live_market import LoopConfig
from .loop_sim import InProcessMarket
from .simulator import Market, add_market_args, market_config

if TYPE_CHECKING:
    from models.price_model import PriceModelConfig

_DAY = 86400.0


def say(msg: str) -> None:
    """A progress line."""
    print(f"[generations] {msg}", flush=True)


@dataclass
class Row:
    """One generation at one width: what it was trained on and how it priced."""

    width: float
    generation: int
    trained_on: str
    bundle: str | None = None
    train_rows: int | None = None
    variation: dict[str, float] = field(default_factory=dict)            # all training rows
    variation_treatment: dict[str, float] = field(default_factory=dict)  # rows the worker priced in treatment
    failure: str | None = None
    loop: dict[str, Any] = field(default_factory=dict)                   # efficiency, lift, decisions ...


def export_bundle(train_dir: Path, model_dir: Path) -> str:
    """Export ``train_dir`` to ``model_dir`` (parity-checked); returns the bundle version."""
    from export.__main__ import export_train_dir

    bundle, _ = export_train_dir(train_dir, model_dir, tol=1e-5, rows=10_000, progress=False)
    return str(bundle.version)


def train_on_loop(loop_dir: Path, market: Market, out: Path, holdout_days: float, cfg: PriceModelConfig,
                  rec_epochs: int) -> tuple[dict[str, Any], dict[str, float]]:
    """Train on one loop's logs only (warm-up events for features, loop views as rows, decided prices).

    Returns the training summary and the price-variation diagnostic of the treatment rows.
    """
    from models.price_model import feature_mask

    meta = json.loads((loop_dir / "meta.json").read_text())
    log = EventLog.from_events(read_events(loop_dir / "warm_events.jsonl") + read_events(loop_dir / "events.jsonl"))
    prices = read_prices(loop_dir / "prices.jsonl")
    log, joined = apply_decisions(log, prices)
    catalog = Catalog.of(market.catalog())
    data = rows_from(build_rows(log, catalog, FeatureSpec()), float(meta["sim_start"]))
    arm = {p.decision_id: p.arm for p in prices}
    assert log.event_ids is not None and data.row_log is not None
    treated = np.array([arm.get(decision_id(log.event_ids[n], log.item_ids[int(log.item[n])])) == "treatment"
                        for n in data.row_log.tolist()], bool)
    tv = price_variation(data, treated, user_columns=feature_mask(FEATURE_NAMES, cfg.ignore))
    knobs = {"source": str(loop_dir), "decisions": joined, "rows_from": meta["sim_start"], "market": asdict(market.cfg)}
    summary = train_all(log, catalog, out, market=market, holdout_days=holdout_days, price_cfg=cfg,
                        rec_epochs=rec_epochs, plots=False, progress=False, knobs=knobs, data=data,
                        decisions=joined, decided=decided_views(log, prices))
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary, tv


def run_loop(market: Market, model_dir: Path, width: float, out: Path, days: float, warm_days: float,
             seed: int, users: int | None) -> dict[str, Any]:
    """One in-process loop with the bundle at ``model_dir``; returns what the table needs."""
    s = load_settings({}, experiment_salt="generations", user_hash_key="generations", exploration_width=width)
    watcher = BundleWatcher(model_dir, 1e9, feature_names(FeatureSpec.from_settings(s)), threads=1)
    cfg = LoopConfig(days=days, duration_s=days * _DAY, users=users, seed=seed, run_id="gen", warm_days=warm_days)
    meta = asyncio.run(InProcessMarket(market, s, cfg, out, watcher.scorer).run_in_process(progress_s=60.0))
    decided = [json.loads(line) for line in (out / "prices.jsonl").read_text().splitlines()]
    treat = [d for d in decided if d["arm"] == "treatment"]
    exp, pur, meta = load_exposure_log(out)
    ev = evaluate(exp, pur, market=market_of(meta), reps=500)
    t = ev.truth.get("treatment", {})
    return {"views": meta["views"], "decisions": len(decided), "price_timeouts": meta["price_timeouts"],
            "model_versions": sorted({d["model_version"] for d in treat}),
            "model_invalid": sum("MODEL_INVALID" in d["reasons"] for d in decided),
            "explored": float(np.mean(["EXPLORED" in d["reasons"] for d in treat])) if treat else math.nan,
            "efficiency": t.get("efficiency", math.nan), "efficiency_ci": list(t.get("efficiency_ci", (math.nan,) * 2)),
            "over_uniform": t.get("over_uniform", math.nan), "price_ratio": t.get("shown_price_ratio", math.nan),
            "control_efficiency": ev.truth.get("control", {}).get("efficiency", math.nan),
            "lift_profit": list(ev.lift["profit_per_user"]), "wall_s": meta["wall_s"]}


def _fmt(x: float, spec: str = ".3f") -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, spec)


def markdown(rows: list[Row]) -> str:
    """The generations table as markdown."""
    head = ("| width | gen | trained on | training rows | price variation left (all / treatment) | efficiency [95% CI] "
            "| profit lift over control [95% CI] | treatment price / base | note |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lp, v, vt = r.loop, r.variation, r.variation_treatment
        var = f"{_fmt(v.get('residual_sd', math.nan))} / {_fmt(vt.get('residual_sd', math.nan))}" if v else ""
        if v and v.get("residual_sd", 1.0) < CONFOUNDED_RESIDUAL_SD:
            var += " (confounded: warned)"
        eff = (f"{_fmt(lp['efficiency'])} [{_fmt(lp['efficiency_ci'][0])}, {_fmt(lp['efficiency_ci'][1])}]"
               if lp else "")
        lift = (f"{_fmt(lp['lift_profit'][1], '+.1%')} [{_fmt(lp['lift_profit'][0], '+.1%')}, "
                f"{_fmt(lp['lift_profit'][2], '+.1%')}]" if lp else "")
        note = f"training failed: {r.failure}" if r.failure else (
            f"explored {lp['explored']:.0%} of treatment decisions" if lp and r.width > 0 else "")
        out.append(f"| {r.width:g} | {r.generation} | {r.trained_on} | {r.train_rows if r.train_rows else ''} | {var} "
                   f"| {eff} | {lift} | {_fmt(lp.get('price_ratio', math.nan)) if lp else ''} | {note} |")
    return "\n".join(out)


def parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m models.lab.generations``."""
    p = argparse.ArgumentParser(prog="pricing-generations", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_version(p)
    add_market_args(p)
    p.add_argument("--out", type=Path, default=Path("var/generations"), help="runs, bundles and the table")
    p.add_argument("--generations", type=int, default=3, help="generations 0..N-1 (1 + retrainings)")
    p.add_argument("--widths", default="0,0.05", help="comma-separated exploration widths")
    p.add_argument("--loop-days", type=float, default=None, help="simulated days of each loop (default 4, --small 1)")
    p.add_argument("--warm-days", type=float, default=None, help="warm-up days of each loop (default 7, --small 0.5)")
    p.add_argument("--users", type=int, default=None, help="first N users of the market take part in the loops")
    p.add_argument("--loop-seed", type=int, default=0, help="the loops' seed (the same for every generation and width)")
    p.add_argument("--holdout-days", type=float, default=None, help="training time holdout (default 1, --small 0.25)")
    p.add_argument("--epochs", type=int, default=None, help="price model max epochs (default: PriceModelConfig)")
    p.add_argument("--price-members", type=int, default=None, help="price model ensemble members")
    p.add_argument("--rec-epochs", type=int, default=None, help="recommend model max epochs (default 30, --small 5)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m models.lab.generations`` (``pricing-generations``)."""
    p = parser()
    args = p.parse_args(argv)
    from models.price_model import PriceModelConfig  # TensorFlow: not for --help

    try:
        widths = sorted({float(w) for w in args.widths.split(",") if w.strip()})
    except ValueError:
        p.error(f"--widths must be comma-separated numbers, got {args.widths!r}")
    if not widths or any(not 0 <= w <= 0.5 for w in widths) or args.generations < 1:
        p.error("--widths must be in [0, 0.5] (PRICING_EXPLORATION_WIDTH) and --generations >= 1")
    days = args.loop_days or (1.0 if args.small else 4.0)
    warm = args.warm_days if args.warm_days is not None else (0.5 if args.small else 7.0)
    holdout = args.holdout_days or (0.25 if args.small else 1.0)
    if holdout >= days:
        p.error(f"--holdout-days ({holdout:g}) must be shorter than a loop (--loop-days {days:g})")
    cfg = PriceModelConfig() if args.epochs is None else PriceModelConfig(epochs=args.epochs)
    if args.price_members is not None:
        cfg = PriceModelConfig(**{**asdict(cfg), "members": args.price_members})
    rec_epochs = args.rec_epochs or (5 if args.small else 30)
    market = Market(market_config(args))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    say(f"market {market.cfg.n_users:,} users, {market.cfg.n_items:,} items; loops of {days:g} days "
        f"(+{warm:g} warm-up); widths {widths}; generations 0..{args.generations - 1}")
    g0 = out / "gen0"
    say("generation 0: simulating the randomised history and training ...")
    s0 = train_all(market.simulate(), Catalog.of(market.catalog()), g0 / "train", market=market,
                   holdout_days=3.0 if not args.small else 0.25, price_cfg=cfg, rec_epochs=rec_epochs, plots=False,
                   progress=False, knobs={"source": "simulated", "market": asdict(market.cfg)})
    (g0 / "train" / "training_summary.json").write_text(json.dumps(s0, indent=2, default=float))
    v0 = export_bundle(g0 / "train", g0 / "models")
    say(f"generation 0: bundle {v0} ({time.time() - t0:.0f} s)")
    rows: list[Row] = []
    for w in widths:
        model_dir, version = g0 / "models", v0
        summary, trained_on = s0, "randomised history"
        tv: dict[str, float] = {}
        for k in range(args.generations):
            row = Row(w, k, trained_on, version, summary["data"]["exposure_rows"]["train"],
                      summary["metrics"]["price_variation"], tv)
            rows.append(row)
            run = out / f"w{w:g}" / f"gen{k}"
            say(f"width {w:g}, generation {k}: loop of {days:g} days with bundle {version} ...")
            row.loop = run_loop(market, model_dir, w, run / "loop", days, warm, args.loop_seed, args.users)
            say(f"width {w:g}, generation {k}: efficiency {_fmt(row.loop['efficiency'])} "
                f"{[round(x, 3) for x in row.loop['efficiency_ci']]}, price/base {_fmt(row.loop['price_ratio'])} "
                f"({time.time() - t0:.0f} s)")
            if k + 1 == args.generations:
                break
            nxt = out / f"w{w:g}" / f"gen{k + 1}"
            trained_on = f"gen {k} loop, width {w:g}"
            say(f"width {w:g}, generation {k + 1}: training on generation {k}'s loop only ...")
            try:
                summary, tv = train_on_loop(run / "loop", market, nxt / "train", holdout, cfg, rec_epochs)
                model_dir = nxt / "models"
                version = export_bundle(nxt / "train", model_dir)
            except (TrainingDataError, ParityError, BundleError) as exc:
                say(f"width {w:g}, generation {k + 1}: training failed: {exc}")
                rows.append(Row(w, k + 1, trained_on, failure=str(exc)))
                break
    table = markdown(rows)
    (out / "generations.md").write_text(table + "\n")
    (out / "generations.json").write_text(json.dumps({"market": asdict(market.cfg), "days": days, "warm_days": warm,
                                                      "seed": args.loop_seed, "rows": [asdict(r) for r in rows],
                                                      "wall_s": round(time.time() - t0, 1)}, indent=2, default=float))
    print(table)
    say(f"wrote {out / 'generations.md'} and generations.json ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
