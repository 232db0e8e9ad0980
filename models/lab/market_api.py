# ruff: noqa: D102  (protocol stubs: their meaning is the two generators' docstrings)
"""What the closed loop and the robustness suite's judge need of a simulated market.

Both generators provide it: :class:`~models.lab.simulator.Market` (demand a logit in price/base)
and :class:`~models.lab.shop_market.ShopMarket` (intent x willingness to pay). The loop
(:mod:`models.lab.live_market`, :mod:`models.lab.loop_sim`) schedules sessions, lists and
prices items and logs each exposure's truth; the judge (:func:`models.lab.robustness.judge`)
compares prices by their expected profit under that truth.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from models.dataset import EventLog
from streams.schemas import CatalogItem


class SimMarket(Protocol):
    """A market with a known truth per exposure: ``buy_prob(user, item, price)``."""

    @property
    def cfg(self) -> Any: ...  # a frozen dataclass: n_users, n_items, days, band, max_views, start_ts, seed

    user_ids: list[str]
    item_ids: list[str]
    base: np.ndarray
    cost: np.ndarray
    min_price: np.ndarray
    max_price: np.ndarray
    quality: np.ndarray        # review stars
    session_rate: np.ndarray   # sessions per day per user
    view_rate: np.ndarray      # views per session per user

    def catalog(self) -> list[CatalogItem]: ...
    def buy_prob(self, user: np.ndarray, item: np.ndarray, price: np.ndarray) -> np.ndarray: ...
    def sample_buy(self, user: np.ndarray, item: np.ndarray, price: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray: ...
    def consumer_surplus(self, user: np.ndarray, item: np.ndarray, price: np.ndarray) -> np.ndarray: ...
    def price_band(self, item: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
    def oracle_price(self, user: np.ndarray, item: np.ndarray) -> np.ndarray: ...
    def uniform_prices(self, population: tuple[np.ndarray, np.ndarray], points: int = 201) -> np.ndarray: ...
    def pick_score(self, user: np.ndarray, cand: np.ndarray, ratio: np.ndarray) -> np.ndarray: ...
    def simulate(self, days: float | None = None, chunk: int = 20_000) -> EventLog: ...


def expected_profit(market: SimMarket, policy: Any, population: tuple[np.ndarray, np.ndarray]) -> float:
    """Mean expected profit per (user, item) exposure of ``population`` under ``policy(user, item) -> price``."""
    user, item = population
    price = np.asarray(policy(user, item), dtype=np.float64)
    return float(np.mean((price - market.cost[item]) * market.buy_prob(user, item, price)))


def uniform_prices(market: SimMarket, population: tuple[np.ndarray, np.ndarray], points: int = 201) -> np.ndarray:
    """Best single price per item (one price for all users) for ``population``, by a grid of ``points``
    prices over the item's band; base for items not in it."""
    user, item = population
    out = market.base.copy()
    lo, hi = market.price_band(np.arange(market.cfg.n_items))
    order = np.argsort(item, kind="stable")
    bounds = np.searchsorted(item[order], np.arange(market.cfg.n_items + 1))
    for i in np.flatnonzero(np.diff(bounds)):
        us = user[order[bounds[i]:bounds[i + 1]]][:, None]
        grid = np.linspace(lo[i], hi[i], points)
        prob = market.buy_prob(us, np.full_like(us, i), grid[None, :])
        out[i] = grid[np.argmax(((grid - market.cost[i]) * prob).sum(axis=0))]
    return out

