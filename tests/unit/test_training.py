"""Training rows are point in time; the price model's demand falls in price; a tiny run trains end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit

from models.dataset import LIFT, EventLog, build_rows, fill_item_lift, item_conv_lift
from models.lab.simulator import Market, MarketConfig
from streams.catalog import Catalog
from streams.features import FEATURE_NAMES, ITEM_FEATURE_NAMES, FeatureSpec, item_features, new_state, update
from streams.schemas import CatalogItem, ClickEvent

SPEC = FeatureSpec()
CATALOG = Catalog.of([CatalogItem("i1", "shoes", 10.0, 6.0, 7.0, 13.0), CatalogItem("i2", "books", 100.0, 50.0, 70.0, 130.0)])
T0 = 1_735_689_600.0


def ev(n: int, dt: float, session: str, typ: str, item: str, price: float, user: str = "u1") -> ClickEvent:
    return ClickEvent(f"e{n}", T0 + dt, user, session, typ, item, price)


def history() -> list[ClickEvent]:
    return [ev(0, 0, "s1", "view", "i1", 8.0), ev(1, 10, "s1", "click", "i1", 8.0),
            ev(2, 60, "s1", "view", "i2", 120.0), ev(3, 90, "s1", "purchase", "i1", 8.0),
            ev(4, 100, "s1", "view", "i1", 8.0),     # viewed again after buying: label 0
            ev(5, 7200, "s2", "view", "i2", 75.0), ev(6, 7300, "s2", "add_to_cart", "i2", 75.0),
            ev(7, 7400, "s2", "purchase", "i2", 75.0), ev(8, 7500, "s2", "review", "i2", 75.0)]


def test_rows_see_nothing_after_their_event() -> None:
    full = build_rows(EventLog.from_events(history()), CATALOG)
    assert full.user.shape == (4, len(FEATURE_NAMES))
    for k, cut in enumerate((1, 3, 5, 6)):  # each view row == the row built from the log cut right after it
        alone = build_rows(EventLog.from_events(history()[:cut]), CATALOG)
        np.testing.assert_array_equal(full.user[k], alone.user[-1])
        np.testing.assert_array_equal(full.item[k], alone.item[-1])
    # the later events would have changed the features: the test has teeth
    assert not np.array_equal(full.user[0], full.user[1])
    np.testing.assert_array_equal(full.label, [1, 0, 0, 1])
    np.testing.assert_allclose(full.price_ratio, [0.8, 1.2, 0.8, 0.75], rtol=1e-6)


def test_session_rows_and_choice_sets() -> None:
    d = build_rows(EventLog.from_events(history()), CATALOG)
    np.testing.assert_array_equal(d.sess_label, [1, 1])
    alone = build_rows(EventLog.from_events(history()[:1]), CATALOG)
    np.testing.assert_array_equal(d.sess_user[0], alone.user[0])  # features at the session's first event
    assert len(d.ch_user) == 1  # s2 has one candidate only: no choice to learn from
    k = int(d.ch_mask[0].sum())
    assert k == 2 and d.ch_items.shape[1] >= k and np.all(d.ch_mask[0, k:] == 0)
    chosen = d.ch_chosen[0]
    np.testing.assert_allclose(d.ch_price_ratio[0, chosen], 0.8, rtol=1e-6)
    # item features of the choice set == streams.features.item_features at the session's first event
    st = update(new_state(SPEC), history()[0], SPEC, base_price=10.0, category="shoes")
    want = item_features(st, SPEC, base_price=10.0, unit_cost=6.0, category="shoes")
    np.testing.assert_allclose(d.ch_items[0, chosen], want, rtol=1e-6)


def test_item_lift_is_out_of_fold_for_training_rows() -> None:
    m = Market(MarketConfig.small(n_users=80, n_items=10))
    d = build_rows(m.simulate(), Catalog.of(m.catalog()))
    cut = np.quantile(d.row_ts, 0.7)
    train, ch_train = d.row_ts < cut, d.ch_ts < cut
    table = fill_item_lift(d, train, ch_train)
    np.testing.assert_allclose(table, item_conv_lift(d.row_iid[train], d.label[train], len(d.item_ids)))
    np.testing.assert_allclose(d.item[~train, LIFT], table[d.row_iid[~train]])  # later rows: the shipped table
    real = d.ch_iid >= 0
    assert np.all(d.ch_items[~real, LIFT] == 0) and np.any(d.ch_items[real, LIFT] != 0)
    mine = d.row_uid == d.row_uid[train][0]
    before = d.item[mine & train, LIFT].copy()
    d.label[mine] = 1 - d.label[mine]  # a user's own labels never feed that user's training rows...
    again = fill_item_lift(d, train, ch_train)
    np.testing.assert_array_equal(d.item[mine & train, LIFT], before)
    assert not np.allclose(again, table)  # ...though they do feed the table: the check has teeth


def test_simulated_rows_are_point_in_time() -> None:
    m = Market(MarketConfig.small(n_users=40, n_items=20))
    log = m.simulate()
    full = build_rows(log, Catalog.of(m.catalog()))
    events = list(log.events())
    views = [n for n, e in enumerate(events) if e.type == "view"]
    for r in (3, len(views) // 2, len(views) - 1):
        cut = build_rows(EventLog.from_events(events[:views[r] + 1]), Catalog.of(m.catalog()))
        np.testing.assert_array_equal(full.user[r], cut.user[-1])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from models.price_model import PriceModelConfig
    from models.train import train_all

    m = Market(MarketConfig.small(n_users=200))
    out = tmp_path_factory.mktemp("model")
    summary = train_all(m.simulate(), Catalog.of(m.catalog()), out, market=m, holdout_days=0.25,
                        price_cfg=PriceModelConfig(epochs=2), rec_epochs=2, progress=False)
    return out, summary


@pytest.mark.slow
def test_price_model_demand_falls_in_price(tiny: tuple[Path, dict]) -> None:
    import keras

    from models.price_model import predict

    model = keras.models.load_model(tiny[0] / "price_model.keras")
    rng = np.random.default_rng(0)
    user = rng.normal(0, 3, (200, len(FEATURE_NAMES)))
    item = rng.normal(0, 3, (200, len(ITEM_FEATURE_NAMES)))
    grid = np.linspace(0.0, 3.0, 13)
    p = np.stack([predict(model, user, item, np.full(200, g))["p_buy"] for g in grid])
    assert np.all(np.diff(p, axis=0) <= 0)
    o = predict(model, user, item, np.ones(200))
    assert np.all(o["b"] > 0)
    np.testing.assert_allclose(o["p_buy"], expit(o["a"] - o["b"]), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_price_model_cannot_read_the_features_it_ignores(tiny: tuple[Path, dict]) -> None:
    """The shown-price features are zeroed inside the graph: changing them changes no output."""
    import keras

    from models.price_model import PriceModelConfig, predict

    model = keras.models.load_model(tiny[0] / "price_model.keras")
    ignored = [FEATURE_NAMES.index(n) for n in PriceModelConfig().ignore]
    assert ignored
    rng = np.random.default_rng(1)
    user, item = rng.normal(0, 1, (100, len(FEATURE_NAMES))), rng.normal(0, 1, (100, len(ITEM_FEATURE_NAMES)))
    moved = user.copy()
    moved[:, ignored] += rng.normal(0, 5, (100, len(ignored)))
    a, b = predict(model, user, item, np.ones(100)), predict(model, moved, item, np.ones(100))
    np.testing.assert_array_equal(a["b"], b["b"])
    np.testing.assert_array_equal(a["a"], b["a"])
    read = FEATURE_NAMES.index("view_level_in_category")  # a feature it does read moves it
    moved = user.copy()
    moved[:, read] += 3.0
    assert not np.allclose(predict(model, moved, item, np.ones(100))["a"], a["a"])


@pytest.mark.slow
def test_price_model_slope_reads_only_its_features(tiny: tuple[Path, dict]) -> None:
    """The slope tower reads the slope features only: other user features move the conversion at base
    (``a - b``) but never ``b``; a slope feature moves ``b``."""
    import keras

    from models.price_model import PriceModelConfig, predict

    model = keras.models.load_model(tiny[0] / "price_model.keras")
    cfg = PriceModelConfig()
    assert cfg.slope_features and not set(cfg.slope_features) & set(cfg.ignore)
    rng = np.random.default_rng(2)
    user, item = rng.normal(0, 1, (100, len(FEATURE_NAMES))), rng.normal(0, 1, (100, len(ITEM_FEATURE_NAMES)))
    other = [k for k, n in enumerate(FEATURE_NAMES) if n not in cfg.slope_features and n not in cfg.ignore]
    moved = user.copy()
    moved[:, other] += rng.normal(0, 5, (100, len(other)))
    a, b = predict(model, user, item, np.ones(100)), predict(model, moved, item, np.ones(100))
    np.testing.assert_array_equal(a["b"], b["b"])
    assert not np.allclose(a["a"] - a["b"], b["a"] - b["b"])
    moved = user.copy()
    moved[:, FEATURE_NAMES.index(cfg.slope_features[0])] += 3.0
    assert not np.allclose(predict(model, moved, item, np.ones(100))["b"], a["b"])


def test_slope_features_must_be_known_and_readable() -> None:
    from models.price_model import PriceModelConfig, slope_columns

    names = ("x", "y", "z")
    assert slope_columns(names, PriceModelConfig(slope_features=("z", "x"), ignore=())).tolist() == [2, 0]
    assert slope_columns(names, PriceModelConfig(slope_features=(), ignore=())) is None
    with pytest.raises(ValueError, match="unknown slope features"):
        slope_columns(names, PriceModelConfig(slope_features=("nope",), ignore=()))
    with pytest.raises(ValueError, match="also in the ignored"):
        slope_columns(names, PriceModelConfig(slope_features=("y",), ignore=("y",)))


def test_train_cli_refuses_an_unknown_slope_feature_before_any_work(capsys: pytest.CaptureFixture[str]) -> None:
    from models.train import main

    with pytest.raises(SystemExit) as e:
        main(["--small", "--price-slope-features", "view_level_in_category,nope", "--out", "/nonexistent/x"])
    assert e.value.code == 2
    assert "unknown slope features ['nope']" in capsys.readouterr().err


@pytest.mark.slow
def test_ensemble_averages_its_members_in_one_graph() -> None:
    """The merged graph's u and log b are the members' means; the members keep their own weights."""
    import keras

    from models.price_model import B_EPS, B_MAX, PriceModelConfig, build_price_model, ensemble, predict

    keras.utils.set_random_seed(3)

    rng = np.random.default_rng(3)
    nu, ni = 6, len(ITEM_FEATURE_NAMES)
    user, item = rng.normal(0, 1, (300, nu)), rng.normal(0, 1, (300, ni))
    cfg = PriceModelConfig(hidden=(8,), b_hidden=(4,))
    mask = np.array([1, 1, 0, 1, 1, 1], np.float32)
    sel = np.array([0, 3, 4])
    members = [build_price_model(user, item, cfg, u0=-2.0 + k, b0=2.0 + k, mask=mask, slope_select=sel)
               for k in range(3)]
    merged = ensemble(members, user, item, cfg, mask, sel)
    assert len(merged.get_layer("m2_u_out").get_weights()) == 2 and merged.get_layer("user_mask")
    assert merged.get_layer("m0_b_dense0").get_weights()[0].shape[0] == len(sel) + 1  # + the item's log slope
    outs = [predict(m, user, item, np.ones(300)) for m in members]
    got = predict(merged, user, item, np.ones(300))
    t = lambda o: np.log(o["b"] - B_EPS)  # noqa: E731  (b = exp(t) + B_EPS below the cap)
    ok = np.all([o["b"] < 0.9 * B_MAX for o in outs], axis=0)  # a capped member's own b hides its t
    assert ok.mean() > 0.5
    np.testing.assert_allclose(t(got)[ok], np.mean([t(o) for o in outs], axis=0)[ok], atol=1e-4)
    np.testing.assert_allclose(got["a"] - got["b"], np.mean([o["a"] - o["b"] for o in outs], axis=0), atol=1e-4)
    assert not np.allclose(outs[0]["b"], outs[1]["b"])  # members differ: the average is not one of them


def test_feature_mask_rejects_unknown_names() -> None:
    from models.price_model import feature_mask

    assert feature_mask(("x", "y", "z"), ("y",)).tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="unknown"):
        feature_mask(("x",), ("nope",))


@pytest.mark.slow
def test_tiny_end_to_end_run_writes_the_agreed_layout(tiny: tuple[Path, dict]) -> None:
    import joblib

    out, summary = tiny
    for name in ("user_model.joblib", "price_model.keras", "recommend_model.keras", "training_summary.json",
                 "holdout_sample.npz", "plots/calibration.png", "plots/demand_curves.png", "plots/elasticity.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "training_summary.json").read_text())
    assert saved["feature_names"] == list(FEATURE_NAMES) and saved["data"]["exposure_rows"]["holdout"] > 0
    for key in ("log_loss", "auc", "ece", "sensitivity_spearman"):
        assert np.isfinite(summary["metrics"]["price_model"][key])
    with np.load(out / "holdout_sample.npz") as z:
        assert z["user"].shape == (10_000, len(FEATURE_NAMES)) and z["price_ratio"].shape == (10_000, 1)
        assert z["rec_items"].shape[0] == 10_000 and z["rec_items"].shape[2] == len(ITEM_FEATURE_NAMES)
        assert set(z.files) >= {"user", "item", "price_ratio", "rec_user", "rec_items", "rec_price_ratio", "rec_mask"}
        p = joblib.load(out / "user_model.joblib").predict_proba(z["user"][:50])[:, 1]
    assert np.all((p > 0) & (p < 1))


def test_decisions_replace_the_listing_price_of_the_views_they_priced(tmp_path: Path) -> None:
    from models.dataset import apply_decisions, read_prices
    from streams.schemas import PriceEvent, decision_id, dumps

    log = EventLog.from_events(history())
    decided = [PriceEvent(decision_id("e0", "i1"), T0, "u1", "i1", 9.1, 10.0, "treatment", 0.1, 0.3, "m", ("OPTIMAL",),
                          propensity=5.0, policy="dither:0.1"),
               PriceEvent(decision_id("e5", "i2"), T0, "u1", "i2", 100.0, 100.0, "control", 0.1, 5.0, "m", ("CONTROL",),
                          policy="control"),
               PriceEvent(decision_id("e1", "i1"), T0, "u1", "i1", 1.0, 10.0, "treatment", 0.1, 0.3, "m", ("OPTIMAL",))]
    path = tmp_path / "prices.jsonl"
    path.write_bytes(b"\n".join(dumps(p) for p in decided) + b"\n")
    joined, stats = apply_decisions(log, read_prices(path))
    by_event = {e.event_id: e.price for e in joined.events()}
    assert by_event["e0"] == 9.1 and by_event["e5"] == 100.0      # the views the worker priced
    assert by_event["e2"] == 120.0 and by_event["e1"] == 8.0       # a view without a decision; a click is no view
    assert stats == {"views": 4, "matched": 2, "arms": {"treatment": 1, "control": 1},
                     "policies": {"dither:0.1": 1, "control": 1}}
    rows = build_rows(joined, CATALOG)
    assert rows.price_ratio[0] == pytest.approx(0.91)               # the exposure is at the decided price
    from models.dataset import decided_views

    mask = decided_views(joined, read_prices(path))
    assert [e.event_id for e, k in zip(joined.events(), mask, strict=True) if k] == ["e0", "e5"]


def test_priced_rows_read_the_features_of_the_users_first_priced_view() -> None:
    from models.dataset import freeze_user_features

    m = Market(MarketConfig.small(seed=3))
    data = build_rows(m.simulate(), Catalog.of(m.catalog()))
    rng = np.random.default_rng(0)
    priced = rng.random(len(data.row_ts)) < 0.5
    frozen, n_users = freeze_user_features(data, priced)
    assert n_users == len(np.unique(data.row_uid[priced])) > 10
    assert np.array_equal(frozen.user[~priced], data.user[~priced])          # unpriced rows: their own features
    assert np.array_equal(frozen.item, data.item) and np.array_equal(frozen.label, data.label)
    changed = 0
    for u in np.unique(data.row_uid[priced]):
        rows = np.flatnonzero(priced & (data.row_uid == u))
        first = rows[np.argmin(data.row_ts[rows])]
        assert np.all(frozen.user[rows] == data.user[first])                 # every priced row: the first one's
        changed += int(np.any(data.user[rows] != data.user[first]))
    assert changed > 10                                                      # features do move between views
    assert freeze_user_features(data, np.zeros(len(priced), bool))[1] == 0


def test_price_variation_tells_a_policy_history_from_a_randomised_one() -> None:
    from models.dataset import price_variation

    m = Market(MarketConfig.small(seed=3))
    data = build_rows(m.simulate(), Catalog.of(m.catalog()))
    from models.price_model import PriceModelConfig, feature_mask

    rows = np.ones(len(data.price_ratio), bool)
    cols = feature_mask(FEATURE_NAMES, PriceModelConfig().ignore)  # not the features made of shown prices
    randomised = price_variation(data, rows, user_columns=cols)
    assert randomised["residual_sd"] > 0.05 and randomised["r2"] < 0.2   # the simulator's prices are random
    x = np.hstack([data.user[:, cols > 0], data.item]).astype(np.float64)
    w = np.random.default_rng(0).normal(0, 0.01, x.shape[1])
    data.price_ratio = np.exp((x - x.mean(0)) @ w).astype(np.float32)   # prices a policy chose from the features
    policy = price_variation(data, rows, user_columns=cols)
    assert policy["residual_sd"] < 0.01 and policy["r2"] > 0.95


def test_train_refuses_a_log_whose_holdout_has_no_views(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from models.dataset import write_jsonl
    from models.train import main

    evs = history() + [ClickEvent("late", T0 + 10 * 86400, "u1", "s9", "review", "i2", 75.0, rating=4.0)]
    write_jsonl(tmp_path / "ev.jsonl", evs)
    write_jsonl(tmp_path / "cat.jsonl", [CatalogItem("i1", "shoes", 10.0, 6.0, 7.0, 13.0),
                                         CatalogItem("i2", "books", 100.0, 50.0, 70.0, 130.0)])
    rc = main(["--events", str(tmp_path / "ev.jsonl"), "--catalog", str(tmp_path / "cat.jsonl"),
               "--out", str(tmp_path / "out"), "--holdout-days", "1", "--no-plots", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "0 to judge" in err and "--holdout-days" in err and "Traceback" not in err
