"""The uncertainty guard: the shrink weight, the shrunk price (known answers), guardrails after it,
the setting, and the pipeline's call (treatment prices move to the uniform price as the spread grows)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.pricing import Guardrails, ItemBatch, ItemTerms, decide_batch, decide_uniform, shrink_weight
from streams.schemas import parse_price
from streams.scoring import DeterministicScorer
from streams.settings import SettingsError, load_settings
from tests.unit.test_pipeline import make, record, run
from tests.unit.test_pricing import assert_within, guardrails, items, money, wild

G = Guardrails()
ITEMS = ItemBatch.of([ItemTerms(f"i{k}", 10.0 + k, 5.0, 5.0, 30.0) for k in range(4)])
A, B = np.array([2.0, 3.0, 1.0, 4.0]), np.array([3.0, 2.0, 1.5, 5.0])
RATIO = np.array([0.9, 1.1, 0.95, 1.05])


def test_shrink_weight_is_the_posterior_weight() -> None:
    w = shrink_weight([0.2, 0.2, 0.2, 0.0, 0.2, 0.2], [0.0, 0.2, 0.6, 0.1, math.nan, -1.0], 1.0)
    assert w.tolist() == [1.0, 0.5, 0.25, 0.0, 0.0, 0.0]  # no signal, or no valid noise: the uniform price
    assert shrink_weight([0.2], [0.2], 3.0).tolist() == [0.25]  # the scale multiplies the noise
    assert shrink_weight([0.0, 0.2], [1e9, 0.2], 0.0).tolist() == [1.0, 1.0]  # scale 0: no guard


def test_zero_spread_leaves_the_price_unchanged() -> None:
    free = decide_batch(A, B, ITEMS, G)
    kept = decide_batch(A, B, ITEMS, G, uniform_ratio=RATIO, shrink=shrink_weight([0.1] * 4, [0.0] * 4, 1.0))
    assert kept.price.tolist() == free.price.tolist() and kept.reasons.tolist() == free.reasons.tolist()


def test_huge_spread_gives_the_uniform_price() -> None:
    shrunk = decide_batch(A, B, ITEMS, G, uniform_ratio=RATIO, shrink=shrink_weight([0.1] * 4, [1e12] * 4, 1.0))
    assert shrunk.price.tolist() == decide_uniform(RATIO, A, B, ITEMS, G).price.tolist()
    # no uniform ratio (or an invalid one): toward base
    base = decide_batch(A, B, ITEMS, G, uniform_ratio=np.array([math.nan, -1.0, 1.0, math.inf]),
                        shrink=np.zeros(4))
    assert base.price.tolist() == ITEMS.base_price.tolist()
    assert decide_batch(A, B, ITEMS, G, shrink=np.zeros(4)).price.tolist() == ITEMS.base_price.tolist()


def test_half_weight_is_the_geometric_mean() -> None:
    free = decide_batch(A, B, ITEMS, Guardrails(max_deviation=1.0))
    half = decide_batch(A, B, ITEMS, Guardrails(max_deviation=1.0), uniform_ratio=RATIO, shrink=np.full(4, 0.5))
    want = np.round(np.sqrt(free.price * ITEMS.base_price * RATIO) * 100) / 100
    assert np.abs(half.price - want).max() <= 0.011  # both sides rounded to cents
    # the expected conversion is the model's at the price shown
    assert np.allclose(half.expected_conversion, 1 / (1 + np.exp(-(A - B * half.price / ITEMS.base_price))))


@settings(max_examples=800, deadline=None)
@given(wild, wild, st.floats(allow_nan=True, allow_infinity=True), st.floats(allow_nan=True, allow_infinity=True),
       items(), guardrails, st.none() | st.tuples(money, st.floats(0, 2e5)))
def test_shrunk_prices_never_leave_their_guardrails(a: float, b: float, r: float, w: float, item: ItemTerms,
                                                    g: Guardrails, prev: tuple[float, float] | None) -> None:
    pp, pts = (np.array([math.nan]), np.array([-math.inf])) if prev is None else \
        (np.array([prev[0]]), np.array([0.0]))
    d = decide_batch([a], [b], ItemBatch.of([item]), g, 0.0 if prev is None else prev[1], pp, pts,
                     uniform_ratio=np.array([r]), shrink=np.array([w]))
    p, age = (None, None) if prev is None else prev
    assert_within(float(d.price[0]), int(d.reasons[0]), item, g, p, age)


@pytest.mark.parametrize("value", ["-0.5", "101", "abc", "nan"])
def test_the_setting_is_validated_by_name(value: str) -> None:
    with pytest.raises(SettingsError, match="PRICING_UNCERTAINTY_SCALE"):
        load_settings({"PRICING_UNCERTAINTY_SCALE": value})
    assert load_settings({"PRICING_UNCERTAINTY_SCALE": "1"}).uncertainty_scale == 1.0
    assert load_settings({}).uncertainty_scale == 0.0  # off unless asked


def _prices(scale: float, spread: tuple[float, float] | None) -> dict[tuple[str, str], float]:
    pipe, table = make(treatment_share=1.0, top_k=5, resend_unchanged_s=0, uncertainty_scale=scale)
    scorer = DeterministicScorer(uniform={"i0": 0.85, "i1": 0.95, "i2": 1.1}, spread=spread)
    pipe.scorer = lambda: scorer
    out = run(pipe, table, [record(k, "view", f"i{k % 6}", user=f"user-{k}") for k in range(30)])
    return {(e.user_id, e.item_id): e.price for e in (parse_price(v) for _, v in out.prices)}


def test_the_pipeline_shrinks_treatment_prices_toward_the_uniform_price() -> None:
    free = _prices(0.0, None)
    assert _prices(0.0, (1e12, 0.1)) == free  # the setting off: the spread is not read
    assert _prices(1.0, None) == free  # a model without a spread: no guard
    assert _prices(1.0, (0.0, 0.1)) == free  # sure of itself: unchanged
    uniform = {"i0": 0.85, "i1": 0.95, "i2": 1.1}
    unsure = _prices(1.0, (1e12, 0.1))
    bases = {f"i{k}": 10.0 + k for k in range(6)}
    assert unsure.keys() == free.keys() and unsure != free
    for (_, item), price in unsure.items():  # the uniform price, inside the band (8..20 and +-20 %)
        want = min(max(bases[item] * uniform.get(item, 1.0), 8.0, bases[item] * 0.8), bases[item] * 1.2)
        assert abs(price - want) <= 0.01, (item, price, want)
