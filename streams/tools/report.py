"""The evaluation as a text table and as a report: ``report.md``, ``result.json`` and PNG plots.

matplotlib belongs to the ``train`` extra: it is imported inside the plotting functions only, so
serving (which imports :mod:`streams`) never needs it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from export.bundle import load_bundle
from streams.features import FeatureSpec, category_levels, item_features, new_state, update, user_features
from streams.pricing import conversion
from streams.schemas import ClickEvent
from streams.scoring import OnnxScorer

from .evaluate import Evaluation, Exposures


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:+.1f}%"


def _ci(v: float, ci: tuple[float, float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(v)} [{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


def headline(ev: Evaluation) -> dict[str, Any]:
    """The numbers the acceptance criteria talk about."""
    lo, est, hi = ev.lift["profit_per_user"]
    t = ev.truth.get("treatment", {})
    arm = {k: {"lift": v[1], "ci": (v[0], v[2])} for k, v in ev.arm_lift.items()}
    w = ev.welfare.get("arms", {})
    return {"profit_lift": est, "profit_lift_ci": (lo, hi), "lift_ci_above_zero": bool(lo > 0),
            "efficiency": t.get("efficiency", math.nan), "efficiency_ci": t.get("efficiency_ci"),
            "treatment_over_uniform": t.get("over_uniform", math.nan), "arm_lift": arm,
            "surplus_per_exposure": {a: r.get("surplus", math.nan) for a, r in w.items()}}


def arm_rows(ev: Evaluation) -> list[list[str]]:
    """One row per arm: counts, conversion, revenue and profit per user with intervals."""
    rows = []
    for a, s in ev.arms.items():
        rows.append([a, f"{s.users:,}", f"{s.exposures:,}", f"{s.timeouts:,}", f"{s.purchases:,}",
                     _ci(100 * s.conversion, (100 * s.conversion_ci[0], 100 * s.conversion_ci[1]), "{:.2f}") + " %",
                     _ci(s.revenue_per_user, s.revenue_per_user_ci), _ci(s.profit_per_user, s.profit_per_user_ci),
                     f"{s.mean_price_ratio:.3f}"])
    return rows


ARM_HEAD = ["arm", "users", "exposures", "timeouts", "purchases", "conversion [95% CI]",
            "revenue/user [95% CI]", "profit/user [95% CI]", "price/base"]
TRUTH_HEAD = ["arm", "exposures", "shown", "base", "best uniform", "oracle", "efficiency [95% CI]",
              "shown/uniform [95% CI]"]


def truth_rows(ev: Evaluation) -> list[list[str]]:
    """Expected profit per exposure under the true demand, per arm."""
    rows = []
    for a in ev.arms:
        t = ev.truth.get(a)
        if not t or not t.get("n_exposures"):
            continue
        eff = ("-" if a == "control" else "n/a" if not math.isfinite(t["efficiency"])  # control shows base
               else _ci(t["efficiency"], t["efficiency_ci"], "{:.3f}"))
        rows.append([a, f"{t['n_exposures']:,}", f"{t['shown_profit']:.4f}", f"{t['base_profit']:.4f}",
                     f"{t['uniform_profit']:.4f}", f"{t['oracle_profit']:.4f}", eff,
                     _ci(t["over_uniform"], t["over_uniform_ci"], "{:.4f}")])
    return rows


def day_line(ev: Evaluation) -> str:
    """Treatment efficiency per simulated day (features fill up as the run goes on)."""
    days = ev.truth.get("treatment_by_day") or {}
    return "treatment by simulated day (efficiency, shown/uniform): " + ",  ".join(
        f"day {d}: {v['efficiency']:.3f}, {v['over_uniform']:.4f}" for d, v in days.items())


def fairness_rows(ev: Evaluation) -> list[list[str]]:
    """Price ratio (shown / base) by segment and arm."""
    return [[r["arm"], f"Q{r['segment'] + 1}", f"{r['users']:,}", f"{r['exposures']:,}", f"{r['mean_ratio']:.3f}",
             f"{r['sd_ratio']:.3f}", f"{r['p10_ratio']:.3f}-{r['p90_ratio']:.3f}", f"{100 * r['above_base']:.1f} %"]
            for r in ev.fairness["segments"] if r["arm"] != "none"]


FAIR_HEAD = ["arm", "segment", "users", "exposures", "mean price/base", "sd", "p10-p90", "priced above base"]
WELFARE_HEAD = ["arm", "surplus/exposure [95% CI]", "at uniform prices", "profit + surplus", "better off",
                "worse off", "purchases above uniform", "exposures above uniform", "profit / at uniform [95% CI]"]


def welfare_rows(ev: Evaluation) -> list[list[str]]:
    """Per arm: consumer surplus (truth), against the uniform prices, and prices above them."""
    rows = []
    share = lambda v: "-" if v is None or not math.isfinite(v) else f"{100 * v:.1f} %"  # noqa: E731
    num = lambda v: "-" if v is None or not math.isfinite(v) else f"{v:.4f}"  # noqa: E731
    for a, w in ev.welfare.get("arms", {}).items():
        cs = w.get("surplus")
        profit = ev.truth.get(a, {}).get("shown_profit")
        rows.append([a, _ci(cs, w["surplus_ci"], "{:.4f}") if cs is not None else "-", num(w.get("surplus_at_uniform")),
                     num(cs + profit) if cs is not None and profit is not None else "-",
                     share(w.get("better_off")), share(w.get("worse_off")), share(w.get("paid_above_uniform")),
                     share(w.get("priced_above_uniform")),
                     _ci(w["profit_over_uniform"], w["profit_over_uniform_ci"], "{:.4f}")
                     if "profit_over_uniform" in w else "-"])
    return rows


def arm_lift_line(ev: Evaluation) -> str:
    """Profit per user: uniform over control (repricing) and treatment over uniform (personalization)."""
    if not ev.arm_lift:
        return ""
    u, t = ev.arm_lift["uniform_over_control"], ev.arm_lift["treatment_over_uniform"]
    return (f"profit per user, three arms: uniform over control (one learnt price per item) {_pct(u[1])} "
            f"[{_pct(u[0])}, {_pct(u[2])}];  treatment over uniform (what personalization adds) {_pct(t[1])} "
            f"[{_pct(t[0])}, {_pct(t[2])}]")


def _welfare_note(ev: Evaluation) -> str:
    w = ev.welfare
    return (f"welfare: consumer surplus per exposure under the true demand (the integral of the buy probability above "
            f"the price); better/worse off = the arm's users whose surplus on their own exposures is above/below what "
            f"it would be at the uniform prices; profit / at uniform = expected profit at the shown over at the "
            f"uniform prices, same exposures; uniform price = {w.get('reference', '-')} "
            f"({100 * w.get('reference_coverage', math.nan):.0f} % of exposures have one)")


def _paid_line(ev: Evaluation, sep: str = ",  ") -> str:
    paid = ev.fairness["paid_above_base"]
    return sep.join(f"{a} {paid[a]['buyers_paid_above_base']:,} of {paid[a]['buyers']:,} "
                    f"({_pct(paid[a]['share_of_buyers'])[1:]})" for a in paid)


def _fixed(head: list[str], rows: list[list[str]]) -> str:
    w = [max(len(str(r[k])) for r in [head, *rows]) for k in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(w[k]) if k == 0 else str(c).rjust(w[k]) for k, c in enumerate(r))  # noqa: E731
    return "\n".join([line(head), "  ".join("-" * x for x in w), *map(line, rows)])


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *("| " + " | ".join(r) + " |" for r in rows)])


def _describe(meta: dict[str, Any], ev: Evaluation) -> str:
    loop, mkt = meta.get("loop") or {}, meta.get("market") or {}
    bits = [f"run {meta.get('run_id', meta.get('topics', {}).get('prices', '?'))}"]
    if loop:
        bits.append(f"{meta.get('users', 0):,} users, {loop.get('days')} simulated days in {meta.get('wall_s')} s")
    if mkt:
        bits.append(f"market seed {mkt.get('seed')}, heterogeneity {mkt.get('heterogeneity')}")
    bits.append(f"attribution window {ev.window_s / 3600:g} h")
    return "; ".join(bits)


def text_table(ev: Evaluation, meta: dict[str, Any]) -> str:
    """The evaluation as fixed-width text (what the command prints)."""
    out = [f"A/B evaluation: {_describe(meta, ev)}", "", _fixed(ARM_HEAD, arm_rows(ev)), ""]
    out.append("lift of treatment over control: " + ",  ".join(
        f"{m.replace('_', ' ')} {_pct(v[1])} [{_pct(v[0])}, {_pct(v[2])}]" for m, v in ev.lift.items()))
    if ev.arm_lift:
        out.append(arm_lift_line(ev))
    if (tr := truth_rows(ev)):
        out += ["", "expected profit per exposure under the true demand, on each arm's own exposures:",
                _fixed(TRUTH_HEAD, tr), day_line(ev)]
    if (wr := welfare_rows(ev)):
        out += ["", _welfare_note(ev), _fixed(WELFARE_HEAD, wr)]
    out += ["", f"fairness: price / base by {ev.fairness['segment_by']}", _fixed(FAIR_HEAD, fairness_rows(ev))]
    out.append("buyers who paid more than base: " + _paid_line(ev))
    if ev.counts.get("timeouts"):
        out.append(f"no price within the timeout (base price shown): {ev.counts['timeouts']:,} exposures")
    return "\n".join(out)


# ---------------------------------------------------------------- the report
def write_report(ev: Evaluation, exp: Exposures, meta: dict[str, Any], out: Path, *, market: Any | None = None,
                 model_dir: Path | None = None, events: Path | None = None) -> Path:
    """Write ``report.md``, ``result.json`` and the plots into ``out``; returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps({"meta": meta, "headline": headline(ev), **ev.as_dict()},
                                                indent=2, default=float))
    plots = [("lift.png", "Profit per user by arm, and the lifts, with 95% intervals", plot_lift(ev, out)),
             ("prices.png", "Shown price / base price per arm", plot_prices(exp, out, market)),
             ("fairness.png", f"Treatment prices by {ev.fairness['segment_by']}", plot_fairness(ev, out))]
    if market is not None:
        plots.append(("conversion.png", "Learned (model) vs true conversion at the shown price",
                      plot_conversion(exp, out, market)))
    if market is not None and model_dir is not None and events is not None and events.exists():
        plots.append(("demand.png", "Learned vs true demand curves of four treatment users",
                      plot_demand(exp, out, market, model_dir, events)))
    h = headline(ev)
    md = ["# Personalized pricing: A/B evaluation", "", _describe(meta, ev), "", "## Per arm", "",
          _markdown(ARM_HEAD, arm_rows(ev)), "",
          f"**Lift of treatment over control, profit per user: {_pct(h['profit_lift'])} "
          f"[{_pct(h['profit_lift_ci'][0])}, {_pct(h['profit_lift_ci'][1])}]** (95% bootstrap over users). "
          + ", ".join(f"{m.replace('_', ' ')} {_pct(v[1])} [{_pct(v[0])}, {_pct(v[2])}]"
                      for m, v in ev.lift.items() if m != "profit_per_user") + ".", ""]
    if (tr := truth_rows(ev)):
        md += ["## Against the truth (simulated market)", "",
               "Expected profit per exposure under the market's true demand, on each arm's own (user, item) "
               "exposures, for the prices shown, the base price, the best single price per item for those "
               "exposures and the oracle (true profit-optimal price, same guardrail band). "
               "Efficiency = (shown - uniform) / (oracle - uniform).", "", _markdown(TRUTH_HEAD, tr), "",
               day_line(ev), ""]
    if ev.arm_lift:
        md[md.index("## Per arm") + 6:md.index("## Per arm") + 6] = [arm_lift_line(ev) + ".", ""]
    if (wr := welfare_rows(ev)):
        md += ["## Welfare", "", _welfare_note(ev) + ".", "", _markdown(WELFARE_HEAD, wr), ""]
    md += ["## Fairness", "", f"Shown price / base price by {ev.fairness['segment_by']} (Q1 = lowest).", "",
           _markdown(FAIR_HEAD, fairness_rows(ev)), ""]
    paid = ev.fairness["paid_above_base"]
    md += ["Buyers who paid more than the base price: " + "; ".join(
        f"{a}: {paid[a]['buyers_paid_above_base']:,} of {paid[a]['buyers']:,} buyers "
        f"({_pct(paid[a]['share_of_buyers'])[1:]}), {_pct(paid[a]['share_of_users'])[1:]} of the arm's users"
        for a in paid) + ".", "", "## Plots", ""]
    md += [f"### {title}\n\n![{title}]({name})\n" for name, title, ok in plots if ok]
    md += ["## Counts", "", "```", json.dumps(ev.counts | {k: meta[k] for k in (
        "price_timeouts", "delivery_failures", "price_latency_ms", "events_per_s") if k in meta}, indent=2), "```"]
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


def _save(fig: Any, plt: Any, path: Path) -> bool:
    """Lay out, write and close one figure; True (the plot functions' "written")."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lift(ev: Evaluation, out: Path) -> bool:
    """Profit per user per arm (left) and relative lifts (right), with 95% intervals."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"control": "tab:gray", "uniform": "tab:orange", "treatment": "tab:blue"}
    for k, (a, s) in enumerate(ev.arms.items()):
        a1.errorbar([k], [s.profit_per_user], yerr=_err(s.profit_per_user, s.profit_per_user_ci),
                    fmt="o", capsize=8, ms=8, color=colors.get(a, "k"))
    a1.set_xticks(range(len(ev.arms)), list(ev.arms))
    a1.set_xlim(-0.6, len(ev.arms) - 0.4)
    a1.set_ylabel("profit per user")
    a1.set_title("profit per user")
    rows = [(f"{m.replace('_', ' ')}: treatment / control", v) for m, v in ev.lift.items()]
    rows += [(f"profit per user: {k.replace('_over_', ' / ')}", v) for k, v in ev.arm_lift.items()]
    for k, (_, (lo, est, hi)) in enumerate(rows):
        a2.errorbar([100 * est], [k], xerr=100 * _err(est, (lo, hi)), fmt="o", capsize=6,
                    color="tab:blue" if k < len(ev.lift) else "tab:orange")
    a2.axvline(0, color="k", lw=0.8)
    a2.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    a2.set_xlabel("lift (%)")
    a2.set_title("lift with 95% interval")
    return _save(fig, plt, out / "lift.png")


def _err(v: float, ci: tuple[float, float]) -> np.ndarray:
    """Error-bar lengths; a percentile interval need not contain the estimate, so clip at 0."""
    return np.array([[max(v - ci[0], 0.0)], [max(ci[1] - v, 0.0)]])


def plot_prices(exp: Exposures, out: Path, market: Any | None) -> bool:
    """Histogram of shown price / base per arm (and the oracle's for treatment exposures)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(0.75, 1.25, 51)
    for a, c in (("control", "tab:gray"), ("uniform", "tab:orange"), ("treatment", "tab:blue")):
        m = exp.arm == a
        if m.any():
            ax.hist(exp.price[m] / exp.base_price[m], bins, alpha=0.6, color=c, label=f"{a} (shown)", density=True)
    if market is not None and exp.user_index is not None and (m := exp.arm == "treatment").any():
        u, i = exp.user_index[m], exp.item_index[m]  # type: ignore[index]
        ax.hist(market.oracle_price(u, i) / market.base[i], bins, histtype="step", color="k", lw=1.5,
                density=True, label="oracle (treatment exposures)")
    ax.set_xlabel("price / base price")
    ax.set_ylabel("density")
    ax.legend()
    return _save(fig, plt, out / "prices.png")


def plot_fairness(ev: Evaluation, out: Path) -> bool:
    """Mean treatment price / base by segment, with the p10-p90 range."""
    rows = [r for r in ev.fairness["segments"] if r["arm"] == "treatment"]
    if not rows:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    x = [r["segment"] + 1 for r in rows]
    mean = np.array([r["mean_ratio"] for r in rows])
    ax.errorbar(x, mean, yerr=np.maximum([mean - [r["p10_ratio"] for r in rows],
                                          np.array([r["p90_ratio"] for r in rows]) - mean], 0.0),
                fmt="o", capsize=6)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(x, [f"Q{k}" for k in x])
    ax.set_xlabel(ev.fairness["segment_by"])
    ax.set_ylabel("price / base (mean, p10-p90)")
    return _save(fig, plt, out / "fairness.png")


def plot_conversion(exp: Exposures, out: Path, market: Any) -> bool:
    """Binned model conversion at the shown price vs the true buy probability (treatment + control)."""
    if exp.expected_conversion is None or exp.user_index is None or exp.item_index is None:
        return False
    ok = np.isfinite(exp.expected_conversion)
    if ok.sum() < 20:
        return False
    true = market.buy_prob(exp.user_index[ok], exp.item_index[ok], exp.price[ok])
    pred = exp.expected_conversion[ok]
    edges = np.quantile(pred, np.linspace(0, 1, 21))
    k = np.clip(np.searchsorted(edges, pred, side="right") - 1, 0, 19)
    n = np.bincount(k, minlength=20)
    keep = n > 0
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot((np.bincount(k, pred, 20) / np.maximum(n, 1))[keep], (np.bincount(k, true, 20) / np.maximum(n, 1))[keep],
            "o-", label="20 quantile bins")
    top = float(max(pred.max(), true.max()))
    ax.plot([0, top], [0, top], "k--", lw=0.8, label="perfect")
    ax.set_xlabel("model P(buy) at the shown price")
    ax.set_ylabel("true P(buy)")
    ax.legend()
    return _save(fig, plt, out / "conversion.png")


def plot_demand(exp: Exposures, out: Path, market: Any, model_dir: Path, events: Path) -> bool:
    """Learned vs true demand for four treatment users spanning the sensitivity range, each at their
    last exposure: their features are rebuilt from the events sent (the serving feature code) and
    scored with the bundle's price model."""


    m = exp.arm == "treatment"
    if exp.user_index is None or exp.item_index is None or not m.any():
        return False
    users, counts = np.unique(exp.user_index[m], return_counts=True)
    users = users[counts >= np.quantile(counts, 0.5)]
    users = users[np.argsort(market.beta[users])]
    picks = users[np.linspace(0, len(users) - 1, min(4, len(users))).astype(int)]
    wanted = {market.user_ids[u] for u in picks}
    spec = FeatureSpec()
    states = {uid: new_state(spec) for uid in wanted}
    last = {market.user_ids[u]: np.flatnonzero(m & (exp.user_index == u))[-1] for u in picks}
    cats = [market.categories[c] for c in market.item_cat]
    levels = category_levels(cats, [float(b) for b in market.base])
    for line in events.read_bytes().splitlines():
        d = orjson.loads(line)
        if d["user_id"] in wanted and d["ts"] < exp.ts[last[d["user_id"]]]:
            i = market.item_ids.index(d["item_id"])
            update(states[d["user_id"]], ClickEvent(**d), spec, base_price=float(market.base[i]),
                   category=cats[i], level=levels[i])
    scorer = OnnxScorer(load_bundle(model_dir))
    grid = np.linspace(0.8, 1.2, 41)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, u in enumerate(picks):
        uid, row = market.user_ids[u], last[market.user_ids[u]]
        i = int(exp.item_index[row])
        feats = np.array([user_features(states[uid], spec, float(exp.ts[row]))], np.float32)
        lift, slope = scorer.item_table([market.item_ids[i]])[0]
        item_x = np.array([item_features(states[uid], spec, base_price=float(market.base[i]),
                                         unit_cost=float(market.cost[i]), category=cats[i],
                                         conv_lift=float(lift), log_slope=float(slope))], np.float32)
        a, b, _ = scorer.price(feats, item_x, np.ones(1, np.float32))
        base = float(market.base[i])
        color = f"C{k}"
        ax.plot(grid, conversion(a[0], b[0], base, grid * base), color=color, ls="--")
        ax.plot(grid, market.buy_prob(np.full(41, u), np.full(41, i), grid * base), color=color,
                label=f"{uid} beta={market.beta[u]:.1f}")
    ax.plot([], [], "k--", label="learned (dashed)")
    ax.set_xlabel("price / base")
    ax.set_ylabel("P(buy)")
    ax.legend(fontsize=8)
    return _save(fig, plt, out / "demand.png")

