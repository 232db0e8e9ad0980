"""One batch of clickstream records in, table writes, dead letters and price events out.

The whole per-batch logic of the worker, with no Faust import: the agent hands raw records
and a table reader in, and writes back what comes out. A batch goes through these steps:

1. parse and validate every record -> dead letters for the bad ones (nothing dropped), including a
   shown price implausibly far above the item's catalog base price (``BAD_PRICE``);
2. fold each event into its user's record (keyed hash of the user id; replays are no-ops);
3. for trigger events, snapshot the user's features at that event's time; a record marked as
   history (the Kafka header ``pricing-history: 1``, :data:`HISTORY_HEADER`: a warm-up or a replay
   of past traffic whose users have long left) only updates its user's state and is not priced
   (counted as ``skipped.HISTORY``);
4. score all triggers at once: the bundle's first stage (affine, so one item part per catalog
   and one user part per trigger and category bucket) shortlists ``shortlist`` items out of the
   whole catalog, the recommend model ranks the shortlist and picks the top-K items, the price
   model gives each candidate its demand curve (one onnxruntime call each);
5. decide guarded prices (treatment), the item's uniform price through the same guardrails
   (uniform: ``base * scorer.uniform_ratio``, policy ``uniform``) or keep the base price (control)
   -> price events: always
   the viewed item's; a recommended item's only if it differs from the price last sent to this
   user for that item, or that one is ``resend_unchanged_s`` old or more (event time).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .catalog import Catalog, CatalogColumns
from .experiment import assign_arm, bucket
from .features import (
    ITEM_FEATURE_NAMES,
    FeatureSpec,
    LateEvent,
    category_profiles,
    feature_names,
    update,
    user_features,
)
from .pricing import (
    Guardrails,
    ItemBatch,
    Reason,
    conversion,
    decide_batch,
    decide_uniform,
    reason_names,
    shrink_weight,
)
from .privacy import UserHasher
from .schemas import (
    ClickEvent,
    DeadLetter,
    PriceEvent,
    SchemaError,
    dead_letter_bytes,
    decision_id,
    dumps,
    parse_click,
)
from .scoring import Scorer
from .settings import PLACEHOLDER_HASH_KEY, Settings
from .state import UserRecord, decode_record, encode_record, new_record

log = logging.getLogger("pricing.pipeline")

# item-feature columns that depend on the user (its standing with the item's category bucket),
# rows 0-2 of ``category_profiles``; the others depend on the item only
PROFILE_COLUMNS = [ITEM_FEATURE_NAMES.index(n) for n in ("cat_affinity", "cat_click_rate", "cat_cart_rate")]


# a clickstream record with this Kafka header (value b"1") is history: state only, no price
HISTORY_HEADER = "pricing-history"


@dataclass(frozen=True, slots=True)
class RawRecord:
    """A clickstream record as consumed: key, value bytes, its position, and whether it is history."""

    key: bytes | None
    value: bytes
    topic: str
    partition: int
    offset: int
    history: bool = False


def is_history(headers: Any) -> bool:
    """Whether a record's Kafka headers (a sequence of ``(name, value)`` pairs, a mapping, or None)
    mark it as history.

    >>> is_history([("pricing-history", b"1")]), is_history({"pricing-history": b"0"}), is_history(None)
    (True, False, False)
    """
    if not headers:  # the common case, one test
        return False
    pairs = headers.items() if isinstance(headers, dict) else headers
    return any(k == HISTORY_HEADER and v == b"1" for k, v in pairs)


@dataclass(slots=True)
class BatchOutput:
    """What one batch produces; ``records`` maps user key -> (bytes, index of its last record)."""

    records: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    dead_letters: list[tuple[bytes, bytes]] = field(default_factory=list)
    prices: list[tuple[bytes, bytes]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


class UnknownFields:
    """Field names a topic's records carry that this version does not know (``PRICING_UNKNOWN_FIELDS=ignore``).

    Each new name is logged once, so an upstream schema change shows in the log without a line per
    record; at most ``limit`` names are remembered (arbitrary payloads must not grow memory).
    """

    def __init__(self, topic: str, limit: int = 100) -> None:
        self.topic, self.limit, self.seen = topic, limit, set[str]()

    def __call__(self, names: list[str]) -> None:
        """Note the unknown ``names`` of one record."""
        for name in names:
            if name not in self.seen and len(self.seen) < self.limit:
                self.seen.add(name)
                log.warning("%s records carry unknown field %r, ignored (PRICING_UNKNOWN_FIELDS=ignore)",
                            self.topic, name[:80])


@dataclass(slots=True)
class _Trigger:
    ev: ClickEvent
    user_key: str
    record: UserRecord
    features: list[float]
    buckets: list[float]  # a copy of the state's category counts at the event
    replay: bool  # already applied before a crash: re-send its prices, change no state


class Pipeline:
    """Turns batches of raw clickstream records into table writes, dead letters and prices."""

    def __init__(self, settings: Settings, catalog: Catalog, scorer: Callable[[], Scorer],
                 clock: Callable[[], float]) -> None:
        self.s, self.catalog, self.scorer, self.clock = settings, catalog, scorer, clock
        self.spec = FeatureSpec.from_settings(settings)
        if catalog.n_buckets != self.spec.n_buckets:
            raise ValueError(f"catalog hashes categories into {catalog.n_buckets} buckets, the features into "
                             f"{self.spec.n_buckets}")
        self.names = feature_names(self.spec)
        self._lift: tuple[str, CatalogColumns, np.ndarray] | None = None  # scorer version, columns, item table
        # scorer version, columns, the first stage's best items per category bucket (None: no first stage)
        self._stage: tuple[str, CatalogColumns, tuple[np.ndarray, np.ndarray, np.ndarray] | None] | None = None
        self.guardrails = Guardrails.from_settings(settings)
        self._explore_salt = f"{settings.experiment_salt}:explore"
        self._policy = f"dither:{settings.exploration_width:g}"
        self.hasher = UserHasher(settings.user_hash_key.get_secret_value())
        if settings.user_hash_key.get_secret_value() == PLACEHOLDER_HASH_KEY:
            log.warning("PRICING_USER_HASH_KEY is the placeholder default: user ids are hashed with a publicly "
                        "known key, so the pseudonyms can be reversed by guessing ids. Set a secret key in "
                        "production (and keep it: a new key is a new user population)")
        self.triggers = frozenset(settings.triggers)
        self.unknown = UnknownFields(settings.topic_clickstream) if settings.unknown_fields == "ignore" else None

    def process(self, batch: list[RawRecord], load: Callable[[str], bytes | None]) -> BatchOutput:
        """Run one batch; ``load(user_key)`` reads a user's record from the table."""
        out, triggers = BatchOutput(), []
        records: dict[str, UserRecord] = {}
        now = self.clock()
        on_unknown = None if self.unknown is None else lambda names: self._ignore(out, names)
        for i, raw in enumerate(batch):
            # raw bytes -> a validated event, or a dead letter with the reason
            try:
                ev = parse_click(raw.value, now=now, max_bytes=self.s.max_event_bytes,
                                 max_future_skew_s=self.s.max_future_skew_s, on_unknown=on_unknown)
                if raw.key != ev.user_id.encode():  # None too: an unkeyed record lands on any partition
                    raise SchemaError("KEY_MISMATCH", "record key must be the user_id (per-user state is "
                                      "partitioned by it)")
                self._check_price(ev)
            except SchemaError as exc:
                self._dead_letter(out, raw, exc.code, exc.reason, now)
                continue
            # event -> the user's record, updated once per offset (replays are no-ops)
            ukey = self.hasher.hash(ev.user_id)
            rec = records.get(ukey)
            if rec is None:
                blob = load(ukey)
                rec = records[ukey] = new_record(self.spec) if blob is None else decode_record(blob, self.spec)
            replay = raw.offset <= rec.offset
            if not replay:
                item = self.catalog.get(ev.item_id)
                try:
                    update(rec.features, ev, self.spec, base_price=item.base_price if item else None,
                           category=item.category if item else None,
                           level=self.catalog.level(ev.item_id) if item else None)
                except LateEvent as exc:
                    self._dead_letter(out, raw, LateEvent.code, str(exc), now)
                    rec.offset = raw.offset
                    out.records[ukey] = (b"", i)
                    continue
                rec.offset = raw.offset
            else:
                out.counts["replayed"] += 1
            out.records[ukey] = (b"", i)
            out.counts["event." + ev.type] += 1  # by type for the metrics; the sum is the valid events
            if ev.type in self.triggers:
                if raw.history:  # a past event: its user is gone, and a price now would mislead the log
                    out.counts["skipped.HISTORY"] += 1
                    continue
                triggers.append(_Trigger(ev, ukey, rec, user_features(rec.features, self.spec, ev.ts),
                                         list(rec.features.buckets), replay))
        if triggers:
            self._price(triggers, out)
        for ukey, (_, i) in out.records.items():
            out.records[ukey] = (encode_record(records[ukey]), i)
        return out

    def _ignore(self, out: BatchOutput, names: list[str]) -> None:
        out.counts["ignored_fields"] += len(names)
        self.unknown(names)  # type: ignore[misc]

    def _check_price(self, ev: ClickEvent) -> None:
        """A shown price past ``max_price_ratio`` x the catalog base price would dominate the user's
        price-ratio sums for weeks (1e308 is valid JSON): reject it. Items not in the catalog have no base."""
        item = self.catalog.get(ev.item_id)
        if item is not None and ev.price > item.base_price * self.s.max_price_ratio:
            raise SchemaError("BAD_PRICE", f"shown price {ev.price:.6g} is more than {self.s.max_price_ratio:g} x "
                              f"the catalog base price {item.base_price:g} of item {ev.item_id[:40]!r} "
                              "(PRICING_MAX_PRICE_RATIO)")

    def _dead_letter(self, out: BatchOutput, raw: RawRecord, code: str, reason: str, now: float) -> None:
        out.counts[f"dead_letter.{code}"] += 1
        letter = DeadLetter(raw.value, raw.topic, raw.partition, raw.offset, code, reason, now)
        out.dead_letters.append((raw.key or b"", dead_letter_bytes(letter)))

    def _item_table(self, scorer: Scorer, cols: CatalogColumns) -> np.ndarray:
        """The item-table features per catalog row ``[N, 2]``, from the scorer's bundle (cached per version
        and catalog)."""
        if self._lift is None or self._lift[0] != scorer.version or self._lift[1] is not cols:
            self._lift = (scorer.version, cols, scorer.item_table(cols.ids))
        return self._lift[2]

    def _item_x(self, scorer: Scorer, profiles: np.ndarray, k: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Item features (``ITEM_FEATURE_NAMES`` order) of trigger rows ``k`` x catalog rows ``j``
        (broadcasting index arrays); ``profiles [T, 3, n_buckets]`` from ``category_profiles``."""
        cols = self.catalog.columns()
        bk = cols.bucket[j]
        log_base, cost_ratio = np.log(cols.base_price[j]), cols.unit_cost[j] / cols.base_price[j]
        shape = np.broadcast_shapes(np.shape(k), np.shape(j))
        x = np.stack([np.broadcast_to(v, shape) for v in (
            log_base, profiles[k, 0, bk], cost_ratio, profiles[k, 1, bk], profiles[k, 2, bk],
            *np.moveaxis(self._item_table(scorer, cols)[j], -1, 0))], axis=-1)
        assert x.shape[-1] == len(ITEM_FEATURE_NAMES)
        return x.astype(np.float32)

    def _pool(self, scorer: Scorer, cols: CatalogColumns) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Per category bucket, the ``shortlist`` items with the best first-stage item part, all
        buckets in one list: catalog rows, item parts and buckets ``[P]``, ``P <= n_buckets x m``;
        cached per scorer version and catalog. None if the scorer has no first stage."""
        if self._stage is None or self._stage[0] != scorer.version or self._stage[1] is not cols:
            x = self._item_x(scorer, np.zeros((1, 3, self.spec.n_buckets)), np.zeros(1, np.int64),
                             np.arange(len(cols.ids)))
            part = scorer.retrieve(x)
            pool = None
            if part is not None:
                order = np.lexsort((-part, cols.bucket))  # by bucket, best item part first
                starts = np.searchsorted(cols.bucket[order], np.arange(self.spec.n_buckets + 1))
                rows = np.concatenate([order[a:min(b, a + self.s.shortlist)]
                                       for a, b in zip(starts[:-1], starts[1:], strict=True)])
                pool = (rows, part[rows].astype(np.float32), cols.bucket[rows])
            self._stage = (scorer.version, cols, pool)
        return self._stage[2]

    def shortlist(self, scorer: Scorer, profiles: np.ndarray) -> np.ndarray | None:
        """Catalog rows ``[T, shortlist]`` (unordered) with the best first-stage scores per trigger,
        or None when the whole catalog is ranked (no first stage, shortlist 0 or >= the catalog).

        The first stage ``f`` is affine in the item features, and only the three profile columns
        depend on the user, through the item's category bucket: ``f(x_tj) = item_j +
        user[t, bucket_j] - f(0)``, one onnxruntime call over ``T x n_buckets`` rows per batch.
        Within a bucket the user part is shared, so the best ``m`` overall are among each bucket's
        best ``m`` by item part (:meth:`_pool`): a batch ranks ``n_buckets x m`` per trigger,
        however large the catalog.
        """
        cols = self.catalog.columns()
        m = self.s.shortlist
        if m == 0 or m >= len(cols.ids):
            return None
        pool = self._pool(scorer, cols)
        if pool is None:
            return None
        rows, item, bucket = pool
        n_t, n_b = profiles.shape[0], profiles.shape[2]
        x = np.zeros((n_t * n_b + 1, len(ITEM_FEATURE_NAMES)), np.float32)  # the last row: f(0)
        x[:-1, PROFILE_COLUMNS] = profiles.transpose(0, 2, 1).reshape(n_t * n_b, 3)
        f = scorer.retrieve(x)
        assert f is not None  # the same scorer answered for the item part
        user = (f[:-1] - f[-1]).astype(np.float32).reshape(n_t, n_b)
        scores = item[None, :] + user[:, bucket]  # [T, P]
        best = np.argpartition(scores, scores.shape[1] - m, axis=1)[:, -m:]
        return rows[best]

    def _candidates(self, scorer: Scorer, trig: list[_Trigger], users: np.ndarray,
                    profiles: np.ndarray) -> list[list[int]]:
        """Catalog row indices to price per trigger: the event's item, then the top-K recommended
        (the recommend model's best of the first stage's shortlist, or of the whole catalog)."""
        cols = self.catalog.columns()
        cands: list[list[int]] = [[cols.index[t.ev.item_id]] if t.ev.item_id in cols.index else []
                                  for t in trig]
        n_items = len(cols.ids)
        if self.s.top_k == 0 or n_items == 0:
            return cands
        rows = self.shortlist(scorer, profiles)
        if rows is None:
            rows = np.broadcast_to(np.arange(n_items), (len(trig), n_items))
        items = self._item_x(scorer, profiles, np.arange(len(trig))[:, None], rows)
        ones = np.ones(rows.shape, np.float32)
        probs = scorer.recommend(users, items, ones, ones)
        top = np.take_along_axis(rows, np.argsort(-probs, axis=1)[:, :self.s.top_k + 1], axis=1)
        for c, row in zip(cands, top, strict=True):
            c.extend([int(j) for j in row if int(j) not in c][:self.s.top_k])
        return cands

    def _unchanged(self, t: _Trigger, item_id: str, price: float) -> bool:
        """Whether ``price`` is the one last sent to this user for ``item_id``, less than
        ``resend_unchanged_s`` before this event (a replay re-sends all: its output may be lost)."""
        last = t.record.prices.get(item_id)
        return last is not None and last[0] == price and 0.0 <= t.ev.ts - last[1] < self.s.resend_unchanged_s

    def _price(self, trig: list[_Trigger], out: BatchOutput) -> None:
        scorer = self.scorer()
        for t in trig:
            if self.catalog.get(t.ev.item_id) is None:
                out.counts["skipped.UNKNOWN_ITEM"] += 1  # no guess: the item has no terms
        users = np.asarray([t.features for t in trig], np.float32)
        profiles = category_profiles(np.asarray([t.buckets for t in trig], np.float64), self.spec)
        cands = self._candidates(scorer, trig, users, profiles)
        rows = [(k, j) for k, c in enumerate(cands) for j in c]
        if not rows:
            return
        cols = self.catalog.columns()
        tk, ij = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
        base, cost = cols.base_price[ij], cols.unit_cost[ij]
        item_x = self._item_x(scorer, profiles, tk, ij)
        # the uncertainty guard reads the model's spread from the same call (bundles without one: no guard)
        price_spread = getattr(scorer, "price_spread", None) if self.s.uncertainty_scale > 0 else None
        if price_spread is not None:
            a, b, _, spread = price_spread(users[tk], item_x, np.ones(len(rows), np.float32))
        else:
            (a, b, _), spread = scorer.price(users[tk], item_x, np.ones(len(rows), np.float32)), None
        shrink = shrink_weight(spread.signal_var, spread.noise_var, self.s.uncertainty_scale) \
            if spread is not None else None
        prev = [trig[k].record.prices.get(cols.ids[j]) for k, j in rows]
        dids = [decision_id(trig[k].ev.event_id, cols.ids[j]) for k, j in rows]
        width = self.s.exploration_width
        items = ItemBatch(base, cost, cols.min_price[ij], cols.max_price[ij])
        now_ts = np.array([trig[k].ev.ts for k, _ in rows])
        prev_price = np.array([p[0] if p else math.nan for p in prev])
        prev_ts = np.array([p[1] if p else -math.inf for p in prev])
        arms = [assign_arm(t.user_key, self.s.experiment_salt, self.s.treatment_share, self.s.uniform_share)
                for t in trig]
        row_arm = np.array([arms[k] for k, _ in rows])
        # the uniform price per row: the uniform arm's price, and the cap of PRICING_CAP_AT_UNIFORM
        need_uniform = self.guardrails.cap_at_uniform or shrink is not None or bool(np.any(row_arm == "uniform"))
        uratio = scorer.uniform_ratio([cols.ids[j] for j in ij]) if need_uniform else None
        # each row is decided at its own trigger's event time; with exploration, the draw is seeded by
        # the decision id, so a replayed event is priced the same
        dec = decide_batch(a, b, items, self.guardrails, now_ts=now_ts, prev_price=prev_price, prev_ts=prev_ts,
                           explore_width=width,
                           explore_u=np.array([bucket(d, self._explore_salt) for d in dids]) if width > 0 else None,
                           uniform_ratio=uratio, shrink=shrink)
        uni = decide_uniform(uratio, a, b, items, self.guardrails, now_ts, prev_price, prev_ts) \
            if uratio is not None and np.any(row_arm == "uniform") else None
        flags = np.where(row_arm == "uniform", uni.reasons if uni is not None else 0, dec.reasons)
        base_conv = conversion(a, b, base, base)
        propensity = dec.propensity if dec.propensity is not None else np.ones(len(rows))
        sent: list[int] = []  # rows whose price is sent (the reasons counted are those of sent prices)
        for r, (k, j) in enumerate(rows):
            t, item_id, arm = trig[k], cols.ids[j], arms[k]
            if arm == "treatment":
                price, conv, reasons = float(dec.price[r]), float(dec.expected_conversion[r]), \
                    reason_names(int(dec.reasons[r]))
                drawn = bool(dec.reasons[r] & Reason.EXPLORED)
                prop, policy = float(propensity[r]) if drawn else 1.0, self._policy if drawn else "greedy"
            elif arm == "uniform":  # one learnt price per item, the same for every user: a point mass
                assert uni is not None
                price, conv, reasons = float(uni.price[r]), float(uni.expected_conversion[r]), \
                    reason_names(int(uni.reasons[r]))
                prop, policy = 1.0, "uniform"
            else:  # control shows the base price: the comparison the experiment needs
                price, conv, reasons, prop, policy = float(base[r]), float(base_conv[r]), ("CONTROL",), 1.0, "control"
            if not t.replay and item_id != t.ev.item_id and self._unchanged(t, item_id, price):
                out.counts["unchanged_prices"] += 1  # the consumer holds this very price already
                continue
            sent.append(r)
            ok = math.isfinite(conv)
            event = PriceEvent(dids[r], t.ev.ts, t.ev.user_id, item_id, price,
                               float(base[r]), arm, conv if ok else None,
                               (price - float(cost[r])) * conv if ok else None, scorer.version, reasons,
                               propensity=prop, policy=policy)
            if not t.replay:
                t.record.remember_price(item_id, price, t.ev.ts)
            out.prices.append((t.ev.user_id.encode(), dumps(event)))
            out.counts[f"price.{arm}"] += 1
        idx = np.array(sent, np.int64)
        self._count_reasons((row_arm != "control")[idx], flags[idx], out)

    @staticmethod
    def _count_reasons(treated: np.ndarray, flags: np.ndarray, out: BatchOutput) -> None:
        """``reason.<NAME>`` counts of a batch's decisions in one numpy pass: ``treated`` marks the rows
        priced by a policy (treatment or uniform: their flags count), the others are control (CONTROL)."""
        n = np.bincount(flags[treated])  # flags are small ints (8 bits)
        for f in np.flatnonzero(n).tolist():
            for name in reason_names(f):
                out.counts[f"reason.{name}"] += int(n[f])
        if n_control := int(len(treated) - np.count_nonzero(treated)):
            out.counts["reason.CONTROL"] += n_control
