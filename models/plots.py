"""PNG plots of a training run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of ``p``: mean prediction, observed rate, count (empty bins dropped)."""
    k = np.minimum((np.asarray(p) * bins).astype(int), bins - 1)
    n = np.bincount(k, minlength=bins)
    mp = np.bincount(k, p, minlength=bins) / np.maximum(n, 1)
    my = np.bincount(k, y, minlength=bins) / np.maximum(n, 1)
    keep = n > 0
    return mp[keep], my[keep], n[keep]


def calibration_plot(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], bins: int = 15) -> Path:
    """Reliability diagram: one line per ``name -> (predicted p, label)``."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect")
    top = 0.0
    for name, (p, y) in curves.items():
        mp, my, n = reliability(p, y, bins)
        ax.plot(mp, my, "o-", ms=3, label=f"{name} (n={len(p):,})")
        top = max(top, float(mp.max(initial=0)), float(my.max(initial=0)))
    ax.set(xlim=(0, min(1, top * 1.1 + 0.02)), ylim=(0, min(1, top * 1.1 + 0.02)),
           xlabel="predicted probability", ylabel="observed rate", title="Calibration (time holdout)")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def demand_plot(path: Path, grid: np.ndarray, learned: Sequence[np.ndarray], true: Sequence[np.ndarray],
                labels: Sequence[str]) -> Path:
    """Learned (solid) vs true (dashed) P(buy) over the price ratio, one colour per user."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for k, (lp, tp, lab) in enumerate(zip(learned, true, labels, strict=False)):
        c = f"C{k}"
        ax.plot(grid, lp, "-", color=c, label=f"{lab} learned")
        ax.plot(grid, tp, "--", color=c, label=f"{lab} true")
    ax.set(xlabel="price / base price", ylabel="P(buy | view)", title="Demand curves: learned vs true")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def elasticity_plot(path: Path, true_beta: np.ndarray, learned_b: np.ndarray, rho: float) -> Path:
    """Per holdout user: learned mean slope ``b`` against the true sensitivity ``beta``."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(true_beta, learned_b, s=4, alpha=0.3)
    ax.set(xscale="log", xlabel="true price sensitivity beta_u", ylabel="learned b (mean over holdout rows)",
           title=f"Elasticity recovery, Spearman {rho:.3f}")
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
