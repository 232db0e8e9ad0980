"""Microseconds per pricing decision: scalar ``decide`` vs ``decide_batch`` vs a 21-point grid.

Run: ``python bench/bench_pricing.py``. Prints a table; asserts nothing about time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
from numpy.typing import ArrayLike

from streams.pricing import (
    F,
    Guardrails,
    ItemBatch,
    ItemTerms,
    band_batch,
    conversion,
    decide,
    decide_batch,
    round_into,
)

SIZES = (1, 32, 256, 4096)
G = Guardrails()
NOW = 7200.0


def per_call_us(fn: Callable[[], object], budget_s: float = 0.3) -> float:
    """Best-of-5 mean wall time of ``fn`` in microseconds."""
    fn()
    reps = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        if (elapsed := time.perf_counter() - t0) > budget_s / 5 or reps > 1 << 20:
            break
        reps *= 2
    best = elapsed
    for _ in range(4):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best / reps * 1e6


def run_scalar(terms: Sequence[ItemTerms], a: F, b: F, prev: F, ts: F) -> None:
    """One ``decide`` call per row, as an agent without batching would."""
    for i, item in enumerate(terms):
        decide(float(a[i]), float(b[i]), item, G, previous=(float(prev[i]), float(ts[i])), now_ts=NOW)


def run_batch(items: ItemBatch, a: F, b: F, prev: F, ts: F) -> None:
    """One vectorised ``decide_batch`` call for all rows."""
    decide_batch(a, b, items, G, NOW, prev, ts)


# the brute-force baseline the closed form is measured against (not a product path)
def price_grid(lo: ArrayLike, hi: ArrayLike, points: int = 21) -> F:
    """``points`` evenly spaced candidate prices per row over ``[lo, hi]``, shape ``(n, points)``."""
    lo2, hi2 = np.atleast_1d(np.asarray(lo, np.float64)), np.atleast_1d(np.asarray(hi, np.float64))
    grid = lo2[:, None] + (hi2 - lo2)[:, None] * np.linspace(0.0, 1.0, points)
    return np.asarray(np.minimum(grid, hi2[:, None]), dtype=np.float64)


def grid_price(
    lo: ArrayLike, hi: ArrayLike, cost: ArrayLike, demand: Callable[[F], F], points: int = 21
) -> tuple[F, F, F]:
    """Argmax of expected profit on a price grid.

    ``demand`` maps an ``(n, points)`` price grid to conversion probabilities of the same shape;
    non-finite probabilities never win. Returns ``(price, conversion, profit)``, prices in band.
    """
    grid = price_grid(lo, hi, points)
    probs = np.asarray(demand(grid), dtype=np.float64)
    profit = (grid - np.atleast_1d(np.asarray(cost, np.float64))[:, None]) * probs
    profit = np.where(np.isfinite(profit), profit, -np.inf)
    rows, idx = np.arange(grid.shape[0]), np.argmax(profit, axis=1)
    return grid[rows, idx], probs[rows, idx], profit[rows, idx]


def run_grid(items: ItemBatch, a: F, b: F, prev: F, ts: F) -> None:
    """The same bands, then a 21-point grid argmax instead of the closed form."""
    bd = band_batch(items, G, NOW, prev, ts)
    base = items.base_price[:, None]
    price, _, _ = grid_price(bd.lo, bd.hi, items.unit_cost,
                             lambda p: conversion(a[:, None], b[:, None], base, p), 21)
    round_into(price, bd.lo, bd.hi)


def main() -> None:
    rng = np.random.default_rng(0)
    n = max(SIZES)
    a, b = rng.normal(1, 2, n), rng.uniform(0.5, 8, n)
    base = rng.uniform(5, 200, n)
    terms = [ItemTerms(str(i), base[i], base[i] * rng.uniform(0.3, 0.9), base[i] * 0.5, base[i] * 2)
             for i in range(n)]
    prev, prev_ts = base * rng.uniform(0.9, 1.1, n), rng.uniform(0, 7200, n)
    print(f"{'batch':>6} | {'decide (scalar loop)':>21} | {'decide_batch':>12} | {'grid 21 (batch)':>15}")
    print(f"{'':->6}-+-{'':->21}-+-{'':->12}-+-{'':->15}")
    for size in SIZES:
        items = ItemBatch.of(terms[:size])

        args = (a[:size], b[:size], prev[:size], prev_ts[:size])
        runs = (partial(run_scalar, terms[:size], *args), partial(run_batch, items, *args),
                partial(run_grid, items, *args))
        cells = [per_call_us(f) / size for f in runs]
        print(f"{size:>6} | {cells[0]:>18.2f} µs | {cells[1]:>9.2f} µs | {cells[2]:>12.2f} µs")


if __name__ == "__main__":
    main()
