"""The in-process closed loop: the live market's users driven through the worker's pipeline."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import orjson
import pytest

from models.lab.evaluate import market_of
from models.lab.live_market import LoopConfig
from models.lab.loop_sim import InProcessMarket
from models.lab.simulator import Market, MarketConfig
from streams.pricing import Guardrails
from streams.scoring import DeterministicScorer
from streams.settings import load_settings
from streams.tools.evaluate import evaluate, load_exposure_log

pytestmark = pytest.mark.slow  # trains or exports models: not in `make test-fast`


def run(tmp: Path, **loop: object) -> tuple[InProcessMarket, dict[str, object]]:
    market = Market(MarketConfig.small(n_users=60, seed=5))
    cfg = LoopConfig(**{"days": 0.5, "duration_s": 0.5 * 86400, "warm_days": 0.5, "run_id": "t", **loop})
    sim = InProcessMarket(market, load_settings({}, experiment_salt="s", user_hash_key="k"), cfg, tmp,
                          DeterministicScorer())
    return sim, asyncio.run(sim.run_in_process(progress_s=1e9))


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> tuple[InProcessMarket, dict[str, object], Path]:
    out = tmp_path_factory.mktemp("loop")
    sim, meta = run(out)
    return sim, meta, out


def test_every_view_gets_its_decision_and_the_files_agree(loop) -> None:
    sim, meta, out = loop
    rows = [orjson.loads(line) for line in (out / "exposures.jsonl").read_bytes().splitlines()]
    events = [orjson.loads(line) for line in (out / "events.jsonl").read_bytes().splitlines()]
    assert rows and len(rows) == meta["views"] == sum(e["type"] == "view" for e in events)
    assert meta["events"] == len(events) and meta["dead_letters"] == 0
    assert {r["arm"] for r in rows} == {"control", "treatment"}  # no timeouts in-process
    assert meta["price_timeouts"] == 0
    assert json.loads((out / "meta.json").read_text())["source"] == "in-process"


def test_arms_price_as_the_worker_does(loop) -> None:
    _, _, out = loop
    rows = [orjson.loads(line) for line in (out / "exposures.jsonl").read_bytes().splitlines()]
    control = [r for r in rows if r["arm"] == "control"]
    treated = [r for r in rows if r["arm"] == "treatment"]
    assert all(r["price"] == r["base_price"] for r in control)
    dev = Guardrails().max_deviation
    ratio = np.array([r["price"] / r["base_price"] for r in treated])
    assert np.all(ratio >= 1 - dev - 1e-9) and np.all(ratio <= 1 + dev + 1e-9)
    assert np.ptp(ratio) > 0  # personalized: not one price for everyone


def test_purchases_follow_the_shown_price_and_evaluate_reads_the_run(loop) -> None:
    _, _, out = loop
    exp, pur, meta = load_exposure_log(out)
    bought = [orjson.loads(line) for line in (out / "exposures.jsonl").read_bytes().splitlines()]
    bought = [r for r in bought if r["bought"]]
    assert len(pur.user) == len(bought) and all(r["purchase_ts"] > r["ts"] for r in bought)
    result = evaluate(exp, pur, market=market_of(meta), reps=50)
    assert result.truth["treatment"]["n_exposures"] == int(np.sum(exp.arm == "treatment"))
    assert np.isfinite(result.truth["treatment"]["efficiency"])


def test_listings_show_the_newest_decided_price(loop) -> None:
    sim, _, _ = loop
    decided = {k: v for k, v in sim.known.items()}
    assert decided
    (uid, iid), price = next(iter(decided.items()))
    assert sim._listed(uid, sim.m.item_ids.index(iid)) == price


def test_same_seed_same_run(tmp_path: Path, loop) -> None:
    _, _, out = loop
    run(tmp_path)
    assert (tmp_path / "exposures.jsonl").read_bytes() == (out / "exposures.jsonl").read_bytes()


def test_three_arms_in_the_closed_loop(tmp_path: Path) -> None:
    """Thirds: every arm shows up, the uniform arm shows one price per item (its table's, in cents), and the
    evaluation reports the three-arm lifts and the welfare of each arm."""
    market = Market(MarketConfig.small(n_users=90, seed=5))
    uniform = {iid: 0.9 for iid in market.item_ids}
    s = load_settings({}, experiment_salt="s", user_hash_key="k", treatment_share=1 / 3, uniform_share=1 / 3)
    cfg = LoopConfig(days=0.5, duration_s=0.5 * 86400, warm_days=0.5, run_id="t3")
    sim = InProcessMarket(market, s, cfg, tmp_path, DeterministicScorer(uniform=uniform))
    asyncio.run(sim.run_in_process(progress_s=1e9))
    rows = [orjson.loads(line) for line in (tmp_path / "exposures.jsonl").read_bytes().splitlines()]
    assert {r["arm"] for r in rows} == {"control", "uniform", "treatment"}
    uni = [r for r in rows if r["arm"] == "uniform"]
    assert all(r["price"] == pytest.approx(round(0.9 * r["base_price"], 2), abs=0.0101) for r in uni)
    assert all(len({r["price"] for r in uni if r["item_id"] == i}) == 1 for i in {r["item_id"] for r in uni})
    exp, pur, meta = load_exposure_log(tmp_path)
    result = evaluate(exp, pur, market=market_of(meta), reps=50)
    assert set(result.arm_lift) == {"uniform_over_control", "treatment_over_uniform"}
    w = result.welfare["arms"]
    assert set(w) == {"control", "uniform", "treatment"} and w["uniform"]["better_off"] == 0.0
    assert w["uniform"]["surplus"] == pytest.approx(w["uniform"]["surplus_at_uniform"])  # its own reference
    assert w["control"]["surplus"] > 0 and w["uniform"]["paid_above_uniform"] == 0.0


def test_the_warm_up_builds_state_without_prices(tmp_path: Path) -> None:
    """As the live loop marks it (pricing-history header): no decision, so no listing starts personalised."""
    market = Market(MarketConfig.small(n_users=60, seed=5))
    cfg = LoopConfig(days=0.5, duration_s=0.5 * 86400, warm_days=0.5, run_id="t")
    sim = InProcessMarket(market, load_settings({}, experiment_salt="s", user_hash_key="k"), cfg, tmp_path,
                          DeterministicScorer())
    warm = sim.warm_up(market.cfg.start_ts + 2 * 86400)
    assert warm["events"] > 0 and sim.known == {} and sim.decisions == {}
    assert len(sim.table) > 0  # the users' state was built
