"""Evaluation maths without a broker: attribution, intervals, efficiency, fairness, the report."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson
import pytest

from models.lab.live_market import SimClock, session_schedule
from models.lab.simulator import Market, MarketConfig
from streams.tools.evaluate import (
    Exposures,
    Purchases,
    arm_stats,
    attribute,
    efficiency,
    evaluate,
    fairness,
    lift,
    load_exposure_log,
    truth_stats,
    user_arms,
)


def exposures(users: list[str], items: list[str], arms: list[str], price: list[float], ts: list[float],
              base: float = 10.0, cost: float = 6.0) -> Exposures:
    n = len(users)
    return Exposures(np.array(users, object), np.array(items, object), np.array(arms, object),
                     np.array(price, float), np.full(n, base), np.full(n, cost), np.array(ts, float))


def purchases(rows: list[tuple[str, str, float, float]]) -> Purchases:
    return Purchases(np.array([r[0] for r in rows], object), np.array([r[1] for r in rows], object),
                     np.array([r[2] for r in rows], float), np.ones(len(rows), np.int64),
                     np.array([r[3] for r in rows], float))


# ---------------------------------------------------------------- attribution
def test_attribution_window_and_newest_exposure_wins() -> None:
    e = exposures(["u1", "u1", "u1", "u2"], ["a", "a", "b", "a"], ["treatment"] * 4,
                  [9.0, 11.0, 12.0, 10.0], [0.0, 1000.0, 0.0, 0.0])
    p = purchases([("u1", "a", 11.0, 1500.0),     # -> exposure 1 (newest at or before)
                   ("u1", "b", 12.0, 5000.0),     # 5000 s after exposure 2: outside a 3600 s window
                   ("u2", "a", 10.0, -1.0),       # before any exposure: not credited
                   ("u3", "a", 10.0, 10.0)])      # nobody exposed
    attribute(e, p, window_s=3600.0)
    assert e.bought.tolist() == [False, True, False, False]
    assert e.revenue.tolist() == [0.0, 11.0, 0.0, 0.0]
    assert e.profit.tolist() == [0.0, 5.0, 0.0, 0.0]
    attribute(e, p, window_s=6000.0)  # a wider window credits the late purchase
    assert e.bought.tolist() == [False, True, True, False]


def test_two_purchases_of_one_exposure_add_up() -> None:
    e = exposures(["u"], ["a"], ["control"], [10.0], [0.0])
    attribute(e, purchases([("u", "a", 10.0, 1.0), ("u", "a", 10.0, 2.0)]), window_s=10.0)
    assert e.bought.tolist() == [True] and e.revenue.tolist() == [20.0] and e.profit.tolist() == [8.0]


def test_timeouts_stay_in_the_users_arm() -> None:
    e = exposures(["u1", "u1", "u2", "u3"], ["a", "b", "a", "a"], ["treatment", "none", "control", "none"],
                  [9.0, 10.0, 10.0, 10.0], [0.0, 1.0, 0.0, 0.0])
    users, arm, pos = user_arms(e)
    assert dict(zip(users, arm, strict=True)) == {"u1": "treatment", "u2": "control", "u3": "none"}
    ev = evaluate(e, purchases([]), reps=50)
    assert ev.arms["treatment"].exposures == 2 and ev.arms["treatment"].timeouts == 1
    assert ev.counts["users_without_arm"] == 1


# ---------------------------------------------------------------- intervals
def synthetic_arm(rng: np.random.Generator, arm: str, n_users: int, conv: float, margin: float) -> Exposures:
    """Users with 1-9 exposures each; a purchase earns an exponential profit of mean ``margin``."""
    k = rng.integers(1, 10, n_users)
    user = np.repeat([f"{arm}{j}" for j in range(n_users)], k)
    n = len(user)
    e = Exposures(user.astype(object), np.array(["i"] * n, object), np.array([arm] * n, object), np.full(n, 10.0),
                  np.full(n, 10.0), np.full(n, 5.0), np.zeros(n))
    e.bought = rng.random(n) < conv
    e.profit = np.where(e.bought, rng.exponential(margin, n), 0.0)
    e.revenue = e.profit + 5.0 * e.bought
    return e


def test_lift_intervals_cover_the_true_lift() -> None:
    """Known lift: treatment profit per user = 1.2 x control (conversion 0.12 vs 0.10, same margin)."""
    rng = np.random.default_rng(7)
    true_lift = 0.12 / 0.10 - 1.0
    hits_boot = 0
    reps = 120
    for r in range(reps):
        c = synthetic_arm(rng, "c", 400, 0.10, 5.0)
        t = synthetic_arm(rng, "t", 400, 0.12, 5.0)
        lo, _, hi = lift(arm_stats(t, "treatment", reps=400, seed=r), arm_stats(c, "control", reps=400, seed=r + 999))
        hits_boot += lo <= true_lift <= hi
    # nominal 95 %: with 120 replications, anything in [0.88, 0.995] is consistent
    assert 0.88 <= hits_boot / reps <= 1.0, hits_boot / reps


def test_arm_stats_are_per_user_means() -> None:
    e = exposures(["a", "a", "b"], ["x", "y", "x"], ["control"] * 3, [10.0] * 3, [0.0] * 3)
    attribute(e, purchases([("a", "x", 10.0, 1.0), ("b", "x", 10.0, 1.0)]), 10.0)
    s = arm_stats(e, "control", reps=200)
    assert (s.users, s.exposures, s.purchases) == (2, 3, 2)
    assert s.conversion == pytest.approx(2 / 3)
    assert s.profit_per_user == pytest.approx(4.0) and s.revenue_per_user == pytest.approx(10.0)
    assert s.profit_per_user_ci[0] <= 4.0 <= s.profit_per_user_ci[1]


# ---------------------------------------------------------------- the truth
def test_efficiency_formula() -> None:
    assert efficiency(2.0, 1.0, 2.0) == 1.0
    assert efficiency(1.0, 1.0, 2.0) == 0.0
    assert efficiency(0.5, 1.0, 2.0) == -0.5
    assert math.isnan(efficiency(1.0, 1.0, 1.0))


@pytest.fixture(scope="module")
def market() -> Market:
    return Market(MarketConfig.small(seed=4))


def truth_exposures(market: Market, n: int = 3000) -> Exposures:
    u, i = market.population(n, seed=2)
    e = Exposures(np.array([market.user_ids[k] for k in u], object), np.array([market.item_ids[k] for k in i], object),
                  np.array(["treatment"] * n, object), market.base[i].copy(), market.base[i].copy(),
                  market.cost[i].copy(), np.arange(n, dtype=float), u, i)
    return e


def test_truth_oracle_prices_have_efficiency_one_and_uniform_zero(market: Market) -> None:
    e = truth_exposures(market)
    u, i = e.user_index, e.item_index
    e.price = market.oracle_price(u, i)
    t = truth_stats(e, market, reps=100)
    assert t["efficiency"] == pytest.approx(1.0)
    assert t["oracle_profit"] >= t["uniform_profit"] >= t["base_profit"] - 1e-12
    e.price = market.uniform_prices((u, i))[i]
    t = truth_stats(e, market, reps=100)
    assert t["efficiency"] == pytest.approx(0.0, abs=1e-9)
    assert t["over_uniform"] == pytest.approx(1.0)
    lo, hi = t["efficiency_ci"]
    assert lo <= 0.0 <= hi


def test_truth_expected_profit_is_the_true_demand(market: Market) -> None:
    e = truth_exposures(market, 500)
    u, i = e.user_index, e.item_index
    t = truth_stats(e, market, reps=50)
    want = np.mean((market.base[i] - market.cost[i]) * market.buy_prob(u, i, market.base[i]))
    assert t["shown_profit"] == pytest.approx(want) and t["base_profit"] == pytest.approx(want)


# ---------------------------------------------------------------- fairness
def test_fairness_numbers() -> None:
    # activity segments: u1 (1 exposure) < u2 (2) < u3 (3) < u4 (4)
    users = ["u1"] + ["u2"] * 2 + ["u3"] * 3 + ["u4"] * 4
    price = [8.0] + [9.0, 11.0] + [10.0] * 3 + [12.0] * 4
    e = exposures(users, [f"i{k}" for k in range(10)], ["treatment"] * 10, price, [0.0] * 10)
    e.bought = np.array([True, False, True, False, False, True, True, False, False, False])
    f = fairness(e, None)
    assert f["segment_by"].startswith("activity")
    seg = {r["segment"]: r for r in f["segments"]}
    assert seg[0]["mean_ratio"] == pytest.approx(0.8) and seg[0]["above_base"] == 0.0
    assert seg[1]["mean_ratio"] == pytest.approx(1.0) and seg[1]["sd_ratio"] == pytest.approx(0.1)
    assert seg[1]["above_base"] == pytest.approx(0.5)
    assert seg[3]["above_base"] == 1.0 and seg[3]["p10_ratio"] == pytest.approx(1.2)
    paid = f["paid_above_base"]["treatment"]
    assert paid["buyers"] == 4                   # u1, u2, u3, u4 each bought once
    assert paid["buyers_paid_above_base"] == 2   # u2 at 11, u4 at 12; u3 paid base, u1 below
    assert paid["share_of_buyers"] == pytest.approx(0.5)


# ---------------------------------------------------------------- log and report
def test_exposure_log_roundtrip_and_report(tmp_path: Path, market: Market) -> None:
    rng = np.random.default_rng(1)
    u, i = market.population(400, seed=3)
    rows = []
    for k, (uu, ii) in enumerate(zip(u, i, strict=True)):
        arm = "treatment" if uu % 2 else "control"
        price = float(market.base[ii] * (0.9 if arm == "treatment" else 1.0))
        bought = bool(rng.random() < market.buy_prob(np.array([uu]), np.array([ii]), np.array([price]))[0])
        rows.append({"user_id": market.user_ids[uu], "item_id": market.item_ids[ii], "user_index": int(uu),
                     "item_index": int(ii), "arm": arm, "price": price, "base_price": float(market.base[ii]),
                     "unit_cost": float(market.cost[ii]), "bought": bought, "ts": float(k),
                     "purchase_ts": float(k) + 60.0 if bought else None, "expected_conversion": 0.1})
    (tmp_path / "exposures.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    (tmp_path / "meta.json").write_text(orjson.dumps({"run_id": "t", "market": {
        **MarketConfig.small(seed=4).__dict__}}).decode())
    exp, pur, meta = load_exposure_log(tmp_path)
    assert len(exp) == 400 and len(pur.user) == sum(r["bought"] for r in rows)
    from models.lab.evaluate import market_of
    from streams.tools.report import text_table, write_report

    m = market_of(meta)
    ev = evaluate(exp, pur, window_s=3600.0, market=m, reps=200)
    assert ev.counts["purchases_attributed"] == len(pur.user)
    assert ev.truth["treatment"]["shown_price_ratio"] == pytest.approx(0.9)
    assert "profit per user" in text_table(ev, meta)
    path = write_report(ev, exp, meta, tmp_path / "report", market=m)
    assert path.exists() and (tmp_path / "report" / "lift.png").stat().st_size > 0
    assert (tmp_path / "report" / "prices.png").exists() and (tmp_path / "report" / "result.json").exists()


# ---------------------------------------------------------------- the closed loop's clock
def test_sim_clock_stays_behind_wall_time_and_ends_at_it() -> None:
    c = SimClock(wall_start=1_000_000.0, days=3.0, speed=1080.0)  # 3 days in 240 s
    walls = np.linspace(1_000_000.0, 1_000_240.0, 50)
    assert all(c.sim(w) <= w + 1e-6 for w in walls)
    assert c.sim(1_000_240.0) == pytest.approx(1_000_240.0)
    assert c.sim_end - c.sim_start == pytest.approx(3 * 86400.0)
    with pytest.raises(ValueError):
        SimClock(0.0, 1.0, 0.5)


def test_session_schedule_spreads_a_users_sessions(market: Market) -> None:
    plan = session_schedule(market, np.arange(50), 2.0, np.random.default_rng(0))
    assert plan == sorted(plan) and all(0 <= s < 2 * 86400 for s, _ in plan)
    starts: dict[int, list[float]] = {}
    for s, u in plan:
        starts.setdefault(u, []).append(s)
    assert all(np.all(np.diff(v) >= 3600.0 - 1e-6) for v in starts.values())


# ---------------------------------------------------------------- three arms and welfare
def three_arm_exposures(market: Market, n: int = 6000) -> tuple[Exposures, Purchases]:
    """Users split by index into control (base), uniform (the true best uniform price) and treatment
    (the oracle, clipped to the band: above uniform for the less sensitive), buying by the true demand."""
    u, i = market.population(n, seed=5)
    arm = np.array(["control", "uniform", "treatment"], object)[u % 3]
    uni = market.uniform_prices((u, i))[i]
    price = np.where(arm == "control", market.base[i], np.where(arm == "uniform", uni, market.oracle_price(u, i)))
    price = np.round(price, 2)
    e = Exposures(np.array([market.user_ids[k] for k in u], object), np.array([market.item_ids[k] for k in i], object),
                  arm, price, market.base[i].copy(), market.cost[i].copy(), np.arange(n, dtype=float), u, i)
    bought = np.random.default_rng(6).random(n) < market.buy_prob(u, i, price)
    pur = purchases([(e.user[k], e.item[k], float(price[k]), float(k) + 1.0) for k in np.flatnonzero(bought)])
    return e, pur


def test_three_arms_lifts_and_welfare() -> None:
    market = Market(MarketConfig.small(seed=4, heterogeneity=1.5))
    e, pur = three_arm_exposures(market)
    ev = evaluate(e, pur, window_s=60.0, market=market, reps=200)
    assert list(ev.arms) == ["control", "uniform", "treatment"]
    lo, est, hi = ev.arm_lift["treatment_over_uniform"]
    t, u = ev.arms["treatment"], ev.arms["uniform"]
    assert est == pytest.approx(t.profit_per_user / u.profit_per_user - 1) and lo <= est <= hi
    w = ev.welfare["arms"]
    assert w["uniform"]["better_off"] == 0.0 and w["uniform"]["worse_off"] == 0.0  # its own prices
    assert w["uniform"]["paid_above_uniform"] == 0.0 and w["uniform"]["priced_above_uniform"] == 0.0
    assert ev.welfare["reference_coverage"] > 0.9
    # the surplus is the true one, at the shown prices
    m = ev.welfare
    k = e.arm == "control"
    assert w["control"]["surplus"] == pytest.approx(float(np.mean(market.consumer_surplus(
        e.user_index[k], e.item_index[k], e.price[k]))))
    lo_cs, hi_cs = w["control"]["surplus_ci"]
    assert lo_cs <= w["control"]["surplus"] <= hi_cs
    # personalized prices: some users above the uniform price are worse off, the sensitive ones better off
    assert 0 < w["treatment"]["worse_off"] < 1 and 0 < w["treatment"]["better_off"] < 1
    assert w["treatment"]["priced_above_uniform"] > 0 and m["reference"].startswith("the uniform arm")
    # the oracle earns more than the uniform prices on the same exposures; the uniform arm exactly as much
    lo_p, hi_p = w["treatment"]["profit_over_uniform_ci"]
    assert 1.0 < lo_p <= w["treatment"]["profit_over_uniform"] <= hi_p
    assert w["uniform"]["profit_over_uniform"] == pytest.approx(1.0)
    from streams.tools.report import text_table

    shown = text_table(ev, {"run_id": "t"})
    assert "treatment over uniform" in shown and "better off" in shown and "purchases above uniform" in shown


def test_two_arm_runs_report_as_before() -> None:
    market = Market(MarketConfig.small(seed=4))
    e, pur = three_arm_exposures(market, 1500)
    two = e.take(e.arm != "uniform")
    ev = evaluate(two, pur, window_s=60.0, market=market, reps=50)
    assert list(ev.arms) == ["control", "treatment"] and ev.arm_lift == {}
    assert ev.welfare["reference"].startswith("the market's best uniform price")  # no uniform arm: the truth's
    from streams.tools.report import text_table

    assert "three arms" not in text_table(ev, {"run_id": "t"})
