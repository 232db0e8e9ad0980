"""The in-process catalog: every worker holds all items, read from the compacted catalog topic.

Each worker reads the whole (small, compacted) catalog topic with its own consumer outside the
consumer group, so every worker knows every item whichever clickstream partitions it owns.
Column arrays over all items are rebuilt lazily after a change, for vectorised candidate
scoring.

>>> cat = Catalog()
>>> cat.put(CatalogItem("i1", "shoes", 10.0, 4.0, 8.0, 12.0))
>>> cat.get("i1").base_price, cat.get("nope"), len(cat)
(10.0, None, 1)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .features import FeatureSpec, category_bucket, category_levels
from .schemas import CatalogItem


@dataclass(frozen=True, slots=True)
class CatalogColumns:
    """All items as columns: ids, terms, and the category bucket and level in category of each."""

    ids: tuple[str, ...]
    index: dict[str, int]
    base_price: NDArray[np.float64]
    unit_cost: NDArray[np.float64]
    min_price: NDArray[np.float64]
    max_price: NDArray[np.float64]
    bucket: NDArray[np.int64]
    level: NDArray[np.float64]


class Catalog:
    """Items by id; ``columns()`` gives cached column arrays for the current contents."""

    def __init__(self, n_buckets: int = FeatureSpec().n_buckets) -> None:
        self._items: dict[str, CatalogItem] = {}
        self._columns: CatalogColumns | None = None
        self._n_buckets = n_buckets

    @classmethod
    def of(cls, items: Iterable[CatalogItem], n_buckets: int = FeatureSpec().n_buckets) -> Catalog:
        """A catalog holding ``items`` (a later item replaces an earlier one with the same id)."""
        cat = cls(n_buckets)
        for it in items:
            cat.put(it)
        return cat

    def __len__(self) -> int:
        return len(self._items)

    @property
    def n_buckets(self) -> int:
        """Category buckets of the ``bucket`` column (the feature spec's ``n_buckets``)."""
        return self._n_buckets

    def put(self, item: CatalogItem) -> None:
        """Insert or replace an item."""
        if self._items.get(item.item_id) != item:
            self._items[item.item_id] = item
            self._columns = None

    def remove(self, item_id: str) -> None:
        """Forget an item (a tombstone on the compacted topic)."""
        if self._items.pop(item_id, None) is not None:
            self._columns = None

    def get(self, item_id: str) -> CatalogItem | None:
        """The item, or None when unknown."""
        return self._items.get(item_id)

    def level(self, item_id: str) -> float | None:
        """The item's price level within its category (:func:`~streams.features.category_levels`)."""
        cols = self.columns()
        k = cols.index.get(item_id)
        return None if k is None else float(cols.level[k])

    def columns(self) -> CatalogColumns:
        """Column arrays over all items (rebuilt only after a change)."""
        if self._columns is None:
            items = list(self._items.values())
            terms = np.array([(i.base_price, i.unit_cost, i.min_price, i.max_price) for i in items],
                             np.float64).reshape(-1, 4)
            base, cost, lo, hi = terms.T
            self._columns = CatalogColumns(
                tuple(i.item_id for i in items), {i.item_id: k for k, i in enumerate(items)}, base, cost, lo, hi,
                np.array([category_bucket(i.category, self._n_buckets) for i in items], np.int64),
                np.array(category_levels([i.category for i in items], [i.base_price for i in items]), np.float64))
        return self._columns
