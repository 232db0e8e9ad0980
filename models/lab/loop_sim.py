"""The closed-loop market without a broker: the worker's pipeline called in-process.

``python -m models.lab.loop_sim --train-dir var/demo/default/train --model-dir var/demo/default/models``
(``pricing-loop-sim``) runs the same users, sessions and funnel as :mod:`models.lab.live_market`, and
the same per-batch logic as the worker (:class:`streams.pipeline.Pipeline` with the exported ONNX
bundle), but in one process on a simulated clock: no Kafka, no Faust, no waiting. A 4-day run on
the default market takes a few minutes instead of the demo's twelve, so a change to the features,
the models or the pricing can be judged in the closed loop, feedback of its own prices included,
before it is tried live.

What it shares with the live loop, exactly: the market, the session schedule, the listing rule
(users pick from listings at the newest price the pipeline sent them), the funnel by the true
demand, the warm-up history, and the pipeline (parsing, features, scoring, guardrails, A/B arms).
What it leaves out: Kafka itself, batching across users (per-user results do not depend on it) and
price timeouts (every view gets its decision). Users are independent, so running their sessions
one after another in start order gives the same per-user event sequences as running them
concurrently.

Writes ``exposures.jsonl``, ``events.jsonl`` and ``meta.json`` to ``--out`` like the live loop,
so ``pricing-evaluate --exposures <out>`` reads it; ``--evaluate`` prints the table right away.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from models.lab.evaluate import market_of
from streams.catalog import Catalog
from streams.features import FeatureSpec, feature_names
from streams.pipeline import Pipeline, RawRecord
from streams.schemas import ClickEvent, PriceEvent, decision_id, dumps, parse_price
from streams.scoring import BundleWatcher, Scorer
from streams.settings import Settings, cli_settings
from streams.tools.evaluate import evaluate, load_exposure_log
from streams.tools.report import text_table
from streams.version import add_version

from .live_market import LiveMarket, LoopConfig, SimClock, market_from_args
from .market_api import SimMarket
from .simulator import add_market_args

_DAY = 86400.0


class _InstantClock(SimClock):
    """A simulated clock that never waits: event times are the schedule's, nothing sleeps."""

    async def sleep_until(self, sim: float) -> None:
        return None


class InProcessMarket(LiveMarket):
    """:class:`LiveMarket` with :class:`Pipeline` in place of Kafka and the worker."""

    def __init__(self, market: SimMarket, s: Settings, cfg: LoopConfig, out: Path, scorer: Scorer) -> None:
        super().__init__(market, s, cfg, out)
        catalog = Catalog()
        for item in market.catalog():
            catalog.put(item)
        self.pipeline = Pipeline(s, catalog, lambda: scorer, clock=lambda: float("inf"))
        self.table: dict[str, bytes] = {}
        self.offset = 0
        self.dead_letters = 0
        self.decisions: dict[str, PriceEvent] = {}
        self._prices: Any = None     # prices.jsonl: every decision of the loop, as the prices topic holds them
        self._warm: Any = None       # warm_events.jsonl: the warm-up history (features at the loop's start)

    def _process(self, events: list[ClickEvent], history: bool = False) -> None:
        """Events through the pipeline as one batch; prices become known, as the follower does.
        ``history``: the warm-up, marked as the live loop marks it (state only, not priced)."""
        raws = []
        for ev in events:
            raws.append(RawRecord(ev.user_id.encode(), dumps(ev), self.s.topic_clickstream, 0, self.offset,
                                  history=history))
            self.offset += 1
        out = self.pipeline.process(raws, self.table.get)
        for key, (blob, _) in out.records.items():
            self.table[key] = blob
        self.dead_letters += len(out.dead_letters)
        for _, value in out.prices:
            if self._prices is not None:
                self._prices.write(value + b"\n")
            pe = parse_price(value)
            self.known[(pe.user_id, pe.item_id)] = pe.price
            self.decisions[pe.decision_id] = pe

    async def _send(self, ev: ClickEvent) -> None:
        assert self._events is not None
        self._events.write(dumps(ev) + b"\n")
        self.counts.events += 1
        self._process([ev])

    async def _price_for(self, ev: ClickEvent) -> tuple[PriceEvent | None, float]:
        await self._send(ev)
        return self.decisions.pop(decision_id(ev.event_id, ev.item_id), None), 0.0

    def warm_up(self, sim_start: float, batch: int = 256) -> dict[str, Any]:
        """``warm_days`` of simulated history through the pipeline as history (state only, not priced, as
        the live loop sends it), ending a minute before ``sim_start``."""
        t0 = time.time()
        events, total = self.warm_events(sim_start)
        pending: list[ClickEvent] = []
        for ev in events:
            if self._warm is not None:
                self._warm.write(dumps(ev) + b"\n")
            pending.append(ev)
            if len(pending) == batch:
                self._process(pending, history=True)
                pending = []
        if pending:
            self._process(pending, history=True)
        self.decisions.clear()
        return {"events": total, "days": self.cfg.warm_days, "wall_s": round(time.time() - t0, 1)}

    async def run_in_process(self, progress_s: float = 10.0) -> dict[str, Any]:
        """Warm up, run every scheduled session in start order, write the run files; returns the meta."""
        m, cfg = self.m, self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        sim_start = m.cfg.start_ts + m.cfg.days * _DAY + cfg.warm_days * _DAY
        clock = _InstantClock(0.0, cfg.days, cfg.speed)
        clock.sim_start, clock.sim_end = sim_start, sim_start + cfg.days * _DAY
        plan = self.session_plan()
        t_run = time.time()
        with (self.out / "exposures.jsonl").open("wb") as xf, (self.out / "events.jsonl").open("wb") as ef, \
                (self.out / "warm_events.jsonl").open("wb") as wf, (self.out / "prices.jsonl").open("wb") as pf:
            self._exposures, self._events, self._warm = xf, ef, wf
            warm = self.warm_up(sim_start) if cfg.warm_days > 0 else {}
            self._prices = pf  # the loop's decisions only, not the warm-up's
            if warm:
                print(f"[loop-sim] warm-up: {warm['events']:,} events of {cfg.warm_days:g} simulated days "
                      f"in {warm['wall_s']:.0f} s", flush=True)
            t0 = last = time.time()
            for k, (start, u) in enumerate(plan):
                await self.session(k, u, sim_start + start, clock)
                if time.time() - last > progress_s:
                    last = time.time()
                    print(f"[loop-sim] sim day {start / _DAY:5.2f}  sessions {k + 1:,}/{len(plan):,}  "
                          f"views {self.counts.views:,}  ({(k + 1) / (last - t0):,.0f} sessions/s)", flush=True)
        meta = {"run_id": self.run_id, "source": "in-process", "market": asdict(m.cfg), "loop": asdict(cfg),
                "sim_start": sim_start, "sim_end": sim_start + cfg.days * _DAY, "wall_s": round(time.time() - t_run, 1),
                "users": self._participants(), "sessions_planned": len(plan), "warm_up": warm,
                "dead_letters": self.dead_letters}
        meta.update(self.counts.summary())
        (self.out / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        return meta


def parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m models.lab.loop_sim``."""
    p = argparse.ArgumentParser(prog="pricing-loop-sim", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                epilog="Pipeline settings (top-K, guardrails, arm shares, salt): PRICING_* "
                                       "environment variables (see pricing-settings); three arms as in the demo: "
                                       "PRICING_TREATMENT_SHARE=0.3334 PRICING_UNIFORM_SHARE=0.3333.")
    d = LoopConfig()
    add_version(p)
    p.add_argument("--train-dir", type=Path, required=True, help="training run whose simulated market to use")
    p.add_argument("--model-dir", type=Path, required=True, help="model bundle directory (CURRENT is used)")
    add_market_args(p, knobs=("heterogeneity",), small=False)
    p.add_argument("--out", type=Path, default=Path("var/loop-sim"), help="exposure log, events and meta")
    p.add_argument("--days", type=float, default=4.0, help="simulated days of the loop")
    p.add_argument("--warm-days", type=float, default=7.0, help="simulated history through the pipeline first")
    p.add_argument("--users", type=int, default=None, help="first N users of the market take part")
    p.add_argument("--seed", type=int, default=d.seed, help="the loop's randomness (the market's is its own)")
    p.add_argument("--listing", choices=["personalized", "base"], default=d.listing,
                   help="prices on the listings users pick from: their newest decided price, or the base price")
    p.add_argument("--run-id", default="sim", help="prefix of event and session ids")
    p.add_argument("--evaluate", action="store_true", help="print the evaluation table at the end (no report)")
    p.set_defaults(small=False)  # market_from_args: the market always comes from --train-dir here
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m models.lab.loop_sim`` (``pricing-loop-sim``)."""

    args = parser().parse_args(argv)
    s = cli_settings()
    market = market_from_args(args)
    scorer = BundleWatcher(args.model_dir, 1e9, feature_names(FeatureSpec.from_settings(s)), threads=1).scorer
    cfg = LoopConfig(days=args.days, duration_s=args.days * _DAY, users=args.users, seed=args.seed,
                     run_id=args.run_id, listing=args.listing, warm_days=args.warm_days)
    sim = InProcessMarket(market, s, cfg, args.out, scorer)
    print(f"[loop-sim] {cfg.warm_days:g} warm-up + {cfg.days:g} loop days, {cfg.users or market.cfg.n_users:,} "
          f"users, model {scorer.version}", flush=True)
    meta = asyncio.run(sim.run_in_process())
    print(json.dumps({k: meta[k] for k in ("wall_s", "sessions", "views", "events", "purchases", "dead_letters")}))
    if args.evaluate:

        exp, pur, meta = load_exposure_log(args.out)
        print(text_table(evaluate(exp, pur, market=market_of(meta), reps=500), meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
