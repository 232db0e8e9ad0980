"""The robustness suite: the whole product, with its shipped defaults, on a grid of markets.

``python -m models.lab.robustness --out var/robustness`` (``pricing-robustness``) runs, for every
market of the grid, what a shop would run: ``pricing-train`` on the market's randomised history,
``pricing-export``, then the in-process closed loop (:mod:`models.lab.loop_sim`) with a warm-up,
and judges the treatment's prices against the market's truth on the exposures they got:

* **efficiency vs per item**: ``(shown - per-item) / (oracle - per-item)``, where per-item is the
  best single price per item for those exposures (0 = one good price per item, 1 = knowing every
  user; undefined where users are alike and one price per item is all there is);
* **efficiency vs one multiplier**: the same against the best single price ratio for every item;
* **vs per item** and **vs base**: expected profit per exposure relative to them;
* **no harm**: neither of those two intervals lies wholly below 0.

Every interval is a 95 % bootstrap over users. Nothing is tuned per market: the grid's markets
(:data:`GRID`) and the loop's size are fixed here, and every row uses the same defaults
(``PriceModelConfig``, ``Settings``). A change to the models or the pricing is judged on the
whole table, never on one row. ``--markets`` runs a subset; ``--large`` doubles the users and adds
days (about twice as long). :data:`SHOP_GRID` adds rows of a second, structurally different
generator (:mod:`models.lab.shop_market`): their history is written to files and trained with
``pricing-train --events --catalog``, as a shop would, and they are tabled and averaged apart.
Writes ``suite.md`` and ``suite.json`` to ``--out``, and each market's training run,
bundle and loop under ``--out/<market>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.dataset import write_jsonl
from streams.features import FeatureSpec, feature_names
from streams.scoring import BundleWatcher
from streams.settings import cli_settings
from streams.tools.evaluate import bootstrap_sums, efficiency, load_exposure_log, percentile_ci
from streams.version import add_version

from .live_market import LoopConfig
from .loop_sim import InProcessMarket
from .market_api import SimMarket
from .shop_market import ShopConfig, ShopMarket
from .simulator import Market, MarketConfig

_DAY = 86400.0

# The grid, frozen before any run that judges a change. Each entry: a name, what it varies, its knobs.
GRID: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("default", "the demo's market (seed 0)", {}),
    ("seed-1", "the default market, another seed", {"seed": 1}),
    ("noise-1", "behaviour noise 1", {"noise": 1.0}),
    ("noise-2", "behaviour noise 2", {"noise": 2.0}),
    ("het-0.5", "heterogeneity 0.5", {"heterogeneity": 0.5}),
    ("het-2", "heterogeneity 2", {"heterogeneity": 2.0}),
    ("alike", "users alike; categories and items differ", {"heterogeneity": 0.0, "beta_cat_sd": 0.4,
                                                         "beta_item_sd": 0.25}),
    ("cat-item-user", "sensitivity by category, item and user x category",
     {"beta_cat_sd": 0.4, "beta_item_sd": 0.25, "beta_user_cat_sd": 0.4}),
    ("probit", "probit demand, categories differ", {"demand": "probit", "beta_cat_sd": 0.4}),
    ("kinked", "reference-price (kinked) demand", {"demand": "kinked"}),
    ("mixture", "a mixture of two visit types", {"demand": "mixture", "beta_cat_sd": 0.3}),
    ("browsing", "sensitivity shows in browsing, not in picks", {"signal": "browsing"}),
    ("no-signal", "sensitivity shows nowhere in behaviour", {"signal": "none"}),
    ("weak-signal", "behaviour reveals traits weakly (reveal 0.5)", {"reveal": 0.5}),
    ("cold-start", "30 % of users have no history", {"cold_share": 0.3}),
)
# The second generator (models.lab.shop_market: intent x willingness to pay, latent segments), frozen
# the same way. Its rows train from files, as a shop does, and are averaged apart from GRID's.
SHOP_GRID: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("shop", "segments; intent x WTP (seed 0)", {}),
    ("shop-seed-1", "the same shop, another seed", {"seed": 1}),
    ("shop-narrow", "WTP spreads x 0.4: a sharp price response", {"spread_scale": 0.4}),
    ("shop-alike", "segments differ in intent and browsing only", {"segments": "alike"}),
)
SHOP_NAMES = frozenset(g[0] for g in SHOP_GRID)


@dataclass(frozen=True)
class SuiteSize:
    """How big each market and its loop are (the same for every row). The default keeps the suite near
    40 minutes on a 2-core machine; ~145k history events per market, a third of the demo's."""

    n_users: int = 2000
    n_items: int = 200
    history_days: float = 8.0
    holdout_days: float = 2.0
    warm_days: float = 3.0
    loop_days: float = 1.5


QUICK = SuiteSize()
LARGE = SuiteSize(n_users=4000, n_items=300, history_days=10.0, holdout_days=2.0, warm_days=4.0, loop_days=2.0)


def market_config(knobs: dict[str, Any], size: SuiteSize) -> MarketConfig:
    """The grid row's market at the suite's size."""
    return replace(MarketConfig(n_users=size.n_users, n_items=size.n_items, days=size.history_days), **knobs)


def shop_config(knobs: dict[str, Any], size: SuiteSize) -> ShopConfig:
    """The second generator's row at the suite's size."""
    return replace(ShopConfig(n_users=size.n_users, n_items=size.n_items, days=size.history_days), **knobs)


def write_history(market: SimMarket, d: Path) -> tuple[Path, Path]:
    """The market's history and catalog as a shop hands them over: wire-schema JSONL files."""
    d.mkdir(parents=True, exist_ok=True)
    events, catalog = d / "events.jsonl.gz", d / "catalog.jsonl"
    write_jsonl(events, market.simulate().events())
    write_jsonl(catalog, market.catalog())
    return events, catalog


def _cli(cfg: MarketConfig) -> list[str]:
    """``pricing-train`` options that rebuild ``cfg`` (every field that differs from the defaults)."""
    d, out = MarketConfig(), []
    for k, v in asdict(cfg).items():
        if v != getattr(d, k):
            out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def _run(cmd: list[str], log: Path) -> None:
    """Run a step, its output to ``log``; a failure names the step and the log's tail."""
    with log.open("w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                            check=False).returncode
    if rc:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd[:3])} failed (exit {rc}); {log}:\n{tail}")


def judge(exp_dir: Path, market: SimMarket, reps: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The treatment exposures of a loop judged against ``market``'s truth (see the module doc)."""
    exp, _, meta = load_exposure_log(exp_dir)
    t = exp.take(exp.arm == "treatment")
    assert t.user_index is not None and t.item_index is not None
    u, i = t.user_index, t.item_index
    if len(u) == 0:
        return {"n_exposures": 0}
    base, cost = market.base[i], market.cost[i]
    lo, hi = market.price_band(i)
    per_item = market.uniform_prices((u, i))[i]
    ratios = np.linspace(1 - market.cfg.band, 1 + market.cfg.band, 81)
    mult_profit = [np.mean((np.clip(r * base, lo, hi) - cost) * market.buy_prob(u, i, np.clip(r * base, lo, hi)))
                   for r in ratios]
    mult = np.clip(ratios[int(np.argmax(mult_profit))] * base, lo, hi)
    prices = {"shown": t.price, "base": base, "per_item": per_item, "multiplier": mult,
              "oracle": market.oracle_price(u, i)}
    per = {k: (p - cost) * market.buy_prob(u, i, p) for k, p in prices.items()}
    users, pos = np.unique(u, return_inverse=True)
    names = list(per)
    sums = bootstrap_sums([np.bincount(pos, per[k], minlength=len(users)).astype(np.float64) for k in names], reps,
                          np.random.default_rng(seed))
    rep = dict(zip(names, sums, strict=True))
    point = {k: float(v.mean()) for k, v in per.items()}

    def ratio(a: str, b: str) -> dict[str, Any]:
        return {"value": point[a] / point[b] - 1.0, "ci": percentile_ci(rep[a] / rep[b] - 1.0)}

    def eff(ref: str) -> dict[str, Any]:
        value = efficiency(point["shown"], point[ref], point["oracle"])  # NaN where there is no edge to capture
        if not np.isfinite(value):
            return {"value": value, "ci": (float("nan"), float("nan"))}
        with np.errstate(invalid="ignore", divide="ignore"):
            return {"value": value, "ci": percentile_ci((rep["shown"] - rep[ref]) / (rep["oracle"] - rep[ref]))}

    vs_item, vs_base = ratio("shown", "per_item"), ratio("shown", "base")
    return {"n_exposures": int(len(u)), "n_users": int(len(users)), "profit": point,
            "efficiency_vs_per_item": eff("per_item"), "efficiency_vs_multiplier": eff("multiplier"),
            "vs_per_item": vs_item, "vs_base": vs_base,
            "oracle_edge_over_per_item": point["oracle"] / point["per_item"] - 1,
            "price_ratio": float(np.mean(t.price / base)), "multiplier": float(ratios[int(np.argmax(mult_profit))]),
            "no_harm": bool(vs_item["ci"][1] >= 0 and vs_base["ci"][1] >= 0),
            "dead_letters": meta.get("dead_letters", 0)}


def run_market(name: str, knobs: dict[str, Any], size: SuiteSize, out: Path, *, seed: int = 0,
               salt: str = "robustness") -> dict[str, Any]:
    """Train, export and loop one market; returns its judged row (times included)."""
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    py, t0 = sys.executable, time.time()
    market: SimMarket
    if name in SHOP_NAMES:  # the second generator: its history as files, trained as a shop would
        market = ShopMarket(shop_config(knobs, size))
        events, catalog = write_history(market, d / "data")
        source = ["--events", str(events), "--catalog", str(catalog)]
    else:
        market = Market(market_config(knobs, size))
        source = _cli(market.cfg)
    _run([py, "-m", "models.train", "--out", str(d / "train"), "--quiet", "--no-plots",
          "--holdout-days", str(size.holdout_days), *source], d / "train.log")
    t_train = time.time() - t0
    _run([py, "-m", "export", "--train-dir", str(d / "train"), "--model-dir", str(d / "models"), "--no-progress"],
         d / "export.log")
    s = cli_settings(treatment_share=1.0, experiment_salt=salt)  # PRICING_* from the environment, else defaults
    scorer = BundleWatcher(d / "models", 1e9, feature_names(FeatureSpec.from_settings(s)), threads=1).scorer
    loop = LoopConfig(days=size.loop_days, duration_s=size.loop_days * _DAY, seed=seed, run_id=name,
                      warm_days=size.warm_days)
    t1 = time.time()
    sim = InProcessMarket(market, s, loop, d / "loop", scorer)
    with open(os.devnull, "w") as quiet:
        stdout, sys.stdout = sys.stdout, quiet
        try:
            asyncio.run(sim.run_in_process(progress_s=1e9))
        finally:
            sys.stdout = stdout
    row = judge(d / "loop", market)
    row.update({"market": name, "generator": "shop" if name in SHOP_NAMES else "simulator", "knobs": knobs,
                "train_s": round(t_train, 1), "loop_s": round(time.time() - t1, 1),
                "total_s": round(time.time() - t0, 1)})
    (d / "row.json").write_text(json.dumps(row, indent=2, default=float))
    return row


def _fmt(x: dict[str, Any], pct: bool = False) -> str:
    v, (lo, hi) = x["value"], x["ci"]
    if not np.isfinite(v):
        return "n/a"
    return (f"{100 * v:+.1f} % [{100 * lo:+.1f}, {100 * hi:+.1f}]" if pct
            else f"{v:.2f} [{lo:.2f}, {hi:.2f}]")


def table(rows: list[dict[str, Any]], what: dict[str, str]) -> str:
    """The suite's markdown table, with the grid average of the efficiency vs per item."""
    head = ("| market | what varies | oracle over per-item | efficiency vs per item | efficiency vs one multiplier "
            "| vs per item | vs base | price/base | no harm |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    lines = [head]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['market']} | {what.get(r['market'], '')} | failed: {r['error'][:80]} | | | | | | |")
            continue
        lines.append(f"| {r['market']} | {what.get(r['market'], '')} | {100 * r['oracle_edge_over_per_item']:+.1f} % "
                     f"| {_fmt(r['efficiency_vs_per_item'])} | {_fmt(r['efficiency_vs_multiplier'])} "
                     f"| {_fmt(r['vs_per_item'], True)} | {_fmt(r['vs_base'], True)} | {r['price_ratio']:.3f} "
                     f"| {'yes' if r['no_harm'] else '**no**'} |")
    ok = [r for r in rows if not r.get("error")]
    effs = [r["efficiency_vs_per_item"]["value"] for r in ok if np.isfinite(r["efficiency_vs_per_item"]["value"])]
    lines.append("")
    lines.append(f"Average efficiency vs per item over the {len(effs)} markets where it is defined: "
                 f"**{np.mean(effs):.2f}**" if effs else "No market had an efficiency defined.")
    lines.append(f"No harm in {sum(r['no_harm'] for r in ok)} of {len(ok)} markets"
                 + (f"; {len(rows) - len(ok)} failed." if len(ok) < len(rows) else "."))
    return "\n".join(lines)


def add_markets_arg(p: argparse.ArgumentParser) -> None:
    """``--markets``: a comma-separated subset of the suite's rows (:func:`pick_markets`)."""
    p.add_argument("--markets", default="", help="comma-separated subset of the grids (default: all); names: "
                                                  f"{', '.join(g[0] for g in GRID)}; second generator: "
                                                  f"{', '.join(g[0] for g in SHOP_GRID)}")


def pick_markets(p: argparse.ArgumentParser, markets: str) -> tuple[dict[str, tuple[str, str, dict[str, Any]]],
                                                                     list[str]]:
    """Both grids by name, and the names ``markets`` picks (all when empty); an unknown name is a usage error."""
    grid = {g[0]: g for g in GRID + SHOP_GRID}
    names = [n for n in markets.split(",") if n] or list(grid)
    unknown = [n for n in names if n not in grid]
    if unknown:
        p.error(f"unknown markets {unknown}; the grids have {list(grid)}")
    return grid, names


def by_generator(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of the first generator, then the second's (tabled and averaged apart)."""
    return [r for r in rows if r["market"] not in SHOP_NAMES], [r for r in rows if r["market"] in SHOP_NAMES]


def parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m models.lab.robustness``."""
    p = argparse.ArgumentParser(prog="pricing-robustness", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_version(p)
    p.add_argument("--out", type=Path, default=Path("var/robustness"), help="where each market's runs and the table go")
    add_markets_arg(p)
    p.add_argument("--quick", action="store_true", help="the default size (2,000 users, 200 items, 8 days)")
    p.add_argument("--large", action="store_true", help="4,000 users, 300 items, 10 days: about twice as long")
    p.add_argument("--seed", type=int, default=0, help="the loops' randomness")
    p.add_argument("--keep-going", action="store_true", help="a failing market becomes a row, not an exit")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m models.lab.robustness`` (``pricing-robustness``)."""
    args = parser().parse_args(argv)
    grid, names = pick_markets(parser(), args.markets)
    size = LARGE if args.large else QUICK
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    t0 = time.time()
    print(f"[robustness] {len(names)} markets, {size}", flush=True)
    for k, n in enumerate(names):
        try:
            row = run_market(n, grid[n][2], size, args.out, seed=args.seed)
        except Exception as exc:  # noqa: BLE001 - one market's failure is a row with its reason
            if not args.keep_going:
                raise
            row = {"market": n, "error": str(exc).splitlines()[0]}
        rows.append(row)
        e = row.get("efficiency_vs_per_item", {}).get("value", float("nan"))
        print(f"[robustness] {k + 1}/{len(names)} {n}: efficiency vs per item {e:.2f}, "
              f"no harm {row.get('no_harm')}, {row.get('total_s', 0):.0f} s (elapsed {time.time() - t0:.0f} s)",
              flush=True)
    what = {n: g[1] for n, g in grid.items()}
    first, second = by_generator(rows)
    parts = [table(first, what)] if first else []
    if second:  # averaged apart: a different generator, not more rows of the same one
        parts.append("Second generator (models.lab.shop_market: intent x willingness to pay, latent segments; "
                     "trained from its history files with --events/--catalog):\n\n" + table(second, what))
    text = "\n\n".join(parts)
    (args.out / "suite.md").write_text(f"`python -m models.lab.robustness{' --large' if args.large else ''}` "
                                       f"({size}), {time.time() - t0:.0f} s\n\n{text}\n")
    (args.out / "suite.json").write_text(json.dumps({"size": asdict(size), "rows": rows}, indent=2, default=float))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
