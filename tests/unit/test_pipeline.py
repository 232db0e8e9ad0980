"""The batch pipeline without Faust: replays are idempotent, duplicates keep their decision_id."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from streams.catalog import Catalog
from streams.features import item_features, update, user_features
from streams.pipeline import Pipeline, RawRecord
from streams.schemas import CatalogItem, parse_click, parse_dead_letter, parse_price
from streams.scoring import DeterministicScorer
from streams.settings import load_settings
from streams.state import decode_record

NOW = 1_700_000_000.0


def record(offset: int, typ: str = "view", item: str = "i1", user: str = "u1") -> RawRecord:
    value = orjson.dumps({"event_id": f"e{offset}", "ts": NOW - 1000 + offset, "user_id": user,
                          "session_id": "s", "type": typ, "item_id": item, "price": 10.0})
    return RawRecord(user.encode(), value, "clickstream", 0, offset)


def make(**overrides: object) -> tuple[Pipeline, dict[str, bytes]]:
    catalog = Catalog()
    for k in range(6):
        catalog.put(CatalogItem(f"i{k}", f"c{k % 3}", 10.0 + k, 5.0, 8.0, 20.0))
    scorer = DeterministicScorer()
    pipe = Pipeline(load_settings({}, **overrides), catalog, lambda: scorer, lambda: NOW)
    return pipe, {}


def run(pipe: Pipeline, table: dict[str, bytes], batch: list[RawRecord]):
    out = pipe.process(batch, table.get)
    for key, (blob, _) in out.records.items():
        table[key] = blob
    return out


def test_replayed_batch_changes_no_state_and_repeats_decision_ids() -> None:
    pipe, table = make(treatment_share=1.0, resend_unchanged_s=0)
    batch = [record(i, typ) for i, typ in enumerate(["view", "click", "add_to_cart", "purchase"])]
    first = run(pipe, table, batch)
    snapshot = dict(table)
    again = run(pipe, table, batch)  # a crash before the commit delivers the batch again
    assert table == snapshot
    assert again.counts["replayed"] == 4
    ids = lambda out: [parse_price(v).decision_id for _, v in out.prices]  # noqa: E731
    assert ids(first) == ids(again) and len(ids(first)) == 3 * (1 + pipe.s.top_k)


def test_split_batches_equal_one_batch() -> None:
    evs = [record(i, typ, item=f"i{i % 4}") for i, typ in enumerate(["view", "click", "view", "purchase"] * 5)]
    one, t1 = make()
    run(one, t1, evs)
    two, t2 = make()
    for k in range(0, len(evs), 3):
        run(two, t2, evs[k:k + 3])
    assert decode_record(next(iter(t1.values()))).features == decode_record(next(iter(t2.values()))).features


def test_step_limit_remembers_previous_price() -> None:
    pipe, table = make(treatment_share=1.0, max_step=0.01, top_k=0)
    out = run(pipe, table, [record(0), record(1)])
    p0, p1 = (parse_price(v).price for _, v in out.prices)
    assert abs(p1 / p0 - 1) <= 0.01 + 1e-9
    assert decode_record(next(iter(table.values()))).prices["i1"][0] == p1


def test_control_arm_gets_base_price() -> None:
    pipe, table = make(treatment_share=0.0)
    out = run(pipe, table, [record(0)])
    assert all(parse_price(v).price == parse_price(v).base_price for _, v in out.prices)
    assert {parse_price(v).reasons for _, v in out.prices} == {("CONTROL",)}


def test_unkeyed_or_wrongly_keyed_records_are_dead_lettered() -> None:
    pipe, table = make()
    good = record(0)
    out = run(pipe, table, [RawRecord(None, good.value, "clickstream", 0, 1),
                            RawRecord(b"someone-else", good.value, "clickstream", 0, 2)])
    assert out.counts["dead_letter.KEY_MISMATCH"] == 2 and not out.prices and not table


class _Recording(DeterministicScorer):
    """Records what the pipeline scores; item lifts from a table, as a bundle's item table."""

    TABLE = {"i1": (0.7, 0.25), "i2": (-0.4, -0.1)}  # item_conv_lift, item_log_slope

    def __init__(self) -> None:
        super().__init__()
        self.priced: list[tuple[np.ndarray, np.ndarray]] = []

    def item_table(self, item_ids):  # type: ignore[no-untyped-def]
        return np.array([self.TABLE.get(i, (0.0, 0.0)) for i in item_ids])

    def price(self, user, item, price_ratio):  # type: ignore[no-untyped-def]
        self.priced.append((np.asarray(user), np.asarray(item)))
        return super().price(user, item, price_ratio)


def test_pipeline_item_features_are_the_training_ones() -> None:
    """Serving builds each priced row's item features as the training rows do (features.item_features,
    the bundle's item table), from the user's state at the trigger."""
    pipe, table = make(top_k=2, resend_unchanged_s=0)
    scorer = _Recording()
    pipe.scorer = lambda: scorer
    run(pipe, table, [record(0, "view", "i0"), record(1, "click", "i0"), record(2, "add_to_cart", "i3")])
    state = decode_record(next(iter(table.values()))).features
    scorer.priced.clear()
    out = run(pipe, table, [record(3, "view", "i1")])
    state = update(state, parse_click(record(3, "view", "i1").value, now=NOW), pipe.spec,
                   base_price=11.0, category="c1", level=pipe.catalog.level("i1"))
    [(users, items)] = scorer.priced
    priced = [parse_price(v).item_id for _, v in out.prices]
    assert priced[0] == "i1" and len(priced) == 3
    for row, item_id in zip(items, priced, strict=True):
        it = pipe.catalog.get(item_id)
        want = item_features(state, pipe.spec, base_price=it.base_price, unit_cost=it.unit_cost,
                             category=it.category, conv_lift=_Recording.TABLE.get(item_id, (0.0, 0.0))[0],
                             log_slope=_Recording.TABLE.get(item_id, (0.0, 0.0))[1])
        np.testing.assert_allclose(row, want, rtol=1e-6)
    np.testing.assert_allclose(users[0], user_features(state, pipe.spec, NOW - 1000 + 3), rtol=1e-6)
    assert items[0, 5] == np.float32(0.7) and items[0, 6] == np.float32(0.25)  # i1's table reached the model


def test_exploration_is_logged_and_replays_to_the_same_price() -> None:
    views = [record(i, "view", item=f"i{i % 6}", user=f"u{i}") for i in range(60)]
    pipe, table = make(exploration_width=0.1, top_k=0)
    first = [parse_price(v) for _, v in run(pipe, table, views).prices]
    again, t2 = make(exploration_width=0.1, top_k=0)  # another worker, the same events: the same draws
    assert [parse_price(v) for _, v in run(again, t2, views).prices] == first
    greedy, t3 = make(top_k=0)
    decided = {p.decision_id: p for p in (parse_price(v) for _, v in run(greedy, t3, views).prices)}
    treated = [p for p in first if p.arm == "treatment"]
    control = [p for p in first if p.arm == "control"]
    assert treated and control
    assert all(p.policy == "control" and p.propensity == 1.0 and p.price == p.base_price for p in control)
    drawn = [p for p in treated if "EXPLORED" in p.reasons]
    assert drawn and all(p.policy == "dither:0.1" and 1 / 0.2 - 1e-9 <= p.propensity for p in drawn)
    assert any(p.price != decided[p.decision_id].price for p in drawn)  # moved from the decision ...
    assert all(abs(np.log(p.price / decided[p.decision_id].price)) <= 0.1 + 1e-3 for p in drawn)  # ... within w
    assert all(p.policy == "greedy" and p.propensity == 1.0 for p in decided.values() if p.arm == "treatment")


def with_fields(rec: RawRecord, **fields: object) -> RawRecord:
    return RawRecord(rec.key, orjson.dumps({**orjson.loads(rec.value), **fields}), rec.topic, rec.partition,
                     rec.offset)


def test_added_upstream_field_does_not_stop_pricing_when_ignored(caplog) -> None:
    pipe, table = make(top_k=0, unknown_fields="ignore")
    batch = [with_fields(record(i), campaign_id="c7", device="ios") for i in range(3)]
    out = run(pipe, table, batch)
    assert not out.dead_letters and len(out.prices) == 3
    assert out.counts["ignored_fields"] == 6
    # logged once per new name, not once per record
    assert sum("unknown field 'campaign_id'" in r.getMessage() for r in caplog.records) == 1
    # the same events without the extra fields give the same state: nothing of them was read
    plain, t2 = make(top_k=0, unknown_fields="ignore")
    run(plain, t2, [record(i) for i in range(3)])
    assert table == t2


def test_added_upstream_field_is_dead_lettered_when_rejected() -> None:
    pipe, table = make(top_k=0, unknown_fields="reject")
    out = run(pipe, table, [with_fields(record(0), campaign_id="c7")])
    assert not out.prices
    assert [parse_dead_letter(v).error_code for _, v in out.dead_letters] == ["UNKNOWN_FIELD"]


def test_absurd_shown_price_is_dead_lettered_and_not_folded_in() -> None:
    pipe, table = make(top_k=0, max_price_ratio=20.0)  # i1 has base price 11
    batch = [record(0), with_fields(record(1), price=1e308), with_fields(record(2), price=11.0 * 20 + 0.01),
             with_fields(record(3), price=11.0 * 20), with_fields(record(4, item="not-in-catalog"), price=1e308)]
    out = run(pipe, table, batch)
    letters = [parse_dead_letter(v) for _, v in out.dead_letters]
    assert [(dl.offset, dl.error_code) for dl in letters] == [(1, "BAD_PRICE"), (2, "BAD_PRICE")]
    assert "PRICING_MAX_PRICE_RATIO" in letters[0].message
    # offsets 0 and 3 (at the bound) are priced; the unknown item has no terms, so no price either
    assert sum(n for k, n in out.counts.items() if k.startswith("event.")) == 3
    ratios = decode_record(next(iter(table.values()))).features
    ref, t2 = make(top_k=0)
    run(ref, t2, [record(0), with_fields(record(3), price=11.0 * 20), with_fields(record(4, item="not-in-catalog"),
                                                                                   price=1e308)])
    assert ratios == decode_record(next(iter(t2.values()))).features


# ---------------------------------------------------------------- shortlist (retrieval, then ranking)
def _big(n_items: int = 60, **overrides: object) -> Pipeline:
    catalog = Catalog()
    rng = np.random.default_rng(3)
    for k in range(n_items):
        base = float(np.round(rng.uniform(5, 50), 2))
        catalog.put(CatalogItem(f"i{k}", f"c{k % 7}", base, round(base * rng.uniform(0.3, 0.7), 2),
                                round(base * 0.8, 2), round(base * 1.5, 2)))
    scorer = _Affine()
    return Pipeline(load_settings({}, **overrides), catalog, lambda: scorer, lambda: NOW)


class _Affine(_Recording):
    """First stage with an offset and a lift per item: affine, ranks as ``recommend`` at equal prices."""

    LIFT = {f"i{k}": 0.05 * (k % 11) for k in range(60)}

    def retrieve(self, item):  # type: ignore[no-untyped-def]
        return np.asarray(item, np.float64) @ self.W_ITEM + 3.0


def _history(n_users: int = 12) -> list[RawRecord]:
    rng = np.random.default_rng(4)
    return [record(o, str(rng.choice(["view", "click", "add_to_cart"])), f"i{int(rng.integers(60))}",
                   f"u{o % n_users}") for o in range(240)]


def _priced(out) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(parse_price(v).decision_id, parse_price(v).item_id) for _, v in out.prices]


def test_shortlist_holds_the_full_rankings_top_k_when_the_first_stage_ranks_alike() -> None:
    """A first stage that ranks as the recommend model does (here: the same linear utility) loses
    nothing: every trigger prices the same items as ranking the whole catalog."""
    full, short = _big(top_k=3, shortlist=0), _big(top_k=3, shortlist=6)
    evs = _history()
    a, b = run(full, {}, evs), run(short, {}, evs)
    assert len(a.prices) == len(b.prices) > 0 and _priced(a) == _priced(b)


@pytest.mark.parametrize("m", [3, 9, 25])
def test_shortlist_is_the_first_stage_top_over_the_whole_catalog(m: int) -> None:
    """The factorised scores (item part + user part per category bucket, each bucket's best m by
    item part) pick exactly the rows that scoring every (trigger, item) feature row picks."""
    pipe = _big(shortlist=m)
    table: dict[str, bytes] = {}
    run(pipe, table, _history())
    scorer = pipe.scorer()
    recs = [decode_record(v, pipe.spec) for v in table.values()]
    from streams.features import category_profiles

    profiles = category_profiles(np.asarray([r.features.buckets for r in recs]), pipe.spec)
    got = pipe.shortlist(scorer, profiles)
    n = len(pipe.catalog.columns().ids)
    x = pipe._item_x(scorer, profiles, np.arange(len(recs))[:, None], np.arange(n)[None, :])
    direct = scorer.retrieve(x.reshape(-1, x.shape[-1])).reshape(len(recs), n)
    assert got is not None and got.shape == (len(recs), m)
    for row, scores in zip(got, direct, strict=True):
        assert set(row.tolist()) == set(np.argsort(-scores)[:m].tolist())


def test_viewed_item_is_priced_first_even_outside_the_shortlist() -> None:
    """The event's own item is always priced (first), then top_k other items from the shortlist."""
    pipe = _big(top_k=2, shortlist=4, treatment_share=1.0)
    scorer = pipe.scorer()
    cols = pipe.catalog.columns()
    n = len(cols.ids)
    item_part = scorer.retrieve(pipe._item_x(scorer, np.zeros((1, 3, pipe.spec.n_buckets)), np.zeros(1, int),
                                             np.arange(n)))
    worst = cols.ids[int(np.argmin(item_part))]  # same bucket profile for a new user: last in the stage
    out = run(pipe, {}, [record(0, "view", worst, "fresh")])
    priced = [parse_price(v).item_id for _, v in out.prices]
    assert priced[0] == worst and len(priced) == 3 and worst not in priced[1:]


def test_no_first_stage_ranks_the_whole_catalog() -> None:
    """A scorer without a first stage (a bundle exported before it existed) ranks every item."""
    class _None(_Affine):
        def retrieve(self, item):  # type: ignore[no-untyped-def]
            return None

    evs = _history()
    full = run(_big(top_k=3, shortlist=0), {}, evs)
    pipe = _big(top_k=3, shortlist=4)
    scorer = _None()
    pipe.scorer = lambda: scorer
    assert pipe.shortlist(scorer, np.zeros((1, 3, pipe.spec.n_buckets))) is None
    assert _priced(run(pipe, {}, evs)) == _priced(full)


# ---------------------------------------------------------------- unchanged recommended prices
def test_unchanged_recommended_prices_are_not_sent_again_within_their_validity() -> None:
    """Control shows base prices, so the second view's recommended prices are the ones just sent:
    only the viewed item's price goes out (always, even unchanged); the rest counts as unchanged."""
    pipe, table = make(treatment_share=0.0, top_k=2, resend_unchanged_s=300)
    first = run(pipe, table, [record(0, "view", "i1")])
    second = run(pipe, table, [record(1, "view", "i1")])
    assert len(first.prices) == 3 and second.counts["unchanged_prices"] == 2
    assert [parse_price(v).item_id for _, v in second.prices] == ["i1"]


def test_unchanged_prices_are_sent_again_once_their_validity_is_over() -> None:
    pipe, table = make(treatment_share=0.0, top_k=2, resend_unchanged_s=300)
    run(pipe, table, [record(0, "view", "i1")])
    later = run(pipe, table, [record(301, "view", "i1")])  # event time 301 s after the first
    assert len(later.prices) == 3 and not later.counts["unchanged_prices"]


def test_a_replayed_batch_sends_every_price_again() -> None:
    """A replay's prices may have been lost with the crash: none is left out as unchanged."""
    pipe, table = make(treatment_share=0.0, top_k=2, resend_unchanged_s=300)
    batch = [record(0, "view", "i1"), record(1, "view", "i1")]
    first = run(pipe, table, batch)
    again = run(pipe, table, batch)
    ids = lambda out: {parse_price(v).decision_id for _, v in out.prices}  # noqa: E731
    assert first.counts["unchanged_prices"] == 2 and len(again.prices) == 6 and ids(first) < ids(again)


def test_zero_validity_sends_every_price() -> None:
    pipe, table = make(treatment_share=0.0, top_k=2, resend_unchanged_s=0)
    run(pipe, table, [record(0, "view", "i1")])
    assert len(run(pipe, table, [record(1, "view", "i1")]).prices) == 3


def _three(**overrides: object) -> tuple[Pipeline, dict[str, bytes]]:
    pipe, table = make(**overrides)
    scorer = DeterministicScorer(uniform={"i0": 0.85, "i1": 0.95, "i2": 1.3})  # i2: above the band
    pipe.scorer = lambda: scorer
    return pipe, table


def test_uniform_arm_shows_the_items_uniform_price_through_the_guardrails() -> None:
    pipe, table = _three(treatment_share=0.0, uniform_share=1.0, top_k=5, resend_unchanged_s=0)
    out = run(pipe, table, [record(0, "view", "i1"), record(1, "view", "i2")])
    prices = [parse_price(v) for _, v in out.prices]
    assert prices and {p.arm for p in prices} == {"uniform"} and {p.policy for p in prices} == {"uniform"}
    assert all(p.propensity == 1.0 for p in prices)
    # base * ratio, in cents; i2 clipped to base * 1.2 = 14.3999... in floating point: the cent inside is 14.39
    want = {"i0": 8.5, "i1": 10.45, "i2": 14.39, "i3": 13.0, "i4": 14.0, "i5": 15.0}
    for p in prices:
        assert p.price == want[p.item_id], p
        assert "UNIFORM" in p.reasons and ("CLIP_MAX_DEVIATION" in p.reasons) == (p.item_id == "i2")
    assert out.counts["price.uniform"] == len(prices) and out.counts["reason.UNIFORM"] == len(prices)
    assert out.counts["reason.CONTROL"] == 0


def test_three_arms_split_users_and_count_by_arm() -> None:
    pipe, table = _three(treatment_share=1 / 3, uniform_share=1 / 3, top_k=0)
    out = run(pipe, table, [record(k, "view", "i1", user=f"user-{k}") for k in range(300)])
    arms = [parse_price(v).arm for _, v in out.prices]
    assert all(abs(arms.count(a) - 100) < 40 for a in ("control", "uniform", "treatment"))
    assert {a: out.counts[f"price.{a}"] for a in ("control", "uniform", "treatment")} == \
        {a: arms.count(a) for a in ("control", "uniform", "treatment")}
    assert out.counts["reason.CONTROL"] == arms.count("control")
    assert out.counts["reason.UNIFORM"] == arms.count("uniform")
    uniform = {parse_price(v).price for _, v in out.prices if parse_price(v).arm == "uniform"}
    assert uniform == {10.45}  # one price for everyone in the arm


def test_cap_at_uniform_bounds_treatment_prices() -> None:
    """DeterministicScorer's optimum for these users is above base; capped, it is at most max(base, uniform)."""
    evs = [record(k, "view", "i1", user=f"user-{k}") for k in range(40)]
    free, t1 = _three(treatment_share=1.0, top_k=5, resend_unchanged_s=0)
    capped, t2 = _three(treatment_share=1.0, top_k=5, resend_unchanged_s=0, cap_at_uniform=True)
    p_free = [parse_price(v) for _, v in run(free, t1, evs).prices]
    out = run(capped, t2, evs)
    p_cap = [parse_price(v) for _, v in out.prices]
    ratio = {"i0": 0.85, "i1": 0.95, "i2": 1.3}
    assert any(p.price > p.base_price for p in p_free)  # the cap has something to do
    for p in p_cap:
        assert p.arm == "treatment" and p.price <= round(p.base_price * max(1.0, ratio.get(p.item_id, 1.0)), 2) + 1e-9
    assert out.counts["reason.CLIP_UNIFORM_CAP"] > 0


def test_history_records_build_the_state_but_are_not_priced() -> None:
    from dataclasses import replace

    # the same events, once as history (a warm-up) and once live: the same state, prices only live
    batch = [record(i, typ) for i, typ in enumerate(["view", "click", "add_to_cart", "purchase"])]
    live, t_live = make(treatment_share=1.0)
    warm, t_warm = make(treatment_share=1.0)
    priced = run(live, t_live, batch)
    history = run(warm, t_warm, [replace(r, history=True) for r in batch])
    assert len(priced.prices) > 0 and history.prices == []
    assert history.counts["skipped.HISTORY"] == 3  # the three triggers; the purchase is not one
    assert history.counts["event.view"] == 1 and history.counts["event.purchase"] == 1
    key = warm.hasher.hash("u1")
    assert decode_record(t_warm[key]).features.counts[0] > 0
    assert decode_record(t_warm[key]).features == decode_record(t_live[key]).features
    after = run(warm, t_warm, [record(9)])  # the next live view is priced as usual
    assert [parse_price(v).item_id for _, v in after.prices][0] == "i1"
