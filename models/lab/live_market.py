"""The simulated market as a live process: a closed loop through Kafka and the pricing worker.

``python -m models.lab.live_market --train-dir var/demo/train --out var/demo/run`` (``pricing-market``).

Users of :class:`~models.lab.simulator.Market` start sessions and browse: a session lists 48 random
items at the prices this user currently sees (the newest personalized price the pipeline sent
for them, else the base price), picks the ones it views by taste, price level and shown price
(as the history generator does), and sends ``view`` events to the clickstream, keyed by user.
Each view triggers the worker; the user then sees **the price decided for them for that item**,
matched on ``decision_id(event_id, item_id)`` from the prices topic. No price within
``--price-timeout`` means the base price is shown (arm ``none``) and the timeout is counted. The
worker's split decides the arm (``PRICING_TREATMENT_SHARE``, ``PRICING_UNIFORM_SHARE``: control,
uniform and treatment; the demo runs thirds); the market only records the arm each price names. The
user buys or not by the **true** demand at the shown price (one uniform draws the whole funnel,
as in the simulator): click, add_to_cart, and at the end of the session purchase (and sometimes
review) events flow back into the clickstream at the shown price.

**Simulated clock.** The worker folds events into decayed windows (1 h, 24 h, 7 d) by *event
time* and rejects events more than 300 s ahead of wall time. So event time is a simulated
timeline of ``--days`` days that runs ``speed`` times faster than the wall clock
(``speed = days * 86400 / duration``) and is shifted to **end at the projected end of the run**:
``sim(t) = run_end - days*86400 + speed * (t - run_start)``, which stays behind wall time for the
whole run. Session gaps, view gaps and session lengths are the simulator's, in simulated seconds,
so the features the worker computes look like the ones the models were trained on. If the loop
falls behind (slow worker, timeouts), events are sent late with their scheduled event times.

Outputs in ``--out``: ``exposures.jsonl`` (one row per view: user, item, arm, shown and base
price, bought, true buy probability, oracle price, decision_id, event time, ...), ``events.jsonl``
(every ClickEvent sent) and ``meta.json`` (market config, clock, counts), read by
:mod:`streams.tools.evaluate`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
from scipy.special import expit

from streams.kafka_config import aiokafka_config, cli_check_connection, kafka_python_config
from streams.pipeline import HISTORY_HEADER
from streams.schemas import ClickEvent, PriceEvent, SchemaError, decision_id, dumps, parse_price
from streams.settings import Settings, cli_settings
from streams.version import add_version

from .market_api import SimMarket
from .shop_market import ShopMarket
from .shop_session import shop_session
from .simulator import Market, MarketConfig, add_market_args, interest_prob, market_config

_DAY = 86400.0
HISTORY = [(HISTORY_HEADER, b"1")]  # the warm-up's events: state only, not priced
LISTING = 48


@dataclass(frozen=True)
class LoopConfig:
    """Knobs of the closed loop (the market's own knobs live in :class:`MarketConfig`)."""

    days: float = 3.0               # simulated days
    duration_s: float = 240.0       # target wall-clock duration: speed = days * 86400 / duration_s
    users: int | None = None        # the first N users of the market take part (None: all)
    price_timeout_s: float = 2.0    # wall seconds to wait for a price before showing the base price
    max_sessions: int = 400         # sessions in flight at once (backpressure when the worker lags)
    seed: int = 0
    run_id: str = ""
    listing: str = "personalized"   # prices on the listing: the user's newest decided price, or "base"
    max_wall_s: float | None = None  # start no session after this many wall seconds (None: 1.5 x duration + 60)
    warm_days: float = 0.0          # simulated history replayed first, so the worker starts with user state

    @property
    def speed(self) -> float:
        """Simulated seconds per wall second."""
        return self.days * _DAY / self.duration_s


class SimClock:
    """Simulated event time running ``speed`` x wall time, ending at the projected end of the run.

    >>> c = SimClock(wall_start=1000.0, days=1.0, speed=864.0)   # 1 day in 100 s
    >>> c.sim(1000.0), c.sim(1100.0)
    (-85300.0, 1100.0)
    >>> c.wall(c.sim(1050.0))
    1050.0
    """

    def __init__(self, wall_start: float, days: float, speed: float) -> None:
        if speed < 1.0:
            raise ValueError(f"speed must be >= 1 (event time may not run ahead of wall time), got {speed}")
        self.wall_start, self.speed = wall_start, speed
        self.sim_end = wall_start + days * _DAY / speed
        self.sim_start = self.sim_end - days * _DAY

    def sim(self, wall: float) -> float:
        """Event time at wall time ``wall``."""
        return self.sim_start + self.speed * (wall - self.wall_start)

    def wall(self, sim: float) -> float:
        """Wall time at which event time reaches ``sim``."""
        return self.wall_start + (sim - self.sim_start) / self.speed

    async def sleep_until(self, sim: float) -> None:
        """Wait until event time reaches ``sim`` (returns at once when it already has)."""
        delay = self.wall(sim) - time.time()
        if delay > 0:
            await asyncio.sleep(delay)


def session_schedule(market: SimMarket, users: np.ndarray, days: float,
                     rng: np.random.Generator) -> list[tuple[float, int]]:
    """``(start offset in simulated seconds, user index)`` of every session, sorted by start.

    The simulator's rule: a Poisson number of sessions per user at its session rate, starts
    uniform over the period and spread so a user's consecutive sessions are >= 1 h apart.
    """
    span, gap = days * _DAY, 3600.0
    n = np.minimum(rng.poisson(market.session_rate[users] * days), int(span / (2 * gap)))
    out: list[tuple[float, int]] = []
    for u, k in zip(users, n, strict=True):
        starts = np.sort(rng.uniform(0, 1, k) * (span - k * gap)) + gap * np.arange(k)
        out.extend((float(s), int(u)) for s in starts)
    out.sort()
    return out


@dataclass
class Counts:
    """What the loop did, for the progress lines and ``meta.json``."""

    sessions: int = 0
    sessions_skipped: int = 0       # not started: the run hit its wall-clock cap
    views: int = 0
    events: int = 0
    purchases: int = 0
    price_timeouts: int = 0
    delivery_failures: int = 0
    first_error: str | None = None
    latency_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Counts plus price latency percentiles (ms)."""
        lat = np.asarray(self.latency_ms) if self.latency_ms else np.zeros(1)
        d = {k: v for k, v in asdict(self).items() if k != "latency_ms"}
        d["price_latency_ms"] = {q: round(float(np.percentile(lat, p)), 1)
                                 for q, p in (("p50", 50), ("p95", 95), ("p99", 99))}
        return d


class LiveMarket:
    """One closed-loop run: schedules sessions, sends events, matches prices, logs exposures."""

    def __init__(self, market: SimMarket, s: Settings, cfg: LoopConfig, out: Path) -> None:
        self.m, self.s, self.cfg, self.out = market, s, cfg, out
        self.run_id = cfg.run_id or uuid.uuid4().hex[:8]
        self.counts = Counts()
        self.known: dict[tuple[str, str], float] = {}            # (user, item) -> newest price sent
        self.waiting: dict[str, asyncio.Future[PriceEvent]] = {}  # decision_id -> the view awaiting it
        self.item_index = {i: k for k, i in enumerate(market.item_ids)}
        self.producer: Any = None
        self._exposures: IO[bytes] | None = None
        self._events: IO[bytes] | None = None

    # ------------------------------------------------------------ Kafka side
    async def _send(self, ev: ClickEvent) -> None:
        """One event to the clickstream, keyed by user; failures are counted, not raised."""
        fut = await self.producer.send(self.s.topic_clickstream, dumps(ev), key=ev.user_id.encode())
        fut.add_done_callback(self._delivered)
        assert self._events is not None
        self._events.write(dumps(ev) + b"\n")
        self.counts.events += 1

    def _delivered(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self.counts.delivery_failures += 1
            self.counts.first_error = self.counts.first_error or repr(fut.exception())

    async def _follow_prices(self, consumer: Any) -> None:
        """Prices topic -> newest price per (user, item) and the views waiting for a decision."""
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                for msg in msgs:
                    try:
                        pe = parse_price(msg.value)
                    except SchemaError:
                        continue
                    self.known[(pe.user_id, pe.item_id)] = pe.price
                    fut = self.waiting.pop(pe.decision_id, None)
                    if fut is not None and not fut.done():
                        fut.set_result(pe)

    async def _price_for(self, ev: ClickEvent) -> tuple[PriceEvent | None, float]:
        """Send a view and wait for its own decision; ``(price event or None, latency ms)``."""
        did = decision_id(ev.event_id, ev.item_id)
        fut: asyncio.Future[PriceEvent] = asyncio.get_running_loop().create_future()
        self.waiting[did] = fut
        t0 = time.monotonic()
        await self._send(ev)
        try:
            pe: PriceEvent | None = await asyncio.wait_for(fut, self.cfg.price_timeout_s)
        except TimeoutError:
            pe = None
            self.waiting.pop(did, None)
        return pe, 1000.0 * (time.monotonic() - t0)

    # ------------------------------------------------------------ one session
    def _listing(self, u: int, rng: np.random.Generator, n_view: int) -> list[int]:
        """Items this user views: the best ``n_view`` of a random listing at the prices they see."""
        m = self.m
        cand = rng.integers(0, m.cfg.n_items, LISTING)
        shown = np.array([self._listed(m.user_ids[u], int(i)) for i in cand])
        score = m.pick_score(np.full(LISTING, u), cand, shown / m.base[cand]) + rng.gumbel(size=LISTING)
        picked: list[int] = []
        for j in np.argsort(-score):
            if int(cand[j]) not in picked:
                picked.append(int(cand[j]))
            if len(picked) == n_view:
                break
        return picked

    def _listed(self, uid: str, i: int) -> float:
        """The price this user sees for item ``i`` on a listing (before viewing it)."""
        base = float(self.m.base[i])
        return base if self.cfg.listing == "base" else self.known.get((uid, self.m.item_ids[i]), base)

    async def session(self, k: int, u: int, start: float, clock: SimClock) -> None:
        """One browsing session of user ``u``: views priced live, the funnel by the true demand."""
        if isinstance(self.m, ShopMarket):  # the second generator's users behave as its history does
            await shop_session(self, k, u, start, clock)
            return
        m, rng = self.m, np.random.default_rng([self.cfg.seed, k])
        assert isinstance(m, Market)
        uid, sid = m.user_ids[u], f"{self.run_id}-s{k}"
        n_view = int(min(1 + rng.poisson(max(m.view_rate[u] - 1, 0)), m.cfg.max_views))
        t, rows, bought = start, [], []
        for j, i in enumerate(self._listing(u, rng, n_view)):
            t += 20.0 + rng.exponential(40.0)
            await clock.sleep_until(t)
            view, pe, ms, price = await self.priced_view(sid, uid, j, i, t)
            p_buy = float(m.buy_prob(np.array([u]), np.array([i]), np.array([price]))[0])
            draw = rng.random()
            buy, interest = draw < p_buy, draw < float(interest_prob(np.array(p_buy)))
            # the rest of the funnel at the price shown: click 3-8 s, cart 9-19 s after the view
            if buy or interest or rng.random() < expit(m.click_logit[u]):
                tc = t + rng.uniform(3, 8)
                await clock.sleep_until(tc)
                await self._send(replace(view, event_id=f"{sid}-c{j}", ts=tc, type="click", price=price))
            if buy or (interest and rng.random() < 0.7):
                ta = t + rng.uniform(9, 19)
                await clock.sleep_until(ta)
                await self._send(replace(view, event_id=f"{sid}-a{j}", ts=ta, type="add_to_cart", price=price))
            rows.append(self._exposure(u, i, view, pe, price, p_buy, bool(buy), ms))
            if buy:
                bought.append(len(rows) - 1)
        for n, r in enumerate(bought):  # purchases at the end of the session, as in the history
            row, ts = rows[r], t + 30.0 + 10.0 * (n + 1)
            await clock.sleep_until(ts)
            await self._send(ClickEvent(f"{sid}-p{n}", ts, uid, sid, "purchase", row["item_id"], row["price"]))
            row["purchase_ts"] = ts
            self.counts.purchases += 1
            if rng.random() < 0.3:
                stars = float(np.clip(np.round(3.5 + 2 * m.quality[self.item_index[row["item_id"]]]
                                               + rng.normal(0, 0.7)), 1, 5))
                await self._send(ClickEvent(f"{sid}-r{n}", ts + 5.0, uid, sid, "review", row["item_id"],
                                            row["price"], rating=stars))
        assert self._exposures is not None
        for row in rows:
            self._exposures.write(orjson.dumps(row) + b"\n")
        self.counts.sessions += 1

    async def priced_view(self, sid: str, uid: str, j: int, i: int,
                          t: float) -> tuple[ClickEvent, PriceEvent | None, float, float]:
        """The ``j``-th view of session ``sid`` (item index ``i``, at ``t``) sent and priced live, counted;
        returns the view, its price event (None on a timeout), the latency and the price shown (base
        when the price timed out)."""
        view = ClickEvent(f"{sid}-v{j}", t, uid, sid, "view", self.m.item_ids[i], round(self._listed(uid, i), 2))
        pe, ms = await self._price_for(view)
        self.counts.views += 1
        if pe is None:
            self.counts.price_timeouts += 1
        else:
            self.counts.latency_ms.append(ms)
        return view, pe, ms, (pe.price if pe is not None else float(self.m.base[i]))

    def _exposure(self, u: int, i: int, view: ClickEvent, pe: PriceEvent | None, price: float,
                  p_buy: float, buy: bool, ms: float) -> dict[str, Any]:
        """One exposure-log row (``purchase_ts`` is filled in when the purchase is sent)."""
        m = self.m
        return {"user_id": view.user_id, "item_id": view.item_id, "user_index": u, "item_index": i,
                "arm": pe.arm if pe else "none", "price": price, "base_price": float(m.base[i]),
                "unit_cost": float(m.cost[i]), "bought": buy, "buy_prob": p_buy,
                "oracle_price": float(m.oracle_price(np.array([u]), np.array([i]))[0]),
                "decision_id": decision_id(view.event_id, view.item_id), "event_id": view.event_id,
                "session_id": view.session_id, "ts": view.ts, "purchase_ts": None,
                "expected_conversion": pe.expected_conversion if pe else None,
                "model_version": pe.model_version if pe else None, "latency_ms": round(ms, 1)}

    # ------------------------------------------------------------ the run
    async def run(self, *, wait_ready_s: float = 180.0, progress_s: float = 10.0) -> dict[str, Any]:
        """Wait for the worker, run every session, write ``meta.json``; returns the meta."""
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

        self.out.mkdir(parents=True, exist_ok=True)
        self.producer = AIOKafkaProducer(linger_ms=2, acks=1, **aiokafka_config(self.s))
        consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **aiokafka_config(self.s))
        await self.producer.start()
        await consumer.start()
        follower: asyncio.Task[None] | None = None
        meta: dict[str, Any] = {}
        try:
            parts = await self._partitions(consumer, self.s.topic_prices)
            tps = [TopicPartition(self.s.topic_prices, p) for p in parts]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:
                await consumer.position(tp)
            follower = asyncio.create_task(self._follow_prices(consumer))
            with (self.out / "exposures.jsonl").open("wb") as xf, (self.out / "events.jsonl").open("wb") as ef:
                self._exposures, self._events = xf, ef
                ready_s = await self._wait_ready(wait_ready_s)
                warm = await self._warm_up(progress_s) if self.cfg.warm_days > 0 else {}
                meta = await self._run_sessions(progress_s)
                meta["worker_ready_s"], meta["warm_up"] = ready_s, warm
        finally:
            if follower is not None:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
            await self.producer.stop()
            await consumer.stop()
            meta.update(self.counts.summary())
            (self.out / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        return meta

    async def _partitions(self, consumer: Any, topic: str, timeout: float = 60.0) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # partitions_for_topic reads the metadata cache: ask for this topic first (as the worker does)
            consumer._client.set_topics([topic])
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic)
            if parts:
                return sorted(parts)
            await asyncio.sleep(1.0)
        raise RuntimeError(f"topic {topic!r} does not exist on {self.s.kafka_bootstrap}")

    async def _wait_ready(self, timeout: float) -> float:
        """Send a probe view (user ``probe-<run>``) until a price comes back: the worker is live."""
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < timeout:
            probe = ClickEvent(f"probe-{self.run_id}-{n}", time.time(), f"probe-{self.run_id}", "probe", "view",
                               self.m.item_ids[0], float(self.m.base[0]))
            pe, _ = await self._price_for(probe)
            self.counts.events -= 1  # probes are not part of the run
            if pe is not None:
                return time.monotonic() - t0
            n += 1
        raise RuntimeError(f"no price from the worker within {timeout:.0f} s: is it running on these topics?")

    def _participants(self) -> int:
        """How many users take part: the first ``cfg.users`` of the market, or all of them."""
        n = self.m.cfg.n_users
        return n if self.cfg.users is None else min(self.cfg.users, n)

    async def _warm_up(self, progress_s: float) -> dict[str, Any]:
        """Replay ``warm_days`` of simulated history, then wait until the worker has consumed it.

        A worker that has been running sees users with a history; a worker started for the demo
        would otherwise price every user as a newcomer (empty features), which is not what the
        models were trained on. The history of the participating users is shifted to end before
        the loop's simulated clock starts, sent as fast as the broker takes it, and the loop starts
        once the worker's consumer group has committed every clickstream partition to its end.
        These events are not exposures: they are not logged and not evaluated, and they carry the
        worker's history header, so it updates the users' state without pricing them.
        """
        t0 = time.time()
        # end one minute before the earliest possible start of the loop's clock
        events, total = self.warm_events(time.time() - self.cfg.days * _DAY)
        sent, last = 0, time.monotonic()
        for ev in events:
            # marked as history: the worker folds it into the user's state without pricing it
            await self.producer.send(self.s.topic_clickstream, dumps(ev), key=ev.user_id.encode(), headers=HISTORY)
            sent += 1
            if time.monotonic() - last > progress_s:
                print(f"[market] warm-up: sent {sent:,}/{total:,} history events", flush=True)
                last = time.monotonic()
        await self.producer.flush()
        print(f"[market] warm-up: {sent:,} events of {self.cfg.warm_days:g} simulated days sent in "
              f"{time.time() - t0:.0f} s; waiting for the worker to consume them", flush=True)
        lag = await self._wait_consumed(await asyncio.to_thread(self._clickstream_end), progress_s)
        print(f"[market] warm-up done in {time.time() - t0:.0f} s (lag {lag})", flush=True)
        return {"events": sent, "days": self.cfg.warm_days, "wall_s": round(time.time() - t0, 1)}

    def warm_events(self, loop_start: float) -> tuple[Iterator[ClickEvent], int]:
        """``warm_days`` of simulated history of the participating users, shifted to end one minute
        before event time ``loop_start``, with run-scoped ids; ``(events, how many)``."""
        log = self.m.simulate(days=self.cfg.warm_days)
        mine = log.user < self._participants()
        keep = np.flatnonzero(mine)
        shift = (loop_start - 60.0) - float(log.ts[keep[-1]]) if len(keep) else 0.0

        def events() -> Iterator[ClickEvent]:
            for n, ev in enumerate(log.events()):
                if mine[n]:
                    yield replace(ev, event_id=f"{self.run_id}-w{n}", session_id=f"{self.run_id}-w{ev.session_id}",
                                  ts=ev.ts + shift)
        return events(), int(len(keep))

    def session_plan(self) -> list[tuple[float, int]]:
        """The run's sessions, ``(start offset in simulated seconds, user index)``, by start."""
        users = np.arange(self._participants())
        return session_schedule(self.m, users, self.cfg.days, np.random.default_rng([self.cfg.seed, 1 << 20]))

    def _clickstream_end(self) -> dict[int, int]:
        """End offset of every clickstream partition (kafka-python, in a thread)."""
        from kafka import KafkaConsumer, TopicPartition

        c = KafkaConsumer(enable_auto_commit=False, **kafka_python_config(self.s))
        try:
            tps = [TopicPartition(self.s.topic_clickstream, p)
                   for p in sorted(c.partitions_for_topic(self.s.topic_clickstream) or ())]
            return {tp.partition: off for tp, off in c.end_offsets(tps).items()}
        finally:
            c.close()

    async def _wait_consumed(self, end: dict[int, int], progress_s: float, timeout: float = 1800.0) -> int:
        """Wait until the worker's group (``PRICING_APP_ID``) has committed ``end`` on the clickstream."""
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(client_id="market-warm-up", **kafka_python_config(self.s))
        deadline, last, lag = time.monotonic() + timeout, 0.0, -1
        try:
            while time.monotonic() < deadline:
                got = (await asyncio.to_thread(admin.list_group_offsets, self.s.app_id)).get(self.s.app_id, {})
                done = {tp.partition: om.offset for tp, om in got.items() if tp.topic == self.s.topic_clickstream}
                lag = sum(max(0, off - done.get(p, 0)) for p, off in end.items())
                if lag == 0:
                    return 0
                if time.monotonic() - last > progress_s:
                    print(f"[market] warm-up: worker lag {lag:,} events", flush=True)
                    last = time.monotonic()
                await asyncio.sleep(1.0)
        finally:
            admin.close()
        raise RuntimeError(f"the worker did not consume the warm-up history within {timeout:.0f} s (lag {lag})")

    async def _run_sessions(self, progress_s: float) -> dict[str, Any]:
        """Start every scheduled session at its time (one user's sessions run one after another)."""
        m, cfg = self.m, self.cfg
        plan = self.session_plan()
        clock = SimClock(time.time(), cfg.days, cfg.speed)
        gate = asyncio.Semaphore(cfg.max_sessions)
        last: dict[int, asyncio.Task[None]] = {}
        tasks: list[asyncio.Task[None]] = []

        async def one(k: int, u: int, start: float, before: asyncio.Task[None] | None) -> None:
            async with gate:
                if before is not None:
                    await before
                await self.session(k, u, clock.sim_start + start, clock)

        reporter = asyncio.create_task(self._progress(clock, len(plan), progress_s))
        cap = cfg.max_wall_s if cfg.max_wall_s is not None else 1.5 * cfg.duration_s + 60.0
        try:
            for k, (start, u) in enumerate(plan):
                await clock.sleep_until(clock.sim_start + start)
                if time.time() - clock.wall_start > cap:  # far behind schedule: keep the run bounded
                    self.counts.sessions_skipped = len(plan) - k
                    print(f"[market] wall-clock cap {cap:.0f} s reached: {len(plan) - k:,} sessions not started",
                          flush=True)
                    break
                last[u] = asyncio.create_task(one(k, u, start, last.get(u)))
                tasks.append(last[u])
            await asyncio.gather(*tasks)
        finally:
            reporter.cancel()
        await self.producer.flush()
        wall = time.time() - clock.wall_start
        return {"run_id": self.run_id, "market": asdict(m.cfg), "loop": asdict(cfg), "speed": cfg.speed,
                "sim_start": clock.sim_start, "sim_end": clock.sim_end, "wall_start": clock.wall_start,
                "wall_s": round(wall, 1), "users": self._participants(), "sessions_planned": len(plan),
                "events_per_s": round(self.counts.events / max(wall, 1e-9), 1),
                "topics": {"clickstream": self.s.topic_clickstream, "prices": self.s.topic_prices}}

    async def _progress(self, clock: SimClock, planned: int, every: float) -> None:
        t0, e0 = time.time(), 0
        while True:
            await asyncio.sleep(every)
            c, now = self.counts, time.time()
            day = (clock.sim(now) - clock.sim_start) / _DAY
            print(f"[market] sim day {day:5.2f}  sessions {c.sessions:,}/{planned:,}  views {c.views:,}  "
                  f"events {c.events:,} ({(c.events - e0) / (now - t0):,.0f}/s)  "
                  f"timeouts {c.price_timeouts:,}  in-flight prices {len(self.waiting)}", flush=True)
            t0, e0 = now, c.events


def market_from_args(args: argparse.Namespace) -> Market:
    """The market of the training run (``--train-dir``), else ``--small`` / defaults, with overrides."""
    cfg = MarketConfig.small() if args.small else MarketConfig()
    if args.train_dir is not None:
        summary = json.loads((args.train_dir / "training_summary.json").read_text())
        known = summary.get("knobs", {}).get("market")
        if not known:
            raise SystemExit(f"{args.train_dir}: training was not on a simulated market (no knobs.market)")
        cfg = MarketConfig(**known)
    return Market(market_config(args, base=cfg))


def parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m models.lab.live_market``."""
    p = argparse.ArgumentParser(prog="pricing-market", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                epilog="Kafka and topics: PRICING_* environment variables (see pricing-settings).")
    add_version(p)
    d = LoopConfig()
    p.add_argument("--train-dir", type=Path, help="training run whose simulated market to bring to life")
    add_market_args(p, knobs=("heterogeneity",))  # --small: the tiny market (without --train-dir)
    p.add_argument("--out", type=Path, default=Path("var/market"), help="exposure log, events and meta")
    p.add_argument("--days", type=float, default=d.days, help="simulated days")
    p.add_argument("--duration", type=float, default=d.duration_s, help="target wall seconds for --days")
    p.add_argument("--users", type=int, default=None, help="first N users of the market take part")
    p.add_argument("--price-timeout", type=float, default=d.price_timeout_s, help="wall seconds")
    p.add_argument("--max-sessions", type=int, default=d.max_sessions, help="sessions in flight")
    p.add_argument("--seed", type=int, default=d.seed, help="the loop's randomness (the market's is its own)")
    p.add_argument("--listing", choices=["personalized", "base"], default=d.listing,
                   help="prices on the listings users pick from: their newest decided price, or the base price")
    p.add_argument("--max-wall", type=float, default=None,
                   help="start no session after this many wall seconds (default 1.5 x duration + 60)")
    p.add_argument("--warm-days", type=float, default=d.warm_days,
                   help="first replay this many days of simulated history, so the worker starts with user state")
    p.add_argument("--run-id", default="", help="prefix of event and session ids (default: random)")
    p.add_argument("--publish-catalog", action="store_true", help="send the market's catalog first")
    p.add_argument("--wait-ready", type=float, default=180.0, help="seconds to wait for the worker")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m models.lab.live_market`` (``pricing-market``)."""
    args = parser().parse_args(argv)
    s = cli_settings()
    cli_check_connection(s, "pricing-market")
    market = market_from_args(args)
    cfg = LoopConfig(args.days, args.duration, args.users, args.price_timeout, args.max_sessions, args.seed,
                     args.run_id, args.listing, args.max_wall, args.warm_days)
    if args.publish_catalog:
        publish_catalog(market, s)
    live = LiveMarket(market, s, cfg, args.out)
    print(f"[market] {cfg.days:g} simulated days in ~{cfg.duration_s:.0f} s (x{cfg.speed:,.0f}); "
          f"{cfg.users or market.cfg.n_users:,} users; run {live.run_id}", flush=True)
    meta = asyncio.run(_until_signal(live.run(wait_ready_s=args.wait_ready)))
    print(json.dumps({k: meta[k] for k in ("wall_s", "sessions", "views", "events", "purchases", "price_timeouts",
                                           "delivery_failures", "events_per_s", "price_latency_ms") if k in meta}))
    return 1 if meta.get("delivery_failures") else 0


async def _until_signal(run: Any) -> dict[str, Any]:
    """Run ``run``; SIGTERM/SIGINT cancel it, so its cleanup still writes ``meta.json``."""
    import signal

    task = asyncio.ensure_future(run)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task  # type: ignore[no-any-return]
    except asyncio.CancelledError:
        print("[market] interrupted: partial run written", flush=True)
        return {"interrupted": True}


def publish_catalog(market: SimMarket, s: Settings) -> None:
    """The market's catalog to the (compacted) catalog topic, keyed by item id."""
    from kafka import KafkaProducer

    from streams.tools.source import publish

    producer = KafkaProducer(**kafka_python_config(s))
    try:
        result = publish(producer, s.topic_catalog, [(c.item_id.encode(), dumps(c)) for c in market.catalog()])
    finally:
        producer.close()
    if result.failed:
        raise SystemExit(f"catalog: {result.failed} records not delivered ({result.first_error})")


if __name__ == "__main__":
    raise SystemExit(main())
