"""Training rows from an event log, point in time, with the stream's own feature code.

The log is replayed in event-time order through :func:`streams.features.update`; a row's features
are read right after its event is folded in, so they include that event and nothing later. Three
row sets come out of one pass:

* **exposures** (price model): one row per ``view`` of (user, item, shown price); label = the user
  bought that item later in the same session.
* **sessions** (user model): features after a session's first event; label = any purchase in it.
* **choice sets** (recommend model): sessions that end in a purchase; candidates = the items viewed
  in the session at their shown price ratio, chosen = the first item bought; user and item features
  as of the session's first event.

The item features ``item_conv_lift`` and ``item_log_slope`` are not in the user's state: they are
statistics of the history itself (:func:`item_conv_lift`, :mod:`models.elasticity`), which the model
bundle ships as its item table. Rows come out with them at 0; :func:`fill_item_lift` and
:func:`fill_item_slope` set them, out of fold for the rows they were computed from, so that no
row's own label leaks into its feature.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
from scipy.special import logit
from tqdm import tqdm

from streams.catalog import Catalog
from streams.features import (
    FEATURE_NAMES,
    ITEM_FEATURE_NAMES,
    ITEM_TABLE_FEATURES,
    FeatureSpec,
    category_bucket,
    category_profile,
    feature_names,
    item_features,
    new_state,
    update,
    user_features,
)
from streams.schemas import (
    EVENT_TYPES,
    CatalogItem,
    ClickEvent,
    PriceEvent,
    decision_id,
    dumps,
    parse_catalog,
    parse_click,
    parse_price,
)

VIEW, PURCHASE = EVENT_TYPES.index("view"), EVENT_TYPES.index("purchase")
LIFT = ITEM_FEATURE_NAMES.index("item_conv_lift")
SLOPE = ITEM_FEATURE_NAMES.index("item_log_slope")
TABLE = [ITEM_FEATURE_NAMES.index(n) for n in ITEM_TABLE_FEATURES]  # the item table's columns, in its order


@dataclass
class EventLog:
    """A clickstream in columns (indices into ``user_ids``/``item_ids``; ``rating`` nan = none)."""

    ts: np.ndarray
    user: np.ndarray
    session: np.ndarray
    etype: np.ndarray
    item: np.ndarray
    price: np.ndarray
    rating: np.ndarray
    user_ids: Sequence[str]
    item_ids: Sequence[str]
    session_ids: Sequence[str] | None = None   # None: session k is named f"s{k:08d}"
    event_ids: Sequence[str] | None = None     # None: event n is named f"e{n:09d}"

    def __len__(self) -> int:
        return len(self.ts)

    def type_names(self) -> list[str]:
        """Event type names, row by row."""
        return [EVENT_TYPES[t] for t in self.etype]

    def session_name(self, k: int) -> str:
        """The wire ``session_id`` of session index ``k``."""
        return self.session_ids[k] if self.session_ids is not None else f"s{k:08d}"

    def events(self) -> Iterator[ClickEvent]:
        """The log as wire-schema events."""
        for n, (t, u, s, e, i, p, r) in enumerate(zip(self.ts.tolist(), self.user.tolist(), self.session.tolist(),
                                                       self.etype.tolist(), self.item.tolist(), self.price.tolist(),
                                                       self.rating.tolist(), strict=False)):
            eid = self.event_ids[n] if self.event_ids is not None else f"e{n:09d}"
            yield ClickEvent(eid, t, self.user_ids[u], self.session_name(s), EVENT_TYPES[e], self.item_ids[i],
                             p, 1, None if math.isnan(r) else r)

    @classmethod
    def from_events(cls, events: Iterable[ClickEvent]) -> EventLog:
        """Columns from wire events (ids interned in order of appearance), sorted by event time."""
        evs = sorted(events, key=lambda e: e.ts)
        idx: list[dict[str, int]] = [{}, {}, {}]

        def intern(d: dict[str, int], key: str) -> int:
            return d.setdefault(key, len(d))

        cols = [(e.ts, intern(idx[0], e.user_id), intern(idx[1], e.session_id), EVENT_TYPES.index(e.type),
                 intern(idx[2], e.item_id), e.price, math.nan if e.rating is None else e.rating) for e in evs]
        arr = np.array(cols, dtype=np.float64).reshape(-1, 7)
        return cls(arr[:, 0], arr[:, 1].astype(np.int32), arr[:, 2].astype(np.int64), arr[:, 3].astype(np.int8),
                   arr[:, 4].astype(np.int32), arr[:, 5], arr[:, 6].astype(np.float32), list(idx[0]), list(idx[2]),
                   list(idx[1]), [e.event_id for e in evs])


# ---------------------------------------------------------------- JSONL files
def _open(path: str | Path, mode: str) -> IO[bytes]:
    if str(path).endswith(".gz"):
        return gzip.open(path, mode + "b")  # type: ignore[return-value]
    return open(path, mode + "b")


def write_jsonl(path: str | Path, records: Iterable[ClickEvent | CatalogItem]) -> int:
    """Write wire records one per line (gzip if the name ends in .gz); returns the count."""
    n = 0
    with _open(path, "w") as f:
        for r in records:
            f.write(dumps(r) + b"\n")
            n += 1
    return n


def read_events(path: str | Path) -> list[ClickEvent]:
    """Validated events from a JSONL file; a bad line raises with its line number."""
    with _open(path, "r") as f:
        out = []
        for k, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(parse_click(line, now=math.inf))
                except ValueError as e:
                    raise ValueError(f"{path}:{k}: {e}") from None
        return out


def read_catalog(path: str | Path) -> Catalog:
    """The catalog from a JSONL file of CatalogItem records."""
    with _open(path, "r") as f:
        return Catalog.of(parse_catalog(line) for line in f if line.strip())


# ---------------------------------------------------------------- training rows
@dataclass
class TrainingData:
    """Row sets for the three models; ``*_uid``/``*_iid`` index the log's ids, ``*_ts`` event time."""

    user: np.ndarray            # [N, U] exposure rows (price model)
    item: np.ndarray            # [N, I] (ITEM_FEATURE_NAMES)
    price_ratio: np.ndarray     # [N]
    label: np.ndarray           # [N] bought that item later in the same session
    row_uid: np.ndarray
    row_iid: np.ndarray
    row_ts: np.ndarray
    sess_user: np.ndarray       # [S, U] session rows (user model)
    sess_label: np.ndarray      # [S]
    sess_uid: np.ndarray
    sess_ts: np.ndarray
    ch_user: np.ndarray         # [M, U] choice sets (recommend model)
    ch_items: np.ndarray        # [M, K, I]
    ch_price_ratio: np.ndarray  # [M, K]
    ch_mask: np.ndarray         # [M, K] 1 = real candidate
    ch_chosen: np.ndarray       # [M]
    ch_ts: np.ndarray
    ch_uid: np.ndarray
    ch_iid: np.ndarray          # [M, K] item index per slot, -1 = padding
    user_ids: Sequence[str]
    item_ids: Sequence[str]
    row_log: np.ndarray | None = None  # [N] the log row (event) of each exposure


def rows_from(data: TrainingData, ts: float) -> TrainingData:
    """``data`` without the exposure, session and choice rows before event time ``ts``.

    The log before ``ts`` still built every later row's features (a warm-up history: the state
    the worker had), but its own rows are left out, e.g. to learn only from the worker's logs.
    """
    r, s, c = data.row_ts >= ts, data.sess_ts >= ts, data.ch_ts >= ts
    row = ("user", "item", "price_ratio", "label", "row_uid", "row_iid", "row_ts")
    sess = ("sess_user", "sess_label", "sess_uid", "sess_ts")
    ch = ("ch_user", "ch_items", "ch_price_ratio", "ch_mask", "ch_chosen", "ch_ts", "ch_uid", "ch_iid")
    cut = {k: getattr(data, k)[r] for k in row} | {k: getattr(data, k)[s] for k in sess} | \
        {k: getattr(data, k)[c] for k in ch}
    return replace(data, **cut, row_log=None if data.row_log is None else data.row_log[r])


def _catalog_columns(log: EventLog, catalog: Catalog) -> tuple[list, list, list, list]:
    """Per log item: base price, cost, category and level in category (None where the catalog lacks it)."""
    its = [catalog.get(i) for i in log.item_ids]
    return ([it.base_price if it else None for it in its], [it.unit_cost if it else None for it in its],
            [it.category if it else None for it in its], [catalog.level(i) for i in log.item_ids])


def build_rows(log: EventLog, catalog: Catalog, spec: FeatureSpec | None = None, *,
               max_candidates: int = 16, progress: bool = False) -> TrainingData:
    """Replay ``log`` in event-time order and cut the three row sets (see the module docstring)."""
    spec = spec or FeatureSpec()
    order = np.argsort(log.ts, kind="stable")
    base, cost, cat, level = _catalog_columns(log, catalog)
    n_views = int(np.sum(log.etype == VIEW))
    X = np.zeros((n_views, len(feature_names(spec))), np.float32)
    XI = np.zeros((n_views, len(ITEM_FEATURE_NAMES)), np.float32)
    view_n = np.zeros(n_views, np.int64)     # log row of each kept view
    SX = np.zeros((len(np.unique(log.session)), X.shape[1]), np.float32)
    SP = np.zeros((len(SX), 3, spec.n_buckets), np.float32)  # category profile at the session's first event
    sess_n = np.zeros(len(SX), np.int64)
    states: dict[int, object] = {}
    seen: set[int] = set()
    r = s = 0
    cols = zip(order.tolist(), log.ts[order].tolist(), log.user[order].tolist(), log.session[order].tolist(),
               log.etype[order].tolist(), log.item[order].tolist(), log.price[order].tolist(),
               log.rating[order].tolist(), strict=False)
    # stream here: one event at a time, in event-time order, each user's state folded forward
    for n, t, u, sk, e, i, p, rt in tqdm(cols, total=len(log), desc="replay", disable=not progress,
                                         mininterval=1.0):
        st = states.get(u)
        if st is None:
            st = states[u] = new_state(spec)
        ev = ClickEvent("", t, log.user_ids[u], log.session_name(sk), EVENT_TYPES[e], log.item_ids[i], p, 1,
                        None if rt != rt else rt)
        update(st, ev, spec, base_price=base[i], category=cat[i], level=level[i])  # type: ignore[arg-type]
        feats = None
        if sk not in seen:
            seen.add(sk)
            feats = user_features(st, spec, now=t)  # type: ignore[arg-type]
            SX[s], SP[s], sess_n[s] = feats, category_profile(st, spec), n  # type: ignore[arg-type]
            s += 1
        if e == VIEW and base[i] is not None:
            X[r] = feats if feats is not None else user_features(st, spec, now=t)  # type: ignore[arg-type]
            XI[r] = item_features(st, spec, base_price=base[i], unit_cost=cost[i], category=cat[i])  # type: ignore
            view_n[r] = n
            r += 1
    X, XI, view_n, SX, SP, sess_n = X[:r], XI[:r], view_n[:r], SX[:s], SP[:s], sess_n[:s]
    return _labels_and_choices(log, catalog, spec, X, XI, view_n, SX, SP, sess_n, max_candidates)


def _labels_and_choices(log: EventLog, catalog: Catalog, spec: FeatureSpec, X: np.ndarray, XI: np.ndarray,
                        view_n: np.ndarray, SX: np.ndarray, SP: np.ndarray, sess_n: np.ndarray,
                        max_k: int) -> TrainingData:
    """Labels (later purchase of the same item in the same session) and the choice sets, vectorised."""
    # position of every log row in replay order: "later" means later in that order
    pos = np.empty(len(log), np.int64)
    pos[np.argsort(log.ts, kind="stable")] = np.arange(len(log))
    n_it = max(len(log.item_ids), 1)
    buys = np.flatnonzero(log.etype == PURCHASE)
    bkey = log.session[buys] * n_it + log.item[buys]
    o = np.lexsort((pos[buys], bkey))
    bkey, bpos = bkey[o], pos[buys][o]
    ukey, first = np.unique(bkey, return_index=True)
    last = np.append(first[1:], len(bkey)) - 1
    vkey = log.session[view_n] * n_it + log.item[view_n]
    label = np.zeros(len(vkey), bool)
    if len(ukey):
        j = np.minimum(np.searchsorted(ukey, vkey), len(ukey) - 1)
        label = (ukey[j] == vkey) & (bpos[last[j]] > pos[view_n])
    sess_label = np.isin(log.session[sess_n], log.session[buys])
    ch = _choices(log, catalog, spec, view_n, SX, SP, sess_n, buys[np.argsort(pos[buys])], max_k)
    base = np.array([np.nan if b is None else b for b in _catalog_columns(log, catalog)[0]])
    return TrainingData(X, XI, (log.price[view_n] / base[log.item[view_n]]).astype(np.float32),
                        label.astype(np.int8), log.user[view_n], log.item[view_n], log.ts[view_n],
                        SX, sess_label.astype(np.int8), log.user[sess_n], log.ts[sess_n], *ch,  # type: ignore[misc, arg-type]
                        user_ids=log.user_ids, item_ids=log.item_ids, row_log=view_n)


def _choices(log: EventLog, catalog: Catalog, spec: FeatureSpec, view_n: np.ndarray, SX: np.ndarray,
             SP: np.ndarray, sess_n: np.ndarray, buys: np.ndarray, max_k: int) -> tuple[np.ndarray, ...]:
    """Choice sets of purchase sessions: viewed items (first view each) and the first item bought."""
    base, cost, cat, _ = _catalog_columns(log, catalog)
    first_buy: dict[int, int] = {}
    for n in buys.tolist():  # buys in replay order: the first purchase per session wins
        first_buy.setdefault(int(log.session[n]), int(log.item[n]))
    views: dict[int, dict[int, float]] = {}
    for n in view_n.tolist():  # exposures are in replay order
        sk = int(log.session[n])
        if sk in first_buy:
            views.setdefault(sk, {}).setdefault(int(log.item[n]), float(log.price[n]))
    srow = {int(log.session[n]): k for k, n in enumerate(sess_n.tolist())}
    cu, ci, cp, cm, cc, cts, cuid, ciid = [], [], [], [], [], [], [], []
    for sk, chosen in first_buy.items():
        cands = views.get(sk, {})
        if chosen not in cands or len(cands) < 2:
            continue
        items = [chosen] + [i for i in cands if i != chosen][:max_k - 1]  # chosen first, then shuffled below
        urow, prof = SX[srow[sk]], SP[srow[sk]]
        bks = [category_bucket(cat[i], spec.n_buckets) for i in items]
        table = [0.0] * len(ITEM_TABLE_FEATURES)  # filled later (fill_item_lift, fill_item_slope)
        feats = [[math.log(base[i]), prof[0, bk], cost[i] / base[i], prof[1, bk], prof[2, bk], *table]
                 for i, bk in zip(items, bks, strict=True)]  # == item_features at the session's first event
        perm = np.random.default_rng(sk).permutation(len(items))
        k = len(items)
        cu.append(urow)
        ci.append(np.pad(np.array(feats, np.float32)[perm], ((0, max_k - k), (0, 0))))
        cp.append(np.pad(np.array([cands[i] / base[i] for i in items], np.float32)[perm], (0, max_k - k)))
        cm.append(np.pad(np.ones(k, np.float32), (0, max_k - k)))
        cc.append(int(np.flatnonzero(perm == 0)[0]))
        cts.append(log.ts[sess_n[srow[sk]]])
        cuid.append(log.user[sess_n[srow[sk]]])
        ciid.append(np.pad(np.array(items, np.int64)[perm], (0, max_k - k), constant_values=-1))
    U, NI = SX.shape[1], len(ITEM_FEATURE_NAMES)
    if not cu:
        return (np.zeros((0, U), np.float32), np.zeros((0, max_k, NI), np.float32), np.zeros((0, max_k), np.float32),
                np.zeros((0, max_k), np.float32), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int32),
                np.zeros((0, max_k), np.int64))
    return (np.array(cu, np.float32), np.array(ci), np.array(cp), np.array(cm), np.array(cc, np.int64),
            np.array(cts), np.array(cuid, np.int32), np.array(ciid))


# ---------------------------------------------------------------- the item table
def item_conv_lift(iid: np.ndarray, label: np.ndarray, n_items: int, prior_views: float = 50.0) -> np.ndarray:
    """Per item: the log-odds of a view converting, shrunk toward the overall rate with
    ``prior_views`` pseudo-views, minus the overall log-odds (0 = an average item, or one with no
    views). Prices in the history were randomized, so this is the item's appeal at its usual price.

    >>> iid, label = np.array([0] * 100 + [1] * 100), np.array([1] * 30 + [0] * 170)
    >>> [round(float(x), 2) for x in item_conv_lift(iid, label, 3, prior_views=10)]
    [0.82, -2.55, 0.0]
    """
    views = np.bincount(iid, minlength=n_items).astype(np.float64)
    buys = np.bincount(iid, np.asarray(label, np.float64), minlength=n_items)
    p0 = float(np.clip(buys.sum() / max(views.sum(), 1.0), 1e-4, 1 - 1e-4))
    return np.asarray(logit((buys + prior_views * p0) / (views + prior_views)) - logit(p0))


def _fill_out_of_fold(data: TrainingData, train: np.ndarray, ch_train: np.ndarray, col: int,
                      stat: Callable[[np.ndarray], np.ndarray], folds: int, seed: int) -> np.ndarray:
    """Set item feature column ``col`` of ``data`` (in place) to ``stat(rows)`` (a per-item table from
    the exposure rows selected by the mask ``rows``) computed on ``train``; returns that table.

    Training rows and choice sets (``ch_train``) get the value computed without their user's fold
    of rows (users split in ``folds`` at random), so a row's own label never feeds its feature;
    every other row gets the table itself, as serving will.
    """
    table = stat(train)
    ufold = np.random.default_rng(seed).integers(0, folds, len(data.user_ids))
    oof = np.stack([stat(train & (ufold[data.row_uid] != f)) for f in range(folds)])  # without each fold
    data.item[:, col] = np.where(train, oof[ufold[data.row_uid], data.row_iid], table[data.row_iid])
    real = data.ch_iid >= 0
    iid = np.where(real, data.ch_iid, 0)
    fold = ufold[data.ch_uid][:, None]
    value = np.where(ch_train[:, None], oof[fold, iid], table[iid])
    data.ch_items[..., col] = np.where(real, value, 0.0)
    return table


def fill_item_lift(data: TrainingData, train: np.ndarray, ch_train: np.ndarray, folds: int = 5,
                   seed: int = 0) -> np.ndarray:
    """Set the ``item_conv_lift`` column of ``data`` (in place) from the exposure rows ``train``, out of
    fold for them (:func:`_fill_out_of_fold`); returns the table (per log item index) the bundle ships."""
    n_items = len(data.item_ids)
    return _fill_out_of_fold(data, train, ch_train, LIFT,
                             lambda r: item_conv_lift(data.row_iid[r], data.label[r], n_items), folds, seed)


def fill_item_slope(data: TrainingData, train: np.ndarray, ch_train: np.ndarray, item_cat: np.ndarray,
                    user_columns: np.ndarray | None = None, folds: int = 5, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Set the ``item_log_slope`` column of ``data`` (in place) from the exposure rows ``train``, out of
    fold for them: per item, its category's and its own empirical-Bayes log-multiplier of the price slope
    (:mod:`models.elasticity`). ``item_cat`` is each log item's category index (-1 unknown);
    ``user_columns`` (0/1) masks user features out of the pooled fit. Returns the table and its summary."""
    from .elasticity import item_log_slopes, pooled_logit

    user = data.user if user_columns is None else data.user * user_columns
    table_cols = [c for c in range(data.item.shape[1]) if c not in TABLE]  # not the table's own columns
    x = np.hstack([user, data.item[:, table_cols]])
    d = 1.0 - np.asarray(data.price_ratio, np.float64)
    eta, b0 = pooled_logit(x[train], d[train], data.label[train], seed=seed)
    eta_all = np.zeros(len(d))
    eta_all[train] = eta
    n_items = len(data.item_ids)
    info: dict[str, dict[str, Any]] = {}

    def stat(rows: np.ndarray) -> np.ndarray:
        table, s = item_log_slopes(eta_all[rows], b0, d[rows], data.label[rows], data.row_iid[rows], item_cat,
                                   n_items)
        info.setdefault("summary", s)
        return table

    table = _fill_out_of_fold(data, train, ch_train, SLOPE, stat, folds, seed)
    return table, info["summary"]


assert FEATURE_NAMES == feature_names(FeatureSpec())


# ---------------------------------------------------------------- time splits
def holdout_mask(ts: np.ndarray, cutoff: float) -> np.ndarray:
    """Rows at or after ``cutoff`` (event time) are the holdout."""
    return np.asarray(ts >= cutoff)


def split_rows(ts: np.ndarray, cutoff: float, val_frac: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exposure masks ``(holdout, fit, validation)``: holdout = at or after ``cutoff``; validation (early
    stopping) = the last ``val_frac`` of the training period; fit = the rest."""
    hold = holdout_mask(ts, cutoff)
    tr = ~hold
    val = tr & (ts >= np.quantile(ts[tr], 1.0 - val_frac)) if tr.any() else tr
    return hold, tr & ~val, val


# ---------------------------------------------------------------- logged decisions
def read_prices(path: str | Path) -> list[PriceEvent]:
    """PriceEvents from a JSONL file (.gz ok), e.g. a dump of the prices topic; a bad line raises."""
    with _open(path, "r") as f:
        return [parse_price(line) for line in f if line.strip()]


def apply_decisions(log: EventLog, prices: Iterable[PriceEvent]) -> tuple[EventLog, dict[str, Any]]:
    """``log`` with each view's price replaced by the price the worker decided for it.

    In a clickstream logged while the worker prices, a view carries the listing price; the user
    then sees the decision made for that view (``decision_id(view event_id, item_id)``), and that
    is the price a purchase answers. Views without a decision keep their own price. Returns the new
    log and counts: views, matched, and matched per arm and per policy.
    """
    if log.event_ids is None:
        raise ValueError("the event log has no event ids: decisions cannot be joined to it")
    by_id = {p.decision_id: p for p in prices}
    price = log.price.copy()
    views = np.flatnonzero(log.etype == VIEW)
    stats: dict[str, Any] = {"views": int(len(views)), "matched": 0, "arms": {}, "policies": {}}
    for n in views.tolist():
        pe = by_id.get(decision_id(log.event_ids[n], log.item_ids[int(log.item[n])]))
        if pe is None:
            continue
        price[n] = pe.price
        stats["matched"] += 1
        stats["arms"][pe.arm] = stats["arms"].get(pe.arm, 0) + 1
        stats["policies"][pe.policy] = stats["policies"].get(pe.policy, 0) + 1
    return replace(log, price=price), stats


def decided_views(log: EventLog, prices: Iterable[PriceEvent]) -> np.ndarray:
    """Per event of ``log``: True for a view the worker priced (its decision is among ``prices``)."""
    if log.event_ids is None:
        raise ValueError("the event log has no event ids: decisions cannot be joined to it")
    ids = {p.decision_id for p in prices}
    out = np.zeros(len(log.etype), bool)
    for n in np.flatnonzero(log.etype == VIEW).tolist():
        out[n] = decision_id(log.event_ids[n], log.item_ids[int(log.item[n])]) in ids
    return out


def freeze_user_features(data: TrainingData, rows: np.ndarray) -> tuple[TrainingData, int]:
    """``data`` with the user features of the exposure ``rows`` (a mask) frozen per user at the user's
    first such row (in event time); returns it and the number of users frozen.

    In a worker's log the prices a user was shown change what they view, click and buy, so their
    features after the first priced view depend on their arm: at equal features a treatment user is
    not a control user, and the arm contrast, from which the slope is learnt, reads the difference
    as price response (a collider: both the arm and the user's type set the features). The
    features a user had when the log first priced them were set before any of its prices, so the
    arm is independent of them. The price model then learns from the user as the log found them.
    Valid when the arm was drawn afresh for the log's window (the user's earlier prices, if any,
    did not depend on it). Session and choice rows are left as they are.
    """
    idx = np.arange(len(data.row_uid))
    sel = np.flatnonzero(rows)
    if len(sel) == 0:
        return data, 0
    sel = sel[np.argsort(data.row_ts[sel], kind="stable")]
    uids, first = np.unique(data.row_uid[sel], return_index=True)
    anchor = np.full(int(data.row_uid.max()) + 1, -1)
    anchor[uids] = sel[first]
    idx[sel] = anchor[data.row_uid[sel]]
    return replace(data, user=data.user[idx]), int(len(uids))


def price_variation(data: TrainingData, rows: np.ndarray, ridge: float = 1.0,
                    user_columns: np.ndarray | None = None) -> dict[str, float]:
    """How much of the exposures' price variation is left once the features are accounted for.

    Sensitivity is learnt from prices that vary for reasons other than the user and the item. In a
    randomised history most of the variation is left; in one whose prices a policy chose from the
    same features (promotions, an earlier pricing engine), little is: a ridge regression of
    ``log(price / base)`` on the user and item features says how much (``residual_sd``, and the
    share explained, ``r2``). ``user_columns`` (a 0/1 mask) leaves out user features that measure
    the shown prices themselves (the price model's ``ignore``): they contain the row's own price.
    """
    y = np.log(np.clip(data.price_ratio[rows].astype(np.float64), 1e-6, None))
    user = data.user[rows] if user_columns is None else data.user[rows][:, np.asarray(user_columns) > 0]
    x = np.hstack([user, data.item[rows]]).astype(np.float64)
    if len(y) < 10:
        return {"rows": float(len(y)), "sd_log_price": float("nan"), "residual_sd": float("nan"), "r2": float("nan")}
    mu, sd = x.mean(0), x.std(0)
    z = (x - mu) / np.where(sd > 0, sd, 1.0)
    z = np.hstack([z, np.ones((len(z), 1))])
    coef = np.linalg.solve(z.T @ z + ridge * np.eye(z.shape[1]), z.T @ y)
    resid = y - z @ coef
    total = float(np.var(y))
    return {"rows": float(len(y)), "sd_log_price": float(np.sqrt(total)), "residual_sd": float(np.std(resid)),
            "r2": float(1.0 - np.var(resid) / total) if total > 0 else float("nan")}
