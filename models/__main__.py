"""``python -m models {simulate,train}``: write a simulated history, or train the models.

``simulate`` writes ``<out>/history.jsonl.gz`` (ClickEvents, event-time order),
``<out>/catalog.jsonl`` (CatalogItems) and ``<out>/truth.npz`` (latent traits, demand
parameters and the market config: ``Market.from_truth`` rebuilds the market from it).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from streams.version import add_version

from .dataset import write_jsonl
from .lab.simulator import Market, add_market_args, market_config
from .train import main as train_main


def simulate_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m models simulate``."""
    p = argparse.ArgumentParser(prog="pricing-simulate", description="Write a simulated market history.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_version(p)
    p.add_argument("--out", type=Path, default=Path("artifacts/market"), help="output directory")
    p.add_argument("--no-gzip", action="store_true", help="write history.jsonl uncompressed")
    add_market_args(p)
    return p


def simulate_main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m models simulate``."""
    args = simulate_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    market = Market(market_config(args))
    log = market.simulate()
    history = args.out / ("history.jsonl" if args.no_gzip else "history.jsonl.gz")
    n = write_jsonl(history, tqdm(log.events(), total=len(log), desc="history", mininterval=1.0))
    write_jsonl(args.out / "catalog.jsonl", market.catalog())
    import numpy as np

    np.savez_compressed(args.out / "truth.npz", **market.truth())  # type: ignore[arg-type]
    print(json.dumps({"events": n, "history": str(history), "catalog": str(args.out / "catalog.jsonl"),
                      "truth": str(args.out / "truth.npz"), "seconds": round(time.perf_counter() - t0, 1),
                      "market": asdict(market.cfg)}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in ("simulate", "train"):
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return simulate_main(argv[1:]) if argv[0] == "simulate" else train_main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
