"""A seeded market with known demand: the yardstick the models and the pricing are judged by.

Users carry latent traits: price sensitivity ``beta_u``, a baseline purchase propensity, category
tastes and engagement. By default demand is a known logit in the price ratio, the parametrisation
the pricing code uses::

    P(buy | u, i, p) = sigmoid(alpha_ui - beta_ui * p / base_i),
    alpha_ui = mu_u + taste_weight * taste_uc(i) + quality_i + beta_ui
    beta_ui  = beta_u * exp(cat_c(i) + item_i + user_cat_uc(i))

(``+ beta_ui`` makes the conversion at the base price independent of sensitivity, so only the
slope tells sensitive users apart). The sensitivity's category, item and user x category parts
are zero by default (``beta_cat_sd``, ``beta_item_sd``, ``beta_user_cat_sd``); real markets have
them. ``demand`` swaps the logit for a form no price model here assumes (:data:`DEMANDS`), with
the same conversion at base and the same sensitivity scale:

* ``probit``  - a normal CDF instead of the logistic, matched at base in level and slope (thinner tails);
* ``kinked``  - a reference-price response: above the base price the slope is ``1 + kink`` times
  steeper (losses loom larger than gains);
* ``mixture`` - each visit is a bargain hunt (slope x 2.5) with probability 0.4, else a casual visit
  (slope x 0.4): a mixture of two logits, which is no single logit.

``signal`` says where sensitivity shows in behaviour (:data:`SIGNALS`): ``picks`` (default: in the
price level of what the user views and in the shown prices they pick), ``browsing`` (in how much
they browse and click, not in what) or ``none``. ``cold_share`` of the users have no history at
all: they appear first in a live loop. Traits leak, noisily, into behaviour with strength ``reveal``:
sensitive users pick cheaper items and cheaper shown prices out of their listings, everyone views
their favourite categories, engaged users come back and click more, and carts and purchases
happen where the logit is high (the discount response). History is a randomized price
experiment: each shown price is uniform in ``base * (1 +- band)``, clipped to the item bounds.

>>> m = Market(MarketConfig(n_users=50, n_items=20, days=1, seed=3))
>>> log = m.simulate()
>>> sorted(set(log.type_names())) <= ["add_to_cart", "click", "purchase", "review", "view"]
True
>>> bool(np.all(np.diff(m.buy_prob(np.zeros(3, int), np.zeros(3, int), np.array([1., 2., 3.]) * m.base[0])) < 0))
True
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit, lambertw, logit, ndtr, ndtri

from models.dataset import EventLog
from streams.schemas import CatalogItem

from . import market_api

CATEGORIES = ("shoes", "electronics", "books", "toys", "garden", "beauty", "kitchen", "sports",
              "fashion", "grocery", "music", "pets")
Policy = Callable[[np.ndarray, np.ndarray], np.ndarray]
_DAY = 86400.0
DEMANDS = ("logit", "probit", "kinked", "mixture")
SIGNALS = ("picks", "browsing", "none")
MIXTURE = (0.4, 2.5, 0.4)  # share of bargain-hunting visits, their slope factor, the other visits' factor


@dataclass(frozen=True)
class MarketConfig:
    """Every knob of the market; the defaults are the 'default simulated market'."""

    n_users: int = 8_000
    n_items: int = 400
    n_categories: int = 10
    days: float = 14.0
    heterogeneity: float = 1.0      # scales every trait's dispersion; 0 = all users alike
    reveal: float = 1.0             # how strongly behaviour reflects traits; 0 = not at all
    noise: float = 0.5              # per-user noise between a trait and the behaviour it drives
    beta_median: float = 4.0        # median price sensitivity (slope in price ratio)
    beta_log_sd: float = 0.5        # log-sd of beta at heterogeneity 1
    base_logit: float = -3.4        # view conversion logit at base price, neutral taste
    sessions_per_day: float = 1.0
    views_per_session: float = 4.5
    max_views: int = 12
    band: float = 0.2               # randomized prices and oracle within base * (1 +- band)
    start_ts: float = 1_735_689_600.0   # 2025-01-01T00:00:00Z
    seed: int = 0
    # sensitivity beyond the user's own (log-sd of multiplicative parts; 0 = the user alone sets it)
    beta_cat_sd: float = 0.0        # per category
    beta_item_sd: float = 0.0       # per item
    beta_user_cat_sd: float = 0.0   # per user x category, scaled by heterogeneity
    demand: str = "logit"           # one of DEMANDS
    kink: float = 1.0               # extra slope above the base price for demand="kinked"
    signal: str = "picks"           # one of SIGNALS: where sensitivity shows in behaviour
    cold_share: float = 0.0         # share of users with no history (they appear first in a live loop)

    def __post_init__(self) -> None:
        if self.demand not in DEMANDS:
            raise ValueError(f"demand must be one of {DEMANDS}, not {self.demand!r}")
        if self.signal not in SIGNALS:
            raise ValueError(f"signal must be one of {SIGNALS}, not {self.signal!r}")
        if not 0.0 <= self.cold_share < 1.0:
            raise ValueError(f"cold_share must be in [0, 1), not {self.cold_share!r}")

    @classmethod
    def small(cls, **kw: Any) -> MarketConfig:
        """A tiny market for tests and CI (a few hundred users, one day)."""
        return replace(cls(n_users=300, n_items=60, days=1.0, sessions_per_day=3.0), **kw)


CLI_KNOBS = ("n_users", "n_items", "days", "heterogeneity", "reveal", "noise", "seed", "beta_cat_sd", "beta_item_sd",
             "beta_user_cat_sd", "demand", "kink", "signal", "cold_share")
"""The market knobs every command line offers (``--n-users`` ...), declared here once."""


def add_market_args(p: argparse.ArgumentParser | argparse._ArgumentGroup, knobs: tuple[str, ...] = CLI_KNOBS,
                    small: bool = True) -> None:
    """Add ``--small`` and one option per knob (default None: the market's own value) to ``p``."""
    d = MarketConfig()
    if small:
        p.add_argument("--small", action="store_true", help="tiny market (300 users, 60 items, 1 day) for CI")
    for name in knobs:
        p.add_argument(f"--{name.replace('_', '-')}", type=type(getattr(d, name)), default=None,
                       help=f"market knob (default {getattr(d, name)})")


def market_config(args: argparse.Namespace, base: MarketConfig | None = None) -> MarketConfig:
    """``base`` (else ``--small`` or the defaults) with the knobs the command line set."""
    cfg = base or (MarketConfig.small() if getattr(args, "small", False) else MarketConfig())
    return replace(cfg, **{k: getattr(args, k) for k in CLI_KNOBS if getattr(args, k, None) is not None})


def interest_prob(p_buy: np.ndarray) -> np.ndarray:
    """Chance a view gets interest (click and cart): one logit above buying, so buyers are interested."""
    with np.errstate(divide="ignore"):
        return np.asarray(expit(logit(np.clip(p_buy, 0.0, 1.0)) + 1.0))


class Market:
    """Catalog, users with latent traits, the history generator and the truth on demand."""

    def __init__(self, cfg: MarketConfig = MarketConfig()) -> None:
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        h, nc = cfg.heterogeneity, min(cfg.n_categories, len(CATEGORIES))
        # catalog: per-category price level, lognormal base prices, cost 40-70 % of base
        self.categories = CATEGORIES[:nc]
        cat_level = rng.normal(np.log(30.0), 0.6, nc)
        self.item_cat = rng.integers(0, nc, cfg.n_items)
        self.base = np.round(np.maximum(1.0, np.exp(cat_level[self.item_cat] + rng.normal(0, 0.5, cfg.n_items))), 2)
        self.cost = np.round(self.base * rng.uniform(0.4, 0.7, cfg.n_items), 2)
        self.min_price, self.max_price = np.round(0.7 * self.base, 2), np.round(1.3 * self.base, 2)
        self.quality = rng.normal(0.0, 0.4, cfg.n_items)
        # users: standardised latent traits, then the traits in their natural units
        z = rng.normal(size=(4, cfg.n_users))
        self.z_beta, z_mu, self.z_eng = z[0], z[1], z[2]
        self.beta = cfg.beta_median * np.exp(h * cfg.beta_log_sd * self.z_beta)
        self.mu = cfg.base_logit + h * 0.5 * (0.6 * self.z_eng + 0.8 * z_mu)
        self.taste = h * rng.normal(size=(cfg.n_users, nc))
        self.taste_weight = 0.8
        # what behaviour sees: the traits blurred by per-user noise
        self.beta_signal = h * self.z_beta + cfg.noise * z[3]
        self.taste_signal = self.taste + cfg.noise * rng.normal(size=self.taste.shape)
        self.session_rate = cfg.sessions_per_day * np.exp(h * 0.5 * self.z_eng - 0.125 * h * h)
        self.view_rate = cfg.views_per_session * np.exp(h * 0.3 * self.z_eng)
        self.click_logit = -1.7 + cfg.reveal * h * 0.5 * self.z_eng
        self._seed = int(rng.integers(2**31))
        # the knobs added later draw from their own stream, so the default market is unchanged
        extra = np.random.default_rng([cfg.seed, 7])
        self.beta_cat = cfg.beta_cat_sd * extra.normal(size=nc)
        self.beta_item = cfg.beta_item_sd * extra.normal(size=cfg.n_items)
        self.beta_user_cat = h * cfg.beta_user_cat_sd * extra.normal(size=(cfg.n_users, nc))
        self.cold = extra.random(cfg.n_users) < cfg.cold_share
        if cfg.signal != "picks":  # sensitivity does not show in what users pick
            self.pick_signal = np.zeros(cfg.n_users)
        else:
            self.pick_signal = self.beta_signal
        if cfg.signal == "browsing":  # ...but sensitive users browse longer and click more (comparing)
            self.view_rate = self.view_rate * np.exp(0.3 * cfg.reveal * self.beta_signal)
            self.click_logit = self.click_logit + 0.5 * cfg.reveal * self.beta_signal
        self.user_ids = [f"u{k:06d}" for k in range(cfg.n_users)]
        self.item_ids = [f"i{k:05d}" for k in range(cfg.n_items)]

    # ---------------------------------------------------------------- the truth on demand
    def sensitivity(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        """True slope ``beta_ui`` in the price ratio for index arrays (broadcasting): the user's
        ``beta_u`` times the category, item and user x category parts."""
        c = self.item_cat[item]
        return self.beta[user] * np.exp(self.beta_cat[c] + self.beta_item[item] + self.beta_user_cat[user, c])

    def base_logit(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        """Logit of the conversion at the base price (broadcasting)."""
        return self.mu[user] + self.taste_weight * self.taste[user, self.item_cat[item]] + self.quality[item]

    def alpha(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        """Logit demand's intercept ``alpha_ui`` (``logit = alpha - beta_ui * ratio``; broadcasting)."""
        return self.base_logit(user, item) + self.sensitivity(user, item)

    def demand(self, m: np.ndarray, beta: np.ndarray, ratio: np.ndarray) -> np.ndarray:
        """``P(buy)`` from the logit at base ``m``, the slope ``beta`` and the price ratio (broadcasting)."""
        d = 1.0 - np.asarray(ratio, np.float64)
        x = m + beta * d
        kind = self.cfg.demand
        if kind == "probit":  # the same conversion and slope at base as the logit, thinner tails
            p0 = expit(m)
            z0 = ndtri(p0)
            return np.asarray(ndtr(z0 + p0 * (1.0 - p0) / (np.exp(-0.5 * z0 * z0) / np.sqrt(2 * np.pi)) * beta * d))
        if kind == "kinked":
            return np.asarray(expit(x - self.cfg.kink * beta * np.maximum(-d, 0.0)))
        if kind == "mixture":
            w, hunt, casual = MIXTURE
            return np.asarray(w * expit(m + hunt * beta * d) + (1.0 - w) * expit(m + casual * beta * d))
        return np.asarray(expit(x))

    def buy_prob(self, user: np.ndarray, item: np.ndarray, price: np.ndarray) -> np.ndarray:
        """True ``P(buy)`` of ``user`` for ``item`` shown at ``price`` (index/price arrays)."""
        return self.demand(self.base_logit(user, item), self.sensitivity(user, item),
                           np.asarray(price) / self.base[item])

    def consumer_surplus(self, user: np.ndarray, item: np.ndarray, price: np.ndarray) -> np.ndarray:
        """Expected surplus of one exposure at ``price``: the integral of ``P(buy | x)`` over ``x``
        from ``price`` up (a unit-demand buyer's willingness to pay has that survival function).

        Closed form for the logit (``log1p(exp(logit)) / (beta / base)``); for the other forms a
        trapezoid over ten base prices above ``price`` plus the logistic tail beyond it.
        """
        user, item = np.broadcast_arrays(np.asarray(user), np.asarray(item))
        price = np.broadcast_to(np.asarray(price, np.float64), user.shape)
        base, beta, m = self.base[item], self.sensitivity(user, item), self.base_logit(user, item)
        r = price / base
        if self.cfg.demand == "logit":
            return np.asarray(np.logaddexp(0.0, m + beta * (1.0 - r)) * base / beta)
        grid = r[..., None] + 10.0 * np.linspace(0.0, 1.0, 601) ** 2  # dense where demand is highest
        p = self.demand(m[..., None], beta[..., None], grid)
        inner = np.trapezoid(p, grid, axis=-1)
        slowest = beta * (MIXTURE[2] if self.cfg.demand == "mixture" else 1.0)
        return np.asarray((inner + p[..., -1] / slowest) * base)

    def sample_buy(self, user: np.ndarray, item: np.ndarray, price: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
        """One live step of the market: buy (True) or not, drawn from the true demand."""
        p = self.buy_prob(user, item, price)
        return np.asarray(rng.random(p.shape) < p)

    def price_band(self, item: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The guardrail band: item bounds intersected with ``base * (1 +- band)``."""
        b = self.cfg.band
        return (np.maximum(self.min_price[item], self.base[item] * (1 - b)),
                np.minimum(self.max_price[item], self.base[item] * (1 + b)))

    def oracle_price(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        """Profit-optimal price under the true demand, clipped into the band.

        For the logit, profit is log-concave above cost, so clipping the unconstrained optimum
        ``c + (1 + W(exp(a - b'c - 1))) / b'`` (``b' = beta / base``) is the constrained optimum.
        The other demand forms are searched on a grid of 401 prices over the band (a step of 0.1 %
        of base at the default band), in chunks.
        """
        user, item = np.broadcast_arrays(np.asarray(user), np.asarray(item))
        lo, hi = self.price_band(item)
        if self.cfg.demand == "logit":
            bp = self.sensitivity(user, item) / self.base[item]
            c = self.cost[item]
            z = np.minimum(self.alpha(user, item) - bp * c - 1.0, 700.0)
            p = c + (1.0 + lambertw(np.exp(z)).real) / bp
            return np.clip(p, lo, hi)
        out = np.empty(user.shape)
        flat_u, flat_i, flat_lo, flat_hi = (x.reshape(-1) for x in (user, item, lo, hi))
        res = out.reshape(-1)
        t = np.linspace(0.0, 1.0, 401)
        for a in range(0, len(flat_u), 5000):
            u, i = flat_u[a:a + 5000], flat_i[a:a + 5000]
            grid = flat_lo[a:a + 5000, None] + t * (flat_hi[a:a + 5000] - flat_lo[a:a + 5000])[:, None]
            prob = self.demand(self.base_logit(u, i)[:, None], self.sensitivity(u, i)[:, None],
                               grid / self.base[i][:, None])
            res[a:a + 5000] = grid[np.arange(len(u)), np.argmax((grid - self.cost[i][:, None]) * prob, axis=1)]
        return out

    def expected_profit(self, policy: Policy, population: tuple[np.ndarray, np.ndarray]) -> float:
        """Mean expected profit per (user, item) exposure of ``population`` under ``policy``."""
        return market_api.expected_profit(self, policy, population)

    def uniform_prices(self, population: tuple[np.ndarray, np.ndarray], points: int = 201) -> np.ndarray:
        """Best single price per item (one price for all users) for ``population``, by grid search."""
        return market_api.uniform_prices(self, population, points)

    def population(self, n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """``n`` (user, item) exposures drawn the way users browse (taste-weighted items)."""
        rng = np.random.default_rng(seed)
        user = rng.integers(0, self.cfg.n_users, n)
        item, _ = self._pick(rng, user[:, None], 1, rng.uniform(1 - self.cfg.band, 1 + self.cfg.band, (n, 48)))
        return user, item[:, 0]

    # ---------------------------------------------------------------- catalog and history
    def catalog(self) -> list[CatalogItem]:
        """The catalog in the wire schema."""
        return [CatalogItem(self.item_ids[i], self.categories[self.item_cat[i]], float(self.base[i]),
                            float(self.cost[i]), float(self.min_price[i]), float(self.max_price[i]))
                for i in range(self.cfg.n_items)]

    def pick_score(self, user: np.ndarray, cand: np.ndarray, ratio: np.ndarray) -> np.ndarray:
        """How much ``user`` wants to view each listed ``cand`` shown at price ``ratio`` to base, before
        the Gumbel noise: taste, and (``signal="picks"``) cheaper items and cheaper shown prices for
        the sensitive."""
        r, band = self.cfg.reveal, self.cfg.band
        lp = np.log(self.base)
        level = ((lp - lp.mean()) / (lp.std() + 1e-9))[cand]
        s = self.pick_signal[user]
        return np.asarray(r * (self.taste_signal[user, self.item_cat[cand]] - 0.7 * s * level
                               - 1.0 * s * (ratio - 1.0) / band))

    def _pick(self, rng: np.random.Generator, user: np.ndarray, k: int,
              ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` of a random listing per row by taste, price level and shown price (Gumbel).

        ``ratio`` is the shown price ratio of each listed candidate ``[S, C]``; returns the
        picked items and the column of each pick in the listing, both ``[S, k]``.
        """
        cand = rng.integers(0, self.cfg.n_items, ratio.shape)
        score = self.pick_score(user, cand, ratio) + rng.gumbel(size=ratio.shape)
        col = np.argsort(-score, axis=1)[:, :k]
        return np.take_along_axis(cand, col, 1), col

    def simulate(self, days: float | None = None, chunk: int = 20_000) -> EventLog:
        """The history: sessions of view/click/add_to_cart/purchase/review, in event-time order."""
        cfg = self.cfg
        rng = np.random.default_rng(self._seed)
        T, G = (cfg.days if days is None else days) * _DAY, 3600.0
        # sessions: n per user, starts uniform then spread so consecutive ones are >= G apart
        n_sess = np.minimum(rng.poisson(self.session_rate * T / _DAY), int(T / (2 * G)))
        n_sess[self.cold] = 0  # cold-start users have no history
        s_user = np.repeat(np.arange(cfg.n_users), n_sess)
        start = rng.uniform(0, 1, len(s_user)) * (T - n_sess[s_user] * G)
        order = np.lexsort((start, s_user))
        s_user, start = s_user[order], start[order]
        k = np.arange(len(s_user)) - np.repeat(np.cumsum(n_sess) - n_sess, n_sess)
        start = start + k * G
        parts = [self._sessions(rng, s_user[a:a + chunk], start[a:a + chunk], a)
                 for a in range(0, len(s_user), chunk)]
        cols = [np.concatenate([p[j] for p in parts]) for j in range(7)] if parts else [np.zeros(0)] * 7
        ts, user, sess, etype, item, price, rating = cols
        o = np.lexsort((etype, ts))
        return EventLog(ts=cfg.start_ts + ts[o], user=user[o].astype(np.int32), session=sess[o].astype(np.int64),
                        etype=etype[o].astype(np.int8), item=item[o].astype(np.int32), price=price[o],
                        rating=rating[o].astype(np.float32), user_ids=self.user_ids, item_ids=self.item_ids)

    def _sessions(self, rng: np.random.Generator, s_user: np.ndarray, start: np.ndarray,
                  offset: int) -> tuple[np.ndarray, ...]:
        """Events of one chunk of sessions as flat columns (ts relative to the start)."""
        cfg, S, V = self.cfg, len(s_user), self.cfg.max_views
        n_view = np.minimum(1 + rng.poisson(np.maximum(self.view_rate[s_user] - 1, 0)), V)
        # listing of 48 candidates at randomized prices -> the V best by the user's taste
        lst_ratio = rng.uniform(1 - cfg.band, 1 + cfg.band, (S, 48))
        item, col = self._pick(rng, s_user[:, None], V, lst_ratio)
        price = np.round(np.clip(self.base[item] * np.take_along_axis(lst_ratio, col, 1),
                                 self.min_price[item], self.max_price[item]), 2)
        valid = np.arange(V)[None, :] < n_view[:, None]
        for j in range(1, V):  # a listing may repeat an item: keep its first (best) slot
            valid[:, j] &= ~np.any(item[:, :j] == item[:, j:j + 1], axis=1)
        u = np.broadcast_to(s_user[:, None], item.shape)
        # one uniform decides the funnel: buy (p) within interest (sigmoid(logit + 1))
        p_buy = self.buy_prob(u, item, price)
        draw = rng.random(item.shape)
        buy = valid & (draw < p_buy)
        interest = valid & (draw < interest_prob(p_buy))
        click = buy | interest | (valid & (rng.random(item.shape) < expit(self.click_logit[u])))
        cart = buy | (interest & (rng.random(item.shape) < 0.7))
        t_view = start[:, None] + np.cumsum(20.0 + rng.exponential(40.0, item.shape), axis=1)
        t_end = np.max(np.where(valid, t_view, -np.inf), axis=1, keepdims=True)
        t_buy = t_end + 30.0 + 10.0 * np.cumsum(buy, axis=1)
        review = buy & (rng.random(item.shape) < 0.3)
        stars = np.clip(np.round(3.5 + 2 * self.quality[item] + rng.normal(0, 0.7, item.shape)), 1, 5)
        sess = np.broadcast_to(offset + np.arange(S)[:, None], item.shape)
        cols: list[list[np.ndarray]] = [[] for _ in range(7)]
        for code, mask, t in ((0, valid, t_view), (1, click, t_view + rng.uniform(3, 8, item.shape)),
                              (2, cart, t_view + rng.uniform(9, 19, item.shape)), (3, buy, t_buy),
                              (4, review, t_buy + 5.0)):
            for c, v in zip(cols, (t, u, sess, np.full(item.shape, code), item, price,
                                   stars if code == 4 else np.full(item.shape, np.nan)), strict=False):
                c.append(v[mask])
        return tuple(np.concatenate(c) for c in cols)

    # ---------------------------------------------------------------- persistence
    def truth(self) -> dict[str, np.ndarray]:
        """The latent traits and demand parameters as arrays (for a truth ``.npz``)."""
        return {"user_ids": np.array(self.user_ids), "item_ids": np.array(self.item_ids),
                "beta": self.beta, "beta_category": self.beta_cat, "beta_item": self.beta_item,
                "beta_user_category": self.beta_user_cat, "cold": self.cold,
                "mu": self.mu, "taste": self.taste, "taste_weight": np.array(self.taste_weight),
                "z_engagement": self.z_eng, "beta_signal": self.beta_signal, "item_category": self.item_cat,
                "categories": np.array(self.categories), "quality": self.quality, "base": self.base,
                "cost": self.cost, "min_price": self.min_price, "max_price": self.max_price,
                "config": np.array(json.dumps(asdict(self.cfg)))}

    @classmethod
    def from_truth(cls, path: str | Path) -> Market:
        """Rebuild the market a truth ``.npz`` was written from (it is a pure function of its config)."""
        with np.load(path) as z:
            market = cls(MarketConfig(**json.loads(str(z["config"]))))
            if not np.allclose(market.beta, z["beta"]):
                raise ValueError(f"{path}: traits do not match its config (written by another simulator version?)")
        return market
