"""The per-user table record: features, replay guard, and the user's recent prices.

One record per keyed-hash user id lives in the Faust table (and its changelog topic). It holds

* the rolling feature state (:mod:`streams.features`);
* ``offset``: the clickstream offset of the newest event already folded in. Faust is
  at-least-once: after a crash the uncommitted events are delivered again, and the guard
  ``offset <= record.offset`` makes re-applying them a no-op, so the state after a crash equals
  the state of a run that never crashed (a user's events all come from one partition, in order);
* ``prices``: the last price decided per item, for the guardrail that limits how fast one
  user's price for one item may move; bounded to ``MAX_REMEMBERED_PRICES`` items (oldest go).

>>> spec = FeatureSpec()
>>> r = new_record(spec)
>>> r.remember_price("i1", 9.5, 100.0)
>>> decode_record(encode_record(r)) == r
True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from .features import FeatureSpec, UserState, decode_state, encode_state, new_state

MAX_REMEMBERED_PRICES = 32


@dataclass(slots=True)
class UserRecord:
    """Feature state plus replay guard and recent prices of one user."""

    features: UserState
    offset: int = -1
    prices: dict[str, tuple[float, float]] = field(default_factory=dict)  # item -> (price, ts)

    def remember_price(self, item_id: str, price: float, ts: float) -> None:
        """Record the newest price for an item, evicting the oldest beyond the bound."""
        self.prices.pop(item_id, None)
        self.prices[item_id] = (price, ts)
        while len(self.prices) > MAX_REMEMBERED_PRICES:
            self.prices.pop(next(iter(self.prices)))


def new_record(spec: FeatureSpec) -> UserRecord:
    """An empty record sized for ``spec``."""
    return UserRecord(new_state(spec))


def encode_record(r: UserRecord) -> bytes:
    """Bytes for the table value and its changelog record."""
    return orjson.dumps({"f": orjson.Fragment(encode_state(r.features)), "o": r.offset,
                         "p": [[k, p, t] for k, (p, t) in r.prices.items()]})


def decode_record(data: bytes, spec: FeatureSpec | None = None) -> UserRecord:
    """Inverse of :func:`encode_record` (``spec``: see :func:`~streams.features.decode_state`)."""
    obj = orjson.loads(data)
    return UserRecord(decode_state(orjson.dumps(obj["f"]), spec or FeatureSpec()), obj["o"],
                      {k: (p, t) for k, p, t in obj["p"]})
