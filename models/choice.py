"""Choice tables and the conditional logit, in numpy only (no TensorFlow import).

A *choice table* is long format: one row per (occasion, alternative) with a 0/1 ``chosen``
column, a price column and other numeric columns. :func:`read_choice_table` pads occasions
with fewer alternatives and returns a mask, so tensors are ``X [N, K, F]``, ``chosen [N]``
(index of the chosen alternative) and ``mask [N, K]`` (1 = real alternative, 0 = padding).
The price column is always the last feature.

:func:`fit_conditional_logit` is exact maximum likelihood by Newton's method with an analytic
Hessian, so its coefficients are the MLE to round-off; ``models.recommend`` copies them into
the Keras linear model. No intercept and no alternative-specific constants: without a stable
alternative identity shared across occasions they are not identifiable (any constant added to
every utility of an occasion cancels in the softmax).

Command line::

    python -m models.choice table.csv --occasion occ --alternative alt --chosen chosen --price price
    python -m models.choice --simulate 3000          # demo data with known truth
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streams.version import add_version

_NEG = -1e30  # utility of a padded alternative: exp() underflows to exactly 0


class ChoiceTableError(ValueError):
    """A choice table that cannot be turned into choice sets (the message says where)."""


@dataclass(frozen=True)
class ClogitResult:
    """A fitted conditional logit: coefficients with standard errors from the inverse Hessian."""

    coef: np.ndarray
    se: np.ndarray
    loglik: float
    names: tuple[str, ...]
    n_occasions: int
    loglik_null: float  # equal probabilities within each choice set
    iterations: int

    @property
    def z(self) -> np.ndarray:
        """Wald statistics ``coef / se``."""
        return self.coef / self.se

    @property
    def p_values(self) -> np.ndarray:
        """Two-sided normal p-values of the Wald statistics."""
        return np.array([math.erfc(abs(z) / math.sqrt(2.0)) for z in self.z])

    @property
    def pseudo_r2(self) -> float:
        """McFadden's pseudo-R^2, ``1 - loglik / loglik_null``."""
        return 1.0 - self.loglik / self.loglik_null

    def table(self, truth: np.ndarray | None = None) -> str:
        """The coefficient table as text (with a ``truth`` column when one is given)."""
        head = f"{'name':<16}{'coef':>10}{'se':>10}{'z':>9}{'p':>10}"
        head += f"{'truth':>9}" if truth is not None else ""
        lines = [head, "-" * len(head)]
        for i, name in enumerate(self.names):
            row = f"{name:<16}{self.coef[i]:>10.4f}{self.se[i]:>10.4f}"
            row += f"{self.z[i]:>9.2f}{self.p_values[i]:>10.2g}"
            lines.append(row + (f"{truth[i]:>9.3f}" if truth is not None else ""))
        lines += [f"log-likelihood {self.loglik:.3f}  (null {self.loglik_null:.3f})",
                  f"n occasions {self.n_occasions}  McFadden pseudo-R2 {self.pseudo_r2:.4f}  "
                  f"Newton iterations {self.iterations}"]
        return "\n".join(lines)


def _full_mask(X: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    return np.ones(X.shape[:2]) if mask is None else np.asarray(mask, dtype=np.float64)


def choice_probs(coef: np.ndarray, X: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Conditional-logit probabilities ``softmax_k(coef . X[n, k])`` over the real alternatives.

    >>> X = np.array([[[0.0], [np.log(3.0)], [5.0]]])  # one occasion, third slot is padding
    >>> choice_probs(np.array([1.0]), X, np.array([[1.0, 1.0, 0.0]])).round(3).tolist()
    [[0.25, 0.75, 0.0]]
    """
    u = np.where(_full_mask(X, mask) > 0, np.asarray(X, np.float64) @ coef, _NEG)
    u -= u.max(axis=1, keepdims=True)
    e = np.exp(u)
    return e / e.sum(axis=1, keepdims=True)


def _check(X: np.ndarray, chosen: np.ndarray, mask: np.ndarray) -> None:
    if X.ndim != 3 or chosen.shape != X.shape[:1] or mask.shape != X.shape[:2]:
        raise ChoiceTableError(f"shapes X {X.shape}, chosen {chosen.shape}, mask {mask.shape} do not agree")
    if not np.all(mask[np.arange(len(chosen)), chosen] > 0):
        raise ChoiceTableError("a chosen alternative is masked out as padding")
    if not np.isfinite(X[mask > 0]).all():
        raise ChoiceTableError("non-finite feature values in real alternatives")


def fit_conditional_logit(X: np.ndarray, chosen: np.ndarray, mask: np.ndarray | None = None,
                          names: tuple[str, ...] | None = None, tol: float = 1e-10,
                          max_iter: int = 100) -> ClogitResult:
    """Maximum-likelihood conditional logit by damped Newton steps (exact to round-off).

    ``X [N, K, F]``, ``chosen [N]`` (alternative index), ``mask [N, K]``. Raises
    :class:`ChoiceTableError` when a coefficient is not identifiable (singular information),
    e.g. a feature that is constant within every choice set, or when the fit diverges
    (perfect separation).
    """
    X = np.asarray(X, np.float64)
    chosen = np.asarray(chosen, np.int64)
    m = _full_mask(X, mask)
    _check(X, chosen, m)
    X = np.where(m[..., None] > 0, X, 0.0)  # padding values must not leak into sums
    n, _, f = X.shape
    names = names or tuple(f"x{i}" for i in range(f))
    x_chosen = X[np.arange(n), chosen]

    def loglik(b: np.ndarray) -> float:
        u = np.where(m > 0, X @ b, _NEG)
        top = u.max(axis=1)
        return float(np.sum(x_chosen @ b - top - np.log(np.exp(u - top[:, None]).sum(axis=1))))

    beta, ll = np.zeros(f), loglik(np.zeros(f))
    ll_null = ll
    for it in range(1, max_iter + 1):  # noqa: B007 (`it` is reported after the loop)
        p = choice_probs(beta, X, m)
        xbar = np.einsum("nk,nkf->nf", p, X)
        grad = (x_chosen - xbar).sum(axis=0)
        d = X - xbar[:, None, :]
        info = np.einsum("nk,nkf,nkg->fg", p, d, d)  # minus the Hessian
        if np.linalg.cond(info) > 1e12:
            if it == 1:  # singular at coef = 0: the design itself is degenerate
                raise ChoiceTableError("singular information matrix: a coefficient is not identifiable "
                                       "(constant within every choice set, or collinear features)")
            raise ChoiceTableError(f"no finite maximum: probabilities hit 0/1 after {it - 1} Newton steps "
                                   "(perfect separation; too few occasions for these features?)")
        step = np.linalg.solve(info, grad)
        t = 1.0
        while (new := loglik(beta + t * step)) < ll - 1e-12 and t > 1e-8:
            t /= 2.0  # halve until the log-likelihood does not fall
        beta, ll = beta + t * step, new
        if np.max(np.abs(t * step)) < tol:
            break
    else:
        raise ChoiceTableError(f"conditional logit did not converge in {max_iter} iterations "
                               "(perfect separation?)")
    p = choice_probs(beta, X, m)
    xbar = np.einsum("nk,nkf->nf", p, X)
    d = X - xbar[:, None, :]
    cov = np.linalg.inv(np.einsum("nk,nkf,nkg->fg", p, d, d))
    return ClogitResult(beta, np.sqrt(np.diag(cov)), ll, tuple(names), n, ll_null, it)


def _float(value: str, line: int, col: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ChoiceTableError(f"line {line}: column {col!r} value {value!r} is not a number") from None


def read_choice_table(csv_path: str | Path, occasion_col: str, alt_col: str, chosen_col: str,
                      price_col: str, feature_cols: list[str] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Read a long-format choice CSV into padded ``(X [N,K,F], chosen [N], mask [N,K], names)``.

    Occasions keep their order of first appearance (their rows need not be adjacent) and
    alternatives their row order. ``feature_cols`` defaults to every other column whose values
    are all numeric; the price column is appended last. Each occasion must have exactly one
    chosen row and no repeated alternative.
    """
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        rows = [(i + 2, r) for i, r in enumerate(reader)]  # line 1 is the header
    key_cols = [occasion_col, alt_col, chosen_col, price_col]
    missing = [c for c in key_cols + (feature_cols or []) if c not in header]
    if missing:
        raise ChoiceTableError(f"{csv_path}: missing columns {missing}; header is {header}")
    if feature_cols is None:
        feature_cols = [c for c in header if c not in key_cols and rows
                        and all(_is_number(r[c]) for _, r in rows)]
    cols = [*feature_cols, price_col]
    occasions: dict[str, list[tuple[int, dict[str, str]]]] = {}
    for line, r in rows:
        occasions.setdefault(r[occasion_col], []).append((line, r))
    if not occasions:
        raise ChoiceTableError(f"{csv_path}: no rows")
    k = max(len(v) for v in occasions.values())
    X = np.zeros((len(occasions), k, len(cols)))
    mask = np.zeros((len(occasions), k))
    chosen = np.zeros(len(occasions), np.int64)
    for n, (occ, alts) in enumerate(occasions.items()):
        if len({r[alt_col] for _, r in alts}) != len(alts):
            raise ChoiceTableError(f"occasion {occ!r}: an alternative appears twice")
        flags = []
        for j, (line, r) in enumerate(alts):
            X[n, j] = [_float(r[c], line, c) for c in cols]
            flag = _float(r[chosen_col], line, chosen_col)
            if flag not in (0.0, 1.0):
                raise ChoiceTableError(f"line {line}: {chosen_col!r} must be 0 or 1, got {r[chosen_col]!r}")
            flags.append(flag)
        if sum(flags) != 1:
            raise ChoiceTableError(f"occasion {occ!r}: {int(sum(flags))} chosen rows, expected exactly 1")
        mask[n, : len(alts)] = 1.0
        chosen[n] = flags.index(1.0)
    return X, chosen, mask, tuple(cols)


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


SIM_NAMES = ("quality", "promo", "rating", "price")
SIM_TRUTH = np.array([0.8, 0.5, 0.3, -2.0])


def simulate_choices(n_occasions: int, coef: np.ndarray = SIM_TRUTH, n_alts: tuple[int, int] = (2, 5),
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw conditional-logit choices with known ``coef`` over ``quality, promo, rating, price``.

    Choice-set sizes are uniform on ``n_alts`` (inclusive); Gumbel noise makes the argmax
    an exact draw from the logit. Returns ``(X, chosen, mask)``.
    """
    rng = np.random.default_rng(seed)
    k = n_alts[1]
    X = np.stack([rng.normal(size=(n_occasions, k)), rng.binomial(1, 0.3, (n_occasions, k)),
                  rng.normal(size=(n_occasions, k)), rng.lognormal(0.0, 0.3, (n_occasions, k))], axis=-1)
    sizes = rng.integers(n_alts[0], n_alts[1] + 1, n_occasions)
    mask = (np.arange(k)[None, :] < sizes[:, None]).astype(np.float64)
    u = np.where(mask > 0, X @ coef + rng.gumbel(size=mask.shape), -np.inf)
    X[mask == 0] = 0.0
    return X, u.argmax(axis=1), mask


def write_choice_table(path: str | Path, X: np.ndarray, chosen: np.ndarray, mask: np.ndarray,
                       names: tuple[str, ...]) -> None:
    """Write padded choice tensors as a long-format CSV (``occasion, alternative, chosen, names...``)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["occasion", "alternative", "chosen", *names])
        for n in range(X.shape[0]):
            for k in np.flatnonzero(mask[n] > 0):
                w.writerow([f"o{n}", f"a{k}", int(k == chosen[n]), *(f"{v:.6g}" for v in X[n, k])])


def main(argv: list[str] | None = None) -> int:
    """Fit a conditional logit (the linear recommend model) to a choice table; print the table."""
    ap = argparse.ArgumentParser(prog="pricing-choice", description=main.__doc__)
    add_version(ap)
    ap.add_argument("table", nargs="?", help="long-format choice CSV")
    ap.add_argument("--occasion", default="occasion", help="occasion id column")
    ap.add_argument("--alternative", default="alternative", help="alternative id column")
    ap.add_argument("--chosen", default="chosen", help="0/1 chosen column")
    ap.add_argument("--price", default="price", help="price column (a coefficient of its own)")
    ap.add_argument("--features", help="comma-separated feature columns (default: all other numeric)")
    ap.add_argument("--simulate", type=int, metavar="N", help="simulate N occasions with known truth")
    ap.add_argument("--seed", type=int, default=0, help="seed for --simulate")
    ap.add_argument("--write", metavar="CSV", help="with --simulate: keep the simulated table here")
    args = ap.parse_args(argv)
    if (args.table is None) == (args.simulate is None):
        ap.error("give a choice table or --simulate N (not both)")
    truth = None
    path = args.table
    if args.simulate is not None:
        # round-trip through the CSV reader so the demo exercises the same path as real tables
        if args.write:
            path = args.write
        else:
            fd, path = tempfile.mkstemp(suffix=".csv")
            os.close(fd)
        write_choice_table(path, *simulate_choices(args.simulate, seed=args.seed), SIM_NAMES)
        truth = SIM_TRUTH
    features = args.features.split(",") if args.features else None
    try:
        X, chosen, mask, names = read_choice_table(path, args.occasion, args.alternative, args.chosen,
                                                   args.price, features)
        result = fit_conditional_logit(X, chosen, mask, names)
    except ChoiceTableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.simulate is not None and not args.write:
            Path(path).unlink(missing_ok=True)
    if truth is not None and names != SIM_NAMES:
        truth = None  # --features chose a subset: no truth column to line up
    print(result.table(truth))
    return 0


if __name__ == "__main__":
    sys.exit(main())
