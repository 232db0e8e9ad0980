"""Rolling features: order independence, lateness rule, bounded state, serialisation."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from streams.features import (
    FEATURE_NAMES,
    FeatureSpec,
    LateEvent,
    category_bucket,
    category_levels,
    category_profile,
    category_profiles,
    decode_state,
    encode_state,
    feature_names,
    item_features,
    new_state,
    update,
    user_features,
)
from streams.schemas import EVENT_TYPES, ClickEvent

SPEC = FeatureSpec()


def events(n: int, seed: int = 0) -> list[ClickEvent]:
    rng = random.Random(seed)
    t = 1_000_000.0
    out = []
    for i in range(n):
        t += rng.expovariate(1 / 120)
        typ = rng.choice(EVENT_TYPES)
        out.append(ClickEvent(f"e{i}", t, "u", f"s{i // 7}", typ, f"i{rng.randrange(5)}",
                              rng.uniform(5, 15), 1, 4.0 if typ == "review" else None))
    return out


def fold(evs: list[ClickEvent]) -> list[float]:
    s = new_state(SPEC)
    for ev in evs:
        s = update(s, ev, SPEC, base_price=10.0, category=ev.item_id)
    return user_features(s, SPEC, now=max(e.ts for e in evs))


def test_names_derive_from_parameters() -> None:
    names = feature_names(FeatureSpec(windows_s=(900.0, 7200.0), n_buckets=4))
    assert "view_decay_15m" in names and "purchase_decay_2h" in names and "cart_rate_2h" in names
    assert len(names) == len(set(names))
    assert len(fold(events(3))) == len(FEATURE_NAMES)


def test_counters_are_order_independent_within_lateness() -> None:
    evs = events(200)
    shuffled = evs[:]
    random.Random(1).shuffle(shuffled)
    # shuffle only within blocks of 10 so every event is within the 24h lateness bound
    local = [e for k in range(0, 200, 10) for e in sorted(evs[k:k + 10], key=lambda e: -e.ts)]
    a, b = fold(evs), fold(local)
    n_counts = len(SPEC.windows_s) * len(EVENT_TYPES)
    assert a[:n_counts] == pytest.approx(b[:n_counts], rel=1e-9)
    # price and category sums are exact too
    tail = slice(FEATURE_NAMES.index("view_price_ratio"), None)
    skip = FEATURE_NAMES.index("review_mean")
    assert [x for i, x in enumerate(a) if i != skip][tail] == pytest.approx([x for i, x in enumerate(b) if i != skip][tail])


def test_too_late_event_raises_and_leaves_state() -> None:
    s = new_state(SPEC)
    s = update(s, ClickEvent("a", 200_000.0, "u", "s", "view", "i", 10.0), SPEC)
    before = encode_state(s)
    with pytest.raises(LateEvent):
        update(s, ClickEvent("b", 200_000.0 - SPEC.max_lateness_s - 1, "u", "s", "view", "i", 10.0), SPEC)
    assert encode_state(s) == before


def test_decay_halves_nothing_magic() -> None:
    s = update(new_state(SPEC), ClickEvent("a", 0.0, "u", "s", "view", "i", 10.0), SPEC)
    f_now = user_features(s, SPEC, now=0.0)[FEATURE_NAMES.index("view_decay_1h")]
    f_later = user_features(s, SPEC, now=3600.0)[FEATURE_NAMES.index("view_decay_1h")]
    assert f_now == pytest.approx(math.log1p(1.0))
    assert f_later == pytest.approx(math.log1p(math.exp(-1.0)))


def test_sums_keep_their_own_longer_memory() -> None:
    """The price-level sums decay with ``memory_s``, the counters with their windows."""
    spec = FeatureSpec(memory_s=28 * 86400.0)
    assert spec.memory_s > max(spec.windows_s)
    names = feature_names(spec)
    s, day = new_state(spec), 86400.0
    for t, level in ((0.0, 1.0), (14 * day, -1.0)):
        update(s, ClickEvent("e", t, "u", "s", "view", "i", 10.0), spec, base_price=10.0, category="c", level=level)
    f = user_features(s, spec, now=14 * day)
    w = math.exp(-0.5)  # 14 days at a 28-day memory; the 7-day window would have left exp(-2)
    assert f[names.index("view_level_in_category")] == pytest.approx((w - 1.0) / (w + 1.0 + 1.0))
    assert f[names.index("view_decay_168h")] == pytest.approx(math.log1p(1.0 + math.exp(-2.0)))


def test_state_is_bounded_and_round_trips() -> None:
    s = new_state(SPEC)
    sizes = []
    for i, ev in enumerate(events(5000)):
        s = update(s, ev, SPEC, base_price=10.0, category=f"c{i % 50}")
        if i % 1000 == 999:
            sizes.append(len(encode_state(s)))
    assert max(sizes) < 2400 and max(sizes) - min(sizes) < 60  # does not grow with traffic
    assert decode_state(encode_state(s)) == s


def test_session_depth_and_item_features() -> None:
    s = new_state(SPEC)
    for i, sess in enumerate(["a", "a", "a", "b"]):
        s = update(s, ClickEvent(str(i), float(i), "u", sess, "view", "i", 10.0), SPEC, category="shoes")
    assert s.depth == 1
    f = item_features(s, SPEC, base_price=20.0, unit_cost=5.0, category="shoes")
    assert f[0] == pytest.approx(math.log(20.0)) and f[1] == pytest.approx(math.log(4 / 5 + 0.02), rel=1e-4)
    assert f[2] == 0.25 and f[5] == 0.0  # conv_lift: neutral unless the bundle's item table says otherwise


def test_category_profile_counts_interest_per_category() -> None:
    """Views, clicks and carts per category: who clicks and buys in a category likes it."""
    s = new_state(SPEC)
    evs = [("view", "shoes"), ("click", "shoes"), ("add_to_cart", "shoes"), ("view", "shoes"), ("view", "books"),
           ("view", "books"), ("review", "books")]
    for n, (t, c) in enumerate(evs):
        update(s, ClickEvent(f"e{n}", 100.0 + n, "u", "s", t, "i", 10.0, rating=5.0 if t == "review" else None),
               SPEC, base_price=10.0, category=c)
    shoes, books = (category_bucket(c, SPEC.n_buckets) for c in ("shoes", "books"))
    assert shoes != books
    prof = category_profile(s, SPEC)
    click, cart = (1 + 0.3) / 5, (1 + 0.1) / 5  # the user's own rates over all 4 views, pseudo-count 1
    assert prof[0][shoes] == pytest.approx(math.log(2 / 5 + 0.02), rel=1e-5)
    assert prof[0][books] == pytest.approx(math.log(2 / 5 + 0.02), rel=1e-5)
    assert prof[1][shoes] == pytest.approx((1 + click) / 3, rel=1e-5)
    assert prof[2][shoes] == pytest.approx((1 + cart) / 3, rel=1e-5)
    assert prof[1][books] == pytest.approx(click / 3, rel=1e-5) and prof[2][books] == pytest.approx(cart / 3, rel=1e-5)
    f = item_features(s, SPEC, base_price=10.0, unit_cost=5.0, category="books", conv_lift=0.3, log_slope=-0.2)
    assert f[3:] == pytest.approx([click / 3, cart / 3, 0.3, -0.2], rel=1e-5)
    # the serving path's batch form gives the same numbers, for this user and an empty one
    batch = category_profiles(np.array([s.buckets, new_state(SPEC).buckets]), SPEC)
    np.testing.assert_allclose(batch[0], prof, rtol=1e-12)
    np.testing.assert_allclose(batch[1], category_profile(new_state(SPEC), SPEC), rtol=1e-12)


def test_level_in_category_reads_the_catalog_price_not_the_shown_one() -> None:
    """Which items a user views, at catalog prices: the same whatever price we showed."""
    lv = dict(zip(["cheap", "dear", "other"], category_levels(["c", "c", "d"], [10.0, 40.0, 99.0]), strict=True))
    k, b = FEATURE_NAMES.index("view_level_in_category"), FEATURE_NAMES.index("view_log_base_price")
    out = []
    for shown in (8.0, 12.0):  # the same views at two different shown prices
        s = new_state(SPEC)
        for n in range(4):
            update(s, ClickEvent(f"e{n}", 1000.0 + n, "u", "s", "view", "cheap", shown), SPEC,
                   base_price=10.0, category="c", level=lv["cheap"])
        out.append(user_features(s, SPEC, now=1004.0))
    assert out[0][k] == out[1][k] == pytest.approx(4 * math.log(0.5) / 5)  # 4 views, pseudo-count 1
    assert out[0][b] == out[1][b] == pytest.approx(4 * math.log(10.0) / 5)
    assert out[0][FEATURE_NAMES.index("view_price_ratio")] != out[1][FEATURE_NAMES.index("view_price_ratio")]


def test_state_written_before_the_level_sums_still_decodes() -> None:
    import orjson

    old = orjson.dumps([1, 5.0, 4.0, [0.0] * 15, [1.0] * 8, [0.0] * 8, "s", 2])
    s = decode_state(old)
    assert s.sums == [1.0] * 8 + [0.0, 0.0]
    assert s.buckets == [0.0] * (3 * SPEC.n_buckets)  # 8 view buckets hashed otherwise: reset
    assert len(user_features(s, SPEC, now=6.0)) == len(FEATURE_NAMES)


def test_sum_slots_are_named_once_each_and_fill_the_state() -> None:
    from streams.features import N_SUMS, Sum, new_state, update

    slots = {k: v for k, v in vars(Sum).items() if k.isupper()}
    assert sorted(slots.values()) == list(range(N_SUMS))  # every slot named, none twice
    s = new_state(SPEC)
    update(s, ClickEvent("e", 10.0, "u", "s", "review", "i", 5.0, rating=4.0), SPEC)
    assert s.sums[Sum.RATING] == 4.0 and s.sums[Sum.RATING_W] == 1.0
    assert sum(s.sums) == 5.0  # a review touches its own two slots only
