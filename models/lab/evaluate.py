"""``pricing-sim-evaluate``: ``pricing-evaluate`` for a simulated run, against the market's truth.

Adds what only a simulator can know: the expected profit of the oracle and of the best uniform
price on the same exposures, the personalization efficiency, and fairness by true sensitivity.
"""

from __future__ import annotations

from typing import Any

from streams.tools.evaluate_cmd import main as evaluate_main

from .market_api import SimMarket
from .shop_market import ShopConfig, ShopMarket
from .simulator import Market, MarketConfig


def market_of(meta: dict[str, Any]) -> SimMarket | None:
    """The simulated market a run's meta describes (its truth), or None for a non-simulated run."""
    cfg = meta.get("market") or meta.get("knobs", {}).get("market")
    if cfg and "segments" in cfg:  # only the second generator's config has segments
        return ShopMarket(ShopConfig(**cfg))
    return Market(MarketConfig(**cfg)) if cfg else None


def main(argv: list[str] | None = None) -> int:
    """Evaluate a simulated A/B run against its market's truth (options as ``pricing-evaluate``)."""
    return evaluate_main(argv, truth=market_of, prog="pricing-sim-evaluate")


if __name__ == "__main__":
    raise SystemExit(main())
