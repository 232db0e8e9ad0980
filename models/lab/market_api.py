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
