"""A second market generator, built differently from :class:`~models.lab.simulator.Market`.

``Market`` draws demand as a logit in ``price / base`` (the price model's own family). This one
builds it from a purchase *intent* and a *willingness to pay* (WTP), so no model family here matches
it by construction::

    P(buy | u, i, p) = intent_ui * P(WTP_ui >= p)
    intent_ui        = sigmoid(-2.6 + intent_s + 0.8 interest_uc + pop_i + brand_s [brand_i = fav_u])
    log WTP_ui       ~ Normal(log base_i + level_s + wtp_c + wtp_i + wtp_u + wtp_uc,  spread_u * spread_c)

The intent does not depend on the price; the survival in log price has a ceiling of ``intent`` and a
shape set by the spread, which differs by user (price awareness) and by category, not only a scale.

Users come from latent **segments** (:data:`SEGMENTS`: deal hunters, loyal/brand buyers, impulse
buyers, researchers) with their own WTP level and spread, intent and browsing, plus within-segment
variation. Behaviour shows the segment through the wire schema's events, in ways the first
simulator does not use: deal hunters browse many categories, pick discounted listings, re-view
items and add to cart then abandon when the price is above their WTP; loyal users concentrate on
their categories and one brand; impulse users buy at once and end the session. The catalog has
heavy-tailed base prices (a t with 3 degrees of freedom in log), costs 25-85 % of base, item
bounds that differ by item, and categories whose price level, WTP level and WTP spread differ.

``segments="alike"`` gives every segment the same WTP (level and spread) and removes the
per-user WTP variation: users then differ in intent and browsing only, which does not move the
profit-optimal price, so one good price per item is all there is to earn.

>>> m = ShopMarket(ShopConfig(n_users=60, n_items=30, days=1, seed=3))
>>> p = m.buy_prob(np.zeros(3, int), np.zeros(3, int), np.array([0.8, 1.0, 1.2]) * m.base[0])
>>> bool(np.all(np.diff(p) <= 0)) and bool(p[0] <= m.intent(np.zeros(1, int), np.zeros(1, int))[0])
True
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.special import expit, ndtr

from models.dataset import EventLog
from streams.schemas import EVENT_TYPES, CatalogItem

from . import market_api

CATEGORIES = ("apparel", "home", "tech", "outdoor", "health", "media", "baby", "auto", "office", "crafts")
SEGMENT_KINDS = ("distinct", "alike")
_DAY = 86400.0
_VIEW, _CLICK, _CART, _BUY, _REVIEW = (EVENT_TYPES.index(t) for t in
                                       ("view", "click", "add_to_cart", "purchase", "review"))


@dataclass(frozen=True)
class Segment:
    """A latent user type: WTP, intent and how it browses."""

    name: str
    share: float
    wtp_level: float    # log WTP relative to the item's reference (base)
    wtp_spread: float   # log-sd of WTP: small = price-aware, a sharp response
    intent: float       # intent logit offset
    sessions: float     # sessions per day
    views: float        # views per session
    breadth: float      # weight of category interest in what is viewed: low = browses many categories
    brand: float        # pick and intent boost of the user's favourite brand
    deal: float         # how much a shown discount draws the view
    click: float        # chance to click without intent
    abandon: float      # chance an intending buyer whose WTP is below the price carts it anyway
    re_view: float      # chance to view an item again later in the session
    impulse: bool       # buys at once and ends the session


SEGMENTS: tuple[Segment, ...] = (
    Segment("deal-hunter", 0.35, -0.10, 0.10, 0.0, 1.4, 7.0, 0.4, 0.0, 1.0, 0.25, 0.55, 0.35, False),
    Segment("loyal", 0.30, 0.12, 0.35, 0.3, 0.8, 3.5, 2.0, 1.5, 0.0, 0.10, 0.10, 0.05, False),
    Segment("impulse", 0.20, 0.05, 0.25, -0.2, 1.0, 4.0, 1.0, 0.3, 0.2, 0.15, 0.15, 0.03, True),
    Segment("researcher", 0.15, 0.00, 0.18, -0.4, 0.7, 6.0, 0.8, 0.3, 0.5, 0.35, 0.35, 0.25, False),
)


@dataclass(frozen=True)
class ShopConfig:
    """Every knob of the second generator; what ``Market``'s loop and judge read has the same name."""

    n_users: int = 2_000
    n_items: int = 200
    n_categories: int = 8
    n_brands: int = 40
    days: float = 8.0
    segments: str = "distinct"      # one of SEGMENT_KINDS
    spread_scale: float = 1.0       # scales every WTP spread: < 1 = a sharper price response
    user_wtp_sd: float = 0.08       # within-segment log-WTP level per user
    user_cat_wtp_sd: float = 0.06   # per user x category
    band: float = 0.2               # randomised prices and oracle within base * (1 +- band)
    max_views: int = 12
    start_ts: float = 1_735_689_600.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.segments not in SEGMENT_KINDS:
            raise ValueError(f"segments must be one of {SEGMENT_KINDS}, not {self.segments!r}")
        if self.spread_scale <= 0:
            raise ValueError(f"spread_scale must be > 0, not {self.spread_scale!r}")

    @classmethod
    def small(cls, **kw: Any) -> ShopConfig:
        """A tiny shop for tests (300 users, 60 items, 2 days)."""
        return replace(cls(n_users=300, n_items=60, days=2.0), **kw)


class ShopMarket:
    """Catalog, segmented users, the history generator and the truth per exposure."""

    def __init__(self, cfg: ShopConfig = ShopConfig()) -> None:
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 13])
        nc, n, ni = min(cfg.n_categories, len(CATEGORIES)), cfg.n_users, cfg.n_items
        # catalog: category price levels, heavy-tailed base prices, costs 25-85 % of base, bounds per item
        self.categories = CATEGORIES[:nc]
        cat_level = rng.normal(np.log(40.0), 0.9, nc)
        self.item_cat = rng.integers(0, nc, ni)
        self.base = np.round(np.clip(np.exp(cat_level[self.item_cat] + 0.6 * rng.standard_t(3, ni)), 2.0, 5000.0), 2)
        self.cost = np.round(self.base * rng.uniform(0.25, 0.85, ni), 2)
        self.min_price = np.round(np.maximum(self.base * rng.uniform(0.6, 0.85, ni), 1.05 * self.cost), 2)
        self.max_price = np.round(self.base * rng.uniform(1.15, 1.5, ni), 2)
        self.item_brand = rng.integers(0, cfg.n_brands, ni)
        self.popularity = rng.normal(0.0, 0.5, ni)
        self.quality = rng.normal(0.0, 0.4, ni)
        self.cat_wtp = rng.normal(0.0, 0.08, nc)
        self.cat_spread = np.exp(rng.normal(0.0, 0.35, nc))
        self.item_wtp = rng.normal(0.0, 0.06, ni)
        # users: a segment each, then within-segment variation
        self.segment = rng.choice(len(SEGMENTS), n, p=[s.share for s in SEGMENTS])
        seg = {f: np.array([getattr(s, f) for s in SEGMENTS])[self.segment] for f in Segment.__dataclass_fields__
               if f not in ("name",)}
        alike = cfg.segments == "alike"
        shares = np.array([s.share for s in SEGMENTS])
        level = np.full(n, shares @ [s.wtp_level for s in SEGMENTS]) if alike else seg["wtp_level"]
        spread = np.full(n, shares @ [s.wtp_spread for s in SEGMENTS]) if alike else seg["wtp_spread"]
        z = rng.normal(size=(6, n))
        self.wtp_user = level + (0.0 if alike else cfg.user_wtp_sd) * z[0]
        self.spread_user = cfg.spread_scale * spread * (1.0 if alike else np.exp(0.25 * z[1]))
        self.wtp_user_cat = (0.0 if alike else cfg.user_cat_wtp_sd) * rng.normal(size=(n, nc))
        self.interest = rng.normal(size=(n, nc))
        self.fav_brand = rng.integers(0, cfg.n_brands, n)
        self.intent_logit = -2.6 + seg["intent"] + 0.3 * z[2]
        self.brand_boost, self.breadth, self.deal = seg["brand"], seg["breadth"], seg["deal"]
        self.session_rate = seg["sessions"] * np.exp(0.3 * z[3] - 0.045)
        self.view_rate = seg["views"] * np.exp(0.2 * z[4])
        self.click_prob, self.abandon, self.re_view = seg["click"], seg["abandon"], seg["re_view"]
        self.impulse = seg["impulse"].astype(bool)
        # what evaluation's fairness table calls the true price sensitivity: the scale of the slope in log
        # price, 1 / the WTP spread (the category's factor aside)
        self.beta = 1.0 / self.spread_user
        self._seed = int(rng.integers(2**31))
        self.user_ids = [f"shopper{k:06d}" for k in range(n)]
        self.item_ids = [f"sku{k:05d}" for k in range(ni)]

    # ---------------------------------------------------------------- the truth per exposure
    def intent(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        """Chance the user wants the item at all (price-free; broadcasting)."""
        fav = self.item_brand[item] == self.fav_brand[user]
        return np.asarray(expit(self.intent_logit[user] + 0.8 * self.interest[user, self.item_cat[item]]
                                + self.popularity[item] + self.brand_boost[user] * fav))

    def wtp_params(self, user: np.ndarray, item: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and sd of ``log WTP`` (broadcasting)."""
        c = self.item_cat[item]
        m = (np.log(self.base[item]) + self.wtp_user[user] + self.cat_wtp[c] + self.item_wtp[item]
             + self.wtp_user_cat[user, c])
        return m, self.spread_user[user] * self.cat_spread[c]

    def buy_prob(self, user: np.ndarray, item: np.ndarray, price: np.ndarray) -> np.ndarray:
        """True ``P(buy)`` = intent x ``P(WTP >= price)`` (index/price arrays, broadcasting)."""
        m, s = self.wtp_params(user, item)
        return np.asarray(self.intent(user, item) * ndtr((m - np.log(np.asarray(price, np.float64))) / s))

    def sample_buy(self, user: np.ndarray, item: np.ndarray, price: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
        """One live step: buy (True) or not, drawn from the true demand."""
        p = self.buy_prob(user, item, price)
        return np.asarray(rng.random(p.shape) < p)

    def consumer_surplus(self, user: np.ndarray, item: np.ndarray, price: np.ndarray) -> np.ndarray:
        """Expected ``intent * E[(WTP - price)+]``, closed form for a lognormal WTP."""
        m, s = self.wtp_params(user, item)
        lp = np.log(np.asarray(price, np.float64))
        tail = np.exp(m + s * s / 2) * ndtr((m + s * s - lp) / s) - np.exp(lp) * ndtr((m - lp) / s)
        return np.asarray(self.intent(user, item) * tail)

    def price_band(self, item: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The guardrail band: item bounds intersected with ``base * (1 +- band)``."""
        b = self.cfg.band
        return (np.maximum(self.min_price[item], self.base[item] * (1 - b)),
                np.minimum(self.max_price[item], self.base[item] * (1 + b)))

    def oracle_price(self, user: np.ndarray, item: np.ndarray, points: int = 401) -> np.ndarray:
        """Profit-optimal price per exposure: a grid of ``points`` prices over the band (0.1 % of base
        at the default band), in chunks. Intent scales profit and so does not move the optimum."""
        user, item = np.broadcast_arrays(np.asarray(user), np.asarray(item))
        lo, hi = self.price_band(item)
        fu, fi, flo, fhi = (x.reshape(-1) for x in (user, item, lo, hi))
        out = np.empty(len(fu))
        t = np.linspace(0.0, 1.0, points)
        for a in range(0, len(fu), 4000):
            u, i = fu[a:a + 4000, None], fi[a:a + 4000, None]
            grid = flo[a:a + 4000, None] + t * (fhi[a:a + 4000] - flo[a:a + 4000])[:, None]
            profit = (grid - self.cost[i]) * self.buy_prob(u, i, grid)
            out[a:a + 4000] = grid[np.arange(len(grid)), np.argmax(profit, axis=1)]
        return out.reshape(user.shape)

    def expected_profit(self, policy: Any, population: tuple[np.ndarray, np.ndarray]) -> float:
        """Mean expected profit per exposure of ``population`` under ``policy(user, item) -> price``."""
        return market_api.expected_profit(self, policy, population)

    def uniform_prices(self, population: tuple[np.ndarray, np.ndarray], points: int = 201) -> np.ndarray:
        """Best single price per item for ``population`` (grid search); base for items not in it."""
        return market_api.uniform_prices(self, population, points)

    def population(self, n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """``n`` (user, item) exposures drawn the way users browse."""
        rng = np.random.default_rng(seed)
        user = rng.integers(0, self.cfg.n_users, n)
        ratio = rng.uniform(1 - self.cfg.band, 1 + self.cfg.band, (n, 48))
        cand = rng.integers(0, self.cfg.n_items, ratio.shape)
        score = self.pick_score(user[:, None], cand, ratio) + rng.gumbel(size=ratio.shape)
        return user, cand[np.arange(n), np.argmax(score, axis=1)]

    # ---------------------------------------------------------------- behaviour
    def catalog(self) -> list[CatalogItem]:
        """The catalog in the wire schema."""
        return [CatalogItem(self.item_ids[i], self.categories[self.item_cat[i]], float(self.base[i]),
                            float(self.cost[i]), float(self.min_price[i]), float(self.max_price[i]))
                for i in range(self.cfg.n_items)]

    def pick_score(self, user: np.ndarray, cand: np.ndarray, ratio: np.ndarray) -> np.ndarray:
        """How much ``user`` wants to view each listed ``cand`` shown at ``ratio`` to base (before the
        Gumbel noise): category interest weighted by the segment's breadth, popularity, the favourite
        brand, and for deal seekers a shown discount."""
        fav = self.item_brand[cand] == self.fav_brand[user]
        return np.asarray(self.breadth[user] * self.interest[user, self.item_cat[cand]] + 0.5 * self.popularity[cand]
                          + self.brand_boost[user] * fav - self.deal[user] * (ratio - 1.0) / self.cfg.band)

    def n_views(self, user: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Views in a session (before an impulse purchase ends it)."""
        return np.minimum(1 + rng.poisson(np.maximum(self.view_rate[user] - 1, 0)), self.cfg.max_views)

    def funnel(self, user: np.ndarray, item: np.ndarray, price: np.ndarray,
               rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One exposure's outcome, drawn: intent, WTP, then buy, click, cart (abandoned when WTP is
        below the price) and a later re-view. ``p_buy`` is the truth the draw follows."""
        m, s = self.wtp_params(user, item)
        shape = np.broadcast_shapes(np.shape(user), np.shape(item), np.shape(price))
        wants = rng.random(shape) < self.intent(user, item)
        affords = m + s * rng.normal(size=shape) >= np.log(price)
        buy = wants & affords
        return {"p_buy": self.buy_prob(user, item, price), "buy": buy,
                "click": wants | (rng.random(shape) < self.click_prob[user]),
                "cart": buy | (wants & ~affords & (rng.random(shape) < self.abandon[user])),
                "re_view": rng.random(shape) < self.re_view[user]}

    def simulate(self, days: float | None = None, chunk: int = 20_000) -> EventLog:
        """The history, a randomised price experiment (each shown price uniform in ``base * (1 +- band)``
        within the item's bounds), in event-time order."""
        cfg = self.cfg
        rng = np.random.default_rng(self._seed)
        T, G = (cfg.days if days is None else days) * _DAY, 3600.0
        n_sess = np.minimum(rng.poisson(self.session_rate * T / _DAY), int(T / (2 * G)))
        s_user = np.repeat(np.arange(cfg.n_users), n_sess)
        start = rng.uniform(0, 1, len(s_user)) * (T - n_sess[s_user] * G)
        order = np.lexsort((start, s_user))
        s_user, start = s_user[order], start[order]
        start = start + G * (np.arange(len(s_user)) - np.repeat(np.cumsum(n_sess) - n_sess, n_sess))
        parts = [self._sessions(rng, s_user[a:a + chunk], start[a:a + chunk], a) for a in range(0, len(s_user), chunk)]
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
        n_view = self.n_views(s_user, rng)
        ratio = rng.uniform(1 - cfg.band, 1 + cfg.band, (S, 48))
        cand = rng.integers(0, cfg.n_items, ratio.shape)
        col = np.argsort(-(self.pick_score(s_user[:, None], cand, ratio) + rng.gumbel(size=ratio.shape)), axis=1)[:, :V]
        item = np.take_along_axis(cand, col, 1)
        price = np.round(np.clip(self.base[item] * np.take_along_axis(ratio, col, 1),
                                 self.min_price[item], self.max_price[item]), 2)
        valid = np.arange(V)[None, :] < n_view[:, None]
        for j in range(1, V):  # a listing may repeat an item: keep its first (best) slot
            valid[:, j] &= ~np.any(item[:, :j] == item[:, j:j + 1], axis=1)
        u = np.broadcast_to(s_user[:, None], item.shape)
        f = self.funnel(u, item, price, rng)
        buy = valid & f["buy"]
        # impulse buyers buy at once and leave: nothing after their first purchase is viewed
        first = np.where(buy.any(axis=1), np.argmax(buy, axis=1), V)
        valid &= ~(self.impulse[s_user][:, None] & (np.arange(V)[None, :] > first[:, None]))
        buy &= valid
        left = self.impulse[s_user][:, None] & buy.any(axis=1, keepdims=True)  # an impulse buyer has gone
        click, cart, re_view = valid & f["click"], valid & f["cart"], valid & f["re_view"] & ~left
        t_view = start[:, None] + np.cumsum(20.0 + rng.exponential(40.0, item.shape), axis=1)
        t_end = np.max(np.where(valid, t_view, -np.inf), axis=1, keepdims=True)
        t_re = t_end + rng.uniform(10.0, 120.0, item.shape)
        t_buy = np.where(self.impulse[s_user][:, None], t_view + rng.uniform(20.0, 40.0, item.shape),
                         t_end + 150.0 + 10.0 * np.cumsum(buy, axis=1))
        review = buy & (rng.random(item.shape) < 0.3)
        stars = np.clip(np.round(3.5 + 2 * self.quality[item] + rng.normal(0, 0.7, item.shape)), 1, 5)
        sess = np.broadcast_to(offset + np.arange(S)[:, None], item.shape)
        cols: list[list[np.ndarray]] = [[] for _ in range(7)]
        for code, mask, t in ((_VIEW, valid, t_view), (_CLICK, click, t_view + rng.uniform(3, 8, item.shape)),
                              (_CART, cart, t_view + rng.uniform(9, 19, item.shape)), (_VIEW, re_view, t_re),
                              (_BUY, buy, t_buy), (_REVIEW, review, t_buy + 5.0)):
            for c, v in zip(cols, (t, u, sess, np.full(item.shape, code), item, price,
                                   stars if code == _REVIEW else np.full(item.shape, np.nan)), strict=True):
                c.append(v[mask])
        return tuple(np.concatenate(c) for c in cols)
