"""Pricing: Lambert W accuracy, exact optimum, and guardrails that hold whatever the model says."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar
from scipy.special import lambertw

from streams.pricing import (
    Guardrails,
    ItemBatch,
    ItemTerms,
    Reason,
    band,
    band_batch,
    conversion,
    decide,
    decide_batch,
    decide_uniform,
    lambertw0,
    lambertw_exp,
    optimal_price,
    reason_names,
)

G = Guardrails()
ITEM = ItemTerms("sku", base_price=10.0, unit_cost=6.0, min_price=5.0, max_price=20.0)


def ref_band(base: float, cost: float, lo: float, hi: float, g: Guardrails, prev: float | None,
             prev_age: float | None) -> tuple[float, float, list[tuple[float, float]], bool]:
    """The documented band rule, restated in plain Python: (lo, hi, guards that hold, any skipped)."""
    held, empty = [(lo, hi)], False
    guards = [(base * (1 - g.max_deviation), base * (1 + g.max_deviation)),
              (cost * (1 + g.margin_floor), math.inf)]
    if prev is not None and prev_age is not None and prev_age <= g.max_step_window_s and prev > 0:
        guards.append((prev * (1 - g.max_step), prev * (1 + g.max_step)))
    for glo, ghi in guards:
        if max(lo, glo) <= min(hi, ghi):
            lo, hi = max(lo, glo), min(hi, ghi)
            held.append((glo, ghi))
        else:
            empty = True
    return lo, hi, held, empty


# --- Lambert W


def test_lambertw0_matches_scipy_over_600_decades() -> None:
    x = np.concatenate([np.logspace(-300, 300, 20_001), np.linspace(0.0, 10.0, 1001)[1:]])
    ref = lambertw(x).real
    assert np.max(np.abs(lambertw0(x) - ref) / ref) < 1e-12


def test_lambertw_exp_matches_scipy_and_solves_huge_arguments() -> None:
    z = np.linspace(-700.0, 700.0, 100_001)
    ref = lambertw(np.exp(z)).real
    assert np.max(np.abs(lambertw_exp(z) - ref) / ref) < 1e-12
    huge = np.logspace(2.8, 300, 2000)  # exp(z) overflows: check w + ln w = z instead
    w = lambertw_exp(huge)
    assert np.all(np.isfinite(w))
    assert np.max(np.abs(w + np.log(w) - huge) / huge) < 1e-12


def test_lambertw_edges() -> None:
    assert lambertw0([0.0])[0] == 0.0
    assert math.isinf(lambertw0([np.inf])[0]) and math.isnan(lambertw0([-1.0])[0])
    assert lambertw_exp([-np.inf])[0] == 0.0 and math.isinf(lambertw_exp([np.inf])[0])


# --- exact optimum


def test_optimal_price_matches_dense_grid_search() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        a, b = rng.uniform(-6, 6), rng.uniform(0.2, 30)
        base = rng.uniform(1, 500)
        cost = rng.uniform(0, 1.5) * base
        exact = float(optimal_price(a, b, base, cost))

        def profit(p: np.ndarray, a: float = a, b: float = b, base: float = base,
                   cost: float = cost) -> np.ndarray:
            return (p - cost) * conversion(a, b, base, p)

        lo, hi = cost, cost + 200 * base / b
        for _zoom in range(4):  # dense grid, zoomed three times around its argmax
            grid = np.linspace(lo, hi, 10_001)
            i = int(np.argmax(profit(grid)))
            step = grid[1] - grid[0]
            lo, hi = grid[i] - 2 * step, grid[i] + 2 * step
        assert abs(grid[i] - exact) <= 1e-6 * exact
        assert profit(np.array([exact]))[0] >= profit(grid).max() * (1 - 1e-12)
        ref = minimize_scalar(lambda p: -float(profit(np.array([p]))[0]), method="bounded",
                              bounds=(cost, cost + 200 * base / b), options={"xatol": 1e-10})
        assert abs(ref.x - exact) <= 1e-6 * exact


def test_conversion_decreases_in_price() -> None:
    rng = np.random.default_rng(3)
    a, b, base = rng.uniform(-5, 5, (500, 1)), rng.uniform(0.01, 50, (500, 1)), rng.uniform(1, 100, (500, 1))
    prices = np.linspace(0.01, 3, 200) * base
    assert np.all(np.diff(conversion(a, b, base, prices), axis=1) <= 0)
    assert np.all(np.diff(conversion(a, b, base, prices)[:, :20], axis=1) < 0)


# --- decisions and reason codes


def test_reason_codes() -> None:
    assert decide(2.0, 3.0, ITEM, G).reasons == ("OPTIMAL",)
    assert decide(50.0, 1.0, ITEM, G).reasons == ("CLIP_MAX_DEVIATION",)
    assert decide(50.0, 1.0, ITEM, Guardrails(max_deviation=1.0)).reasons == ("CLIP_MAX_PRICE",)
    assert decide(-9.0, 50.0, ITEM, Guardrails(max_deviation=1.0)).reasons == ("CLIP_MARGIN_FLOOR",)
    cheap = ItemTerms("x", base_price=10.0, unit_cost=1.0, min_price=9.0, max_price=20.0)
    assert decide(-9.0, 50.0, cheap, Guardrails(max_deviation=1.0)).reasons == ("CLIP_MIN_PRICE",)
    d = decide(2.0, 3.0, ITEM, G, previous=(9.0, 100.0), now_ts=200.0)
    assert d.reasons == ("CLIP_STEP_LIMIT",) and d.price == 9.9
    assert decide(2.0, 3.0, ITEM, G, previous=(9.0, 100.0), now_ts=100.0 + 3601).reasons == ("OPTIMAL",)
    for a, b in [(math.nan, 1.0), (1.0, math.inf), (1.0, 0.0), (1.0, -2.0), (math.inf, 1.0)]:
        d = decide(a, b, ITEM, G)
        assert d.reasons == ("MODEL_INVALID",) and d.price == 10.0 and math.isnan(d.expected_conversion)


def test_band_empty_rules() -> None:
    # margin floor above max price: the item bounds win
    lossy = ItemTerms("x", base_price=10.0, unit_cost=30.0, min_price=5.0, max_price=20.0)
    d = decide(2.0, 3.0, lossy, G)
    assert "BAND_EMPTY" in d.reasons and d.price == 12.0 and band(lossy, G) == (8.0, 12.0, ("BAND_EMPTY",))
    # base far outside the item bounds: the deviation band is skipped
    odd = ItemTerms("y", base_price=100.0, unit_cost=1.0, min_price=5.0, max_price=20.0)
    assert decide(math.nan, 1.0, odd, G).reasons == ("CLIP_MAX_PRICE", "MODEL_INVALID", "BAND_EMPTY")
    # a previous price outside the band: the band wins over the step limit
    assert band(ITEM, G, previous=(100.0, 0.0), now_ts=1.0) == (8.0, 12.0, ("BAND_EMPTY",))


def test_prices_are_whole_cents_inside_the_band() -> None:
    item = ItemTerms("z", base_price=9.999, unit_cost=0.0, min_price=9.991, max_price=9.999)
    d = decide(0.0, 1.0, item, Guardrails(max_deviation=0.0))  # band [9.999, 9.999] holds no cent
    assert d.price == 9.999
    d = decide(0.0, 1.0, ITEM, G)
    assert round(d.price * 100) == pytest.approx(d.price * 100, abs=1e-9)


def test_scalar_and_batch_agree() -> None:
    rng = np.random.default_rng(11)
    a, b = rng.normal(1, 3, 300), rng.normal(2, 3, 300)
    batch = decide_batch(a, b, ItemBatch.of([ITEM] * 300), G, 50.0, np.full(300, 10.5), np.zeros(300))
    for i in range(300):
        d = decide(float(a[i]), float(b[i]), ITEM, G, previous=(10.5, 0.0), now_ts=50.0)
        assert d.price == batch.price[i] and d.reasons == reason_names(int(batch.reasons[i]))


def test_guardrails_from_settings_and_validation() -> None:
    s = SimpleNamespace(max_deviation=0.3, margin_floor=0.1, max_step=0.05, max_step_window_s=60)
    assert Guardrails.from_settings(s) == Guardrails(0.3, 0.1, 0.05, 60.0)
    with pytest.raises(ValueError):
        Guardrails(max_deviation=1.5)
    with pytest.raises(ValueError):
        ItemTerms("bad", base_price=10.0, unit_cost=1.0, min_price=20.0, max_price=5.0)


# --- guardrails hold for any model output

wild = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                 st.sampled_from([0.0, -0.0, 1e-300, -1e-300, 1e308, -1e308, 5e-324]))
money = st.floats(min_value=0.01, max_value=1e6)


@st.composite
def items(draw: st.DrawFn) -> ItemTerms:
    lo, hi = sorted((draw(money), draw(money)))
    base = draw(st.one_of(money, st.floats(min_value=lo, max_value=hi)))
    cost = draw(st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=2 * base)))
    return ItemTerms("i", base_price=base, unit_cost=cost, min_price=lo, max_price=hi)


guardrails = st.builds(Guardrails, st.floats(0, 1), st.floats(0, 10), st.floats(0, 1), st.floats(0, 1e5))


def assert_within(price: float, reasons: tuple[str, ...] | int, item: ItemTerms, g: Guardrails,
                  prev: float | None, age: float | None) -> None:
    terms = (item.base_price, item.unit_cost, item.min_price, item.max_price)
    lo, hi, held, empty = ref_band(*terms, g, prev, age)
    assert math.isfinite(price) and reasons
    assert item.min_price <= price <= item.max_price  # item bounds: always
    assert lo <= price <= hi
    for glo, ghi in held:  # deviation, margin floor, step limit: whenever the rule says they hold
        assert glo <= price <= ghi
    flags = reasons if isinstance(reasons, int) else sum(Reason[r] for r in reasons)
    assert bool(flags & Reason.BAND_EMPTY) == empty


@settings(max_examples=1500, deadline=None)
@given(wild, wild, items(), guardrails, st.none() | st.tuples(money, st.floats(0, 2e5)))
def test_decide_never_leaves_its_guardrails(a: float, b: float, item: ItemTerms, g: Guardrails,
                                            prev: tuple[float, float] | None) -> None:
    previous = None if prev is None else (prev[0], 0.0)
    d = decide(a, b, item, g, previous=previous, now_ts=0.0 if prev is None else prev[1])
    p, age = (None, None) if prev is None else prev
    assert_within(d.price, d.reasons, item, g, p, age)
    lo, hi, _ = band(item, g, previous, 0.0 if prev is None else prev[1])
    assert lo <= d.price <= hi
    assert math.isfinite(d.expected_profit) or "MODEL_INVALID" in d.reasons


def test_hundred_thousand_random_model_outputs_stay_inside_their_bands() -> None:
    n = 100_000
    rng = np.random.default_rng(2024)
    a = rng.normal(0, 5, n) * rng.choice([1.0, 1e3, 1e300], n, p=[0.9, 0.08, 0.02])
    b = rng.normal(2, 5, n) * rng.choice([1.0, 1e-6, 1e300], n, p=[0.9, 0.08, 0.02])
    for arr in (a, b):
        arr[rng.random(n) < 0.03] = np.nan
        arr[rng.random(n) < 0.02] = np.inf
        arr[rng.random(n) < 0.02] = -np.inf
    lo_hi = np.sort(rng.uniform(0.01, 1000, (n, 2)), axis=1)
    base = np.where(rng.random(n) < 0.9, rng.uniform(lo_hi[:, 0], lo_hi[:, 1]), rng.uniform(0.01, 2000, n))
    cost = base * rng.uniform(0, 1.5, n)
    prev = np.where(rng.random(n) < 0.5, base * rng.uniform(0.5, 1.5, n), np.nan)
    prev_ts = rng.uniform(-100, 7200, n)
    g = Guardrails()
    items_ = ItemBatch(base, cost, lo_hi[:, 0].copy(), lo_hi[:, 1].copy())
    d = decide_batch(a, b, items_, g, 7200.0, prev, prev_ts)
    assert np.all(np.isfinite(d.price)) and np.all(d.reasons > 0)
    for i in range(n):
        p = None if np.isnan(prev[i]) else float(prev[i])
        item = ItemTerms("i", float(base[i]), float(cost[i]), float(lo_hi[i, 0]), float(lo_hi[i, 1]))
        assert_within(float(d.price[i]), int(d.reasons[i]), item, g, p, 7200.0 - float(prev_ts[i]))
    valid = (d.reasons & Reason.MODEL_INVALID) == 0
    assert np.all(np.isfinite(d.expected_profit[valid]))
    assert np.all((d.expected_conversion[valid] >= 0) & (d.expected_conversion[valid] <= 1))


def test_each_row_is_decided_at_its_own_event_time() -> None:
    # two rows with the same previous price at t=1000: one decided 10 s later (step limit holds),
    # one 2 h later (window passed, no step limit); per-row now_ts, no shifting of times
    g = Guardrails(max_deviation=0.5, margin_floor=0.0, max_step=0.05, max_step_window_s=3600.0)
    items = ItemBatch.of([ItemTerms("sku", 10.0, 1.0, 1.0, 100.0)] * 2)
    bd = band_batch(items, g, np.array([1010.0, 8200.0]), np.array([10.0, 10.0]), np.array([1000.0, 1000.0]))
    assert (bd.lo[0], bd.hi[0]) == pytest.approx((9.5, 10.5))
    assert (bd.lo[1], bd.hi[1]) == pytest.approx((5.0, 15.0))


@settings(max_examples=1000, deadline=None)
@given(wild, wild, items(), guardrails, st.none() | st.tuples(money, st.floats(0, 2e5)),
       st.floats(0.001, 0.5), st.floats(0.0, 1.0))
def test_explored_prices_never_leave_their_guardrails(a: float, b: float, item: ItemTerms, g: Guardrails,
                                                      prev: tuple[float, float] | None, width: float,
                                                      u: float) -> None:
    pp, pts = (np.array([math.nan]), np.array([-math.inf])) if prev is None else \
        (np.array([prev[0]]), np.array([0.0]))
    now = 0.0 if prev is None else prev[1]
    d = decide_batch([a], [b], ItemBatch.of([item]), g, now, pp, pts, explore_width=width, explore_u=np.array([u]))
    p, age = (None, None) if prev is None else prev
    assert_within(float(d.price[0]), int(d.reasons[0]), item, g, p, age)
    assert d.propensity is not None and d.propensity[0] > 0 and math.isfinite(d.propensity[0])


def test_exploration_draws_log_uniformly_around_the_decision_with_its_density() -> None:
    n = 20_000
    item = ItemBatch.of([ItemTerms("i", 100.0, 10.0, 50.0, 200.0)] * n)
    a, b = np.full(n, 3.53), np.full(n, 3.0)  # optimum near the base price, far inside the band
    greedy = decide_batch(a, b, item, Guardrails())
    assert 95 < greedy.price[0] < 105
    u = np.random.default_rng(3).random(n)
    d = decide_batch(a, b, item, Guardrails(), explore_width=0.1, explore_u=u)
    ratio = np.log(d.price / greedy.price)
    assert np.all(np.abs(ratio) <= 0.1 + 1e-3)                     # within the width (cents aside)
    assert abs(float(np.mean(ratio))) < 0.005                      # centred on the decision
    hist, _ = np.histogram(ratio, bins=10, range=(-0.1, 0.1))
    assert hist.min() > 0.8 * n / 10                               # flat in log price
    assert np.allclose(d.propensity, 1 / 0.2)                      # density of log(price) on a 0.2-wide span
    assert np.all(d.reasons & Reason.EXPLORED)
    assert np.all(d.expected_conversion == conversion(a, b, item.base_price, d.price))
    same = decide_batch(a, b, item, Guardrails(), explore_width=0.1, explore_u=u)
    assert np.array_equal(same.price, d.price)                     # the same uniforms, the same prices


def test_exploration_at_a_band_edge_is_cut_to_the_band_not_clipped() -> None:
    # decision at the deviation cap (base 100, +20 %): the draw is on [120 e^-0.1, 120], so no mass piles at 120
    item = ItemBatch.of([ItemTerms("i", 100.0, 10.0, 50.0, 200.0)] * 5000)
    a, b = np.full(5000, 10.0), np.full(5000, 0.5)  # wants far above the cap
    d = decide_batch(a, b, item, Guardrails(), explore_width=0.1, explore_u=np.random.default_rng(1).random(5000))
    assert d.price.max() <= 120.0 and np.mean(d.price >= 119.99) < 0.01
    assert np.allclose(d.propensity, 1 / 0.1)


def test_no_width_means_the_decision_itself() -> None:
    item = ItemBatch.of([ITEM])
    d = decide_batch([2.0], [3.0], item, G)
    assert d.propensity is not None and d.propensity[0] == 1.0 and not d.reasons[0] & Reason.EXPLORED
    with pytest.raises(ValueError, match="one uniform per row"):
        decide_batch([2.0], [3.0], item, G, explore_width=0.1)


# --- the uniform arm and the uniform cap

ratios = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0.5, 1.5))


@settings(max_examples=1000, deadline=None)
@given(ratios, wild, wild, items(), guardrails, st.none() | st.tuples(money, st.floats(0, 2e5)))
def test_uniform_prices_never_leave_their_guardrails(r: float, a: float, b: float, item: ItemTerms, g: Guardrails,
                                                     prev: tuple[float, float] | None) -> None:
    pp, pts = (np.array([math.nan]), np.array([-math.inf])) if prev is None else \
        (np.array([prev[0]]), np.array([0.0]))
    d = decide_uniform([r], [a], [b], ItemBatch.of([item]), g, 0.0 if prev is None else prev[1], pp, pts)
    p, age = (None, None) if prev is None else prev
    assert_within(float(d.price[0]), int(d.reasons[0]), item, g, p, age)
    assert d.reasons[0] & Reason.UNIFORM and not d.reasons[0] & Reason.OPTIMAL
    assert d.propensity is not None and d.propensity[0] == 1.0
    lo, hi, _, _ = ref_band(item.base_price, item.unit_cost, item.min_price, item.max_price, g, p, age)
    target = item.base_price * (r if math.isfinite(r) and r > 0 else 1.0)
    if lo + 0.01 <= target <= hi - 0.01:  # inside the band: the uniform price itself, to the cent
        assert abs(float(d.price[0]) - target) <= 0.005 + 1e-9 * target
        assert set(reason_names(int(d.reasons[0]))) <= {"UNIFORM", "BAND_EMPTY"}  # no clip


def test_uniform_price_is_base_times_ratio_in_cents() -> None:
    items_ = ItemBatch.of([ITEM, ITEM, ITEM])
    d = decide_uniform([0.913, 1.5, float("nan")], [2.0] * 3, [3.0] * 3, items_, G)
    assert d.price.tolist() == [9.13, 12.0, 10.0]
    assert [reason_names(int(f)) for f in d.reasons] == [("UNIFORM",), ("CLIP_MAX_DEVIATION", "UNIFORM"), ("UNIFORM",)]
    assert d.expected_conversion[0] == pytest.approx(float(conversion(2.0, 3.0, 10.0, 9.13)))


@settings(max_examples=1000, deadline=None)
@given(wild, wild, ratios, items(), guardrails, st.none() | st.tuples(money, st.floats(0, 2e5)))
def test_the_uniform_cap_holds_whenever_it_meets_the_band(a: float, b: float, r: float, item: ItemTerms,
                                                          g: Guardrails, prev: tuple[float, float] | None) -> None:
    """Guard 5: price <= max(base, base * ratio) unless that would empty the band of guards 1-4
    (then BAND_EMPTY and the band 1-4); guards 1-4 hold as without the cap."""
    capped = Guardrails(g.max_deviation, g.margin_floor, g.max_step, g.max_step_window_s, cap_at_uniform=True)
    pp, pts = (np.array([math.nan]), np.array([-math.inf])) if prev is None else \
        (np.array([prev[0]]), np.array([0.0]))
    now = 0.0 if prev is None else prev[1]
    d = decide_batch([a], [b], ItemBatch.of([item]), capped, now, pp, pts, uniform_ratio=np.array([r]))
    p, age = (None, None) if prev is None else prev
    lo, hi, held, empty = ref_band(item.base_price, item.unit_cost, item.min_price, item.max_price, g, p, age)
    price, flags = float(d.price[0]), int(d.reasons[0])
    assert math.isfinite(price) and lo <= price <= hi and all(glo <= price <= ghi for glo, ghi in held)
    if math.isfinite(r) and r > 0:
        cap = item.base_price * max(1.0, r)
        if lo <= cap:
            assert price <= cap and bool(flags & Reason.BAND_EMPTY) == empty
        else:
            assert flags & Reason.BAND_EMPTY
    else:  # no uniform price for the row: no cap
        plain = decide_batch([a], [b], ItemBatch.of([item]), g, now, pp, pts)
        assert price == float(plain.price[0]) and flags == int(plain.reasons[0])


def test_the_cap_clips_with_its_own_reason_and_is_off_unless_asked() -> None:
    items_ = ItemBatch.of([ITEM, ITEM])
    r = np.array([0.9, 1.1])
    capped = Guardrails(cap_at_uniform=True)
    plain = decide_batch([4.0, 4.0], [2.0, 2.0], items_, G)  # the optimum is far above base: 12.0 (deviation)
    assert plain.price.tolist() == [12.0, 12.0]
    assert decide_batch([4.0, 4.0], [2.0, 2.0], items_, G, uniform_ratio=r).price.tolist() == [12.0, 12.0]
    d = decide_batch([4.0, 4.0], [2.0, 2.0], items_, capped, uniform_ratio=r)
    assert d.price.tolist() == [10.0, 11.0]  # max(base, uniform): base when the uniform price is below it
    assert all(reason_names(int(f)) == ("CLIP_UNIFORM_CAP",) for f in d.reasons)
    low = decide_batch([-2.0], [3.0], ItemBatch.of([ITEM]), capped, uniform_ratio=np.array([0.9]))
    assert low.price[0] < 10.0 and reason_names(int(low.reasons[0])) != ("CLIP_UNIFORM_CAP",)  # below the cap
    assert Guardrails.from_settings(SimpleNamespace(max_deviation=0.2, margin_floor=0.05, max_step=0.1,
                                                    max_step_window_s=3600, cap_at_uniform=True)).cap_at_uniform
