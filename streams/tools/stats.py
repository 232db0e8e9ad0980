"""Bootstrap intervals over users, shared by the evaluation (:mod:`.evaluate`) and welfare (:mod:`.welfare`)."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

F = NDArray[np.float64]


def bootstrap_sums(cols: list[F], reps: int, rng: np.random.Generator, chunk: int = 100) -> list[F]:
    """Replicated sums of per-user columns under resampling users with replacement: ``[reps]`` each."""
    n = len(cols[0])
    out = [np.empty(reps) for _ in cols]
    for a in range(0, reps, chunk):
        b = min(reps, a + chunk)
        idx = rng.integers(0, n, (b - a, n)) if n else np.zeros((b - a, 0), int)
        for o, c in zip(out, cols, strict=True):
            o[a:b] = c[idx].sum(axis=1)
    return out


def percentile_ci(samples: F, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap ``samples`` (NaN-safe)."""
    s = samples[np.isfinite(samples)]
    if len(s) == 0:
        return (math.nan, math.nan)
    q = (1 - level) / 2
    return float(np.quantile(s, q)), float(np.quantile(s, 1 - q))
