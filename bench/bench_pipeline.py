"""End-to-end benchmark of one pricing worker against the local broker, beside a passthrough baseline.

    .venv/bin/python bench/bench_pipeline.py                  # everything (~6-10 min)
    .venv/bin/python bench/bench_pipeline.py --skip-kafka     # only the in-process scoring cost
    .venv/bin/python bench/bench_pipeline.py --configs 64:0.01 --events 20000 --latency-s 15

Per batch configuration (``batch_size:batch_within_s``), on fresh topics of its own:

1. pre-load ``--events`` valid clickstream events (``--users`` users, realistic type mix) into a
   4-partition clickstream topic;
2. **passthrough**: an aiokafka consumer -> aiokafka producer (acks=all, linger 1 ms, the worker's
   producer settings) copies that topic, no processing; events/s from the first record consumed to
   the last one acked;
3. **worker, max throughput**: a ``python -m streams.app`` subprocess (real exported bundle,
   rocksdb store) on the same pre-loaded topic; events/s = events / (last price - first price),
   both the broker's LogAppendTime of the price records;
4. **worker, latency**: then the same (now idle) worker gets ``--rate`` events/s for
   ``--warmup-s`` + ``--latency-s`` seconds; each event's ``ts`` is its send time and every
   PriceEvent carries its trigger's ``ts``, so latency = price append time (LogAppendTime) - send
   time, for every price of events sent after the warm-up (also to the consumer's receipt).

Plus the **scoring cost**: ``Pipeline.process`` on in-memory batches (no Kafka, no Faust) with the
ONNX scorer, the deterministic scorer and no triggers, in us/event per batch size.

The machine may be shared: compare the ratios, not the absolute rates. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import io
import os
import pstats
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    CACHE,
    ROOT,
    EventMaker,
    bench_env,
    create_topics,
    delete_topics,
    ensure_bundle,
    load_str,
    make_catalog,
    percentile,
    proc_cpu_s,
    records,
    settings_from,
    table,
)

from streams.catalog import Catalog  # noqa: E402
from streams.pipeline import Pipeline, RawRecord  # noqa: E402
from streams.schemas import CatalogItem, decision_id, dumps  # noqa: E402
from streams.settings import Settings, load_settings  # noqa: E402

BATCH_SIZES = (1, 16, 64, 256)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ scoring cost (no Kafka)
def _pipeline(model_dir: Path, catalog: Catalog, scorer: str, **overrides: object) -> Pipeline:
    s = load_settings({}, model_dir=model_dir, user_hash_key="bench-secret", **overrides)
    if scorer == "onnx":
        from streams.features import FeatureSpec, feature_names
        from streams.scoring import BundleWatcher

        fixed = BundleWatcher(model_dir, 3600.0, feature_names(FeatureSpec.from_settings(s)),
                              threads=s.onnx_threads).scorer
    else:
        from streams.scoring import DeterministicScorer

        fixed = DeterministicScorer()
    return Pipeline(s, catalog, lambda: fixed, time.time)


def _raw(evs: list, first_offset: int) -> list[RawRecord]:
    return [RawRecord(k, v, "bench", 0, first_offset + i) for i, (k, v) in enumerate(records(evs))]


def _run(p: Pipeline, raws: list[RawRecord], size: int, table_: dict[str, bytes]) -> float:
    """Seconds to push ``raws`` through ``p`` in batches of ``size`` (table writes included)."""
    t0 = time.perf_counter()
    for i in range(0, len(raws), size):
        out = p.process(raws[i:i + size], table_.get)
        for k, (blob, _) in out.records.items():
            table_[k] = blob
    return time.perf_counter() - t0


def scoring_cost(args: argparse.Namespace, model_dir: Path, items: list[CatalogItem]) -> str:
    catalog = Catalog()
    for c in items:
        catalog.put(c)
    maker = EventMaker(items, args.scoring_users, seed=7, prefix="sc")
    t = time.time()
    warm = _raw(maker.events(np.linspace(t - 7200, t - 3601, args.scoring_events * 2)), 0)
    timed_evs = maker.events(np.linspace(t - 3600, t - 1, args.scoring_events))
    share = sum(e.type in ("view", "click", "add_to_cart") for e in timed_evs) / len(timed_evs)
    timed = _raw(timed_evs, len(warm))
    # users with history, like a worker in steady state: fold a warm-up history in first
    base_table: dict[str, bytes] = {}
    _run(_pipeline(model_dir, catalog, "det", triggers=()), warm, 256, base_table)
    k, m, th = args.top_k, args.shortlist, args.onnx_threads
    variants: list[tuple[str, Callable[[], Pipeline]]] = [
        (f"onnx top_k={k} shortlist={m}", lambda: _pipeline(model_dir, catalog, "onnx", top_k=k, shortlist=m,
                                                            onnx_threads=th)),
        (f"onnx top_k={k} whole catalog", lambda: _pipeline(model_dir, catalog, "onnx", top_k=k, shortlist=0,
                                                            onnx_threads=th)),
        ("onnx top_k=0", lambda: _pipeline(model_dir, catalog, "onnx", top_k=0, onnx_threads=th)),
        (f"deterministic top_k={k} shortlist={m}", lambda: _pipeline(model_dir, catalog, "det", top_k=k,
                                                                     shortlist=m)),
        ("no trigger (parse+features)", lambda: _pipeline(model_dir, catalog, "det", triggers=())),
    ]
    rows = []
    for name, make in variants:
        p = make()
        _run(p, timed[:256], 64, dict(base_table))  # warm the scorer and caches
        row: list[object] = [name]
        for size in BATCH_SIZES:
            n = len(timed) if size >= 16 else min(len(timed), 1024)
            row.append(_run(p, timed[:n], size, dict(base_table)) / n * 1e6)
        rows.append(row)
        log(f"scoring cost {name}: " + ", ".join(f"{v:.0f}" for v in row[1:]))
    onnx, whole, none = rows[0], rows[1], rows[-1]
    for row, what in ((onnx, f"shortlist={m}"), (whole, "whole catalog")):
        rows.append([f"= scoring share, {what} (onnx - no trigger)",
                     *[float(a) - float(b) for a, b in zip(row[1:], none[1:], strict=True)]])
    for row, what in ((onnx, f"shortlist={m}"), (whole, "whole catalog")):
        rows.append([f"implied events/s, one core, {what}", *[1e6 / float(v) for v in row[1:]]])
    rows.append([f"whole catalog / shortlist={m} (speed-up)",
                 *[float(a) / float(b) for a, b in zip(whole[1:], onnx[1:], strict=True)]])
    out = table(["us/event at batch size", *map(str, BATCH_SIZES)], rows,
                f"Scoring cost: Pipeline.process in memory, {len(items)} catalog items, {args.scoring_users} users, "
                f"{len(timed)} events ({share:.0%} triggers), batch 1 over the first 1024")
    out += "\n\n" + agreement(args, model_dir, catalog, timed, base_table)
    if args.profile:
        p = variants[0][1]()
        prof = cProfile.Profile()
        tbl = dict(base_table)
        prof.enable()
        _run(p, timed, args.profile_batch, tbl)
        prof.disable()
        buf = io.StringIO()
        st = pstats.Stats(prof, stream=buf)
        st.sort_stats("tottime").print_stats(25)
        st.sort_stats("cumulative").print_stats(30)
        out += f"\n\ncProfile of Pipeline.process, {variants[0][0]}, batch {args.profile_batch}:\n" + buf.getvalue()
    return out


def _recommended(out_prices: list[tuple[bytes, bytes]]) -> dict[tuple[str, float], list[str]]:
    """(user, event ts) -> item ids priced for it, in order (the event's own item first)."""
    got: dict[tuple[str, float], list[str]] = {}
    for _, v in out_prices:
        e = orjson.loads(v)
        got.setdefault((e["user_id"], e["ts"]), []).append(e["item_id"])
    return got


def agreement(args: argparse.Namespace, model_dir: Path, catalog: Catalog, timed: list[RawRecord],
              base_table: dict[str, bytes]) -> str:
    """Per shortlist size: how many of the whole-catalog ranking's top_k items the two stages also
    recommend (the viewed item, always priced, left out), over the timed events."""
    def recs(m: int, resend: float = 0.0) -> dict[tuple[str, float], list[str]]:
        p = _pipeline(model_dir, catalog, "onnx", top_k=args.top_k, shortlist=m, onnx_threads=args.onnx_threads,
                      resend_unchanged_s=resend)
        prices: list[tuple[bytes, bytes]] = []
        tbl = dict(base_table)
        for i in range(0, len(timed), 64):
            o = p.process(timed[i:i + 64], tbl.get)
            prices += o.prices
            for k, (blob, _) in o.records.items():
                tbl[k] = blob
        return _recommended(prices)

    full = recs(0)
    sent = {r: sum(map(len, recs(args.shortlist, r).values())) / len(full) for r in (0.0, 300.0, 3600.0)}
    resend = "; ".join(f"resend_unchanged_s={r:g}: {v:.3f}" for r, v in sent.items())
    rows = []
    for m in sorted({8, 16, 32, args.shortlist, 96}):
        if m >= len(catalog.columns().ids):
            continue
        two = recs(m)
        same = [len(set(full[k][1:]) & set(two[k][1:])) / max(1, len(full[k]) - 1) for k in full]
        first = [full[k][1:2] == two[k][1:2] for k in full]
        rows.append([m, len(full), float(np.mean(same)), float(np.mean(first)),
                     float(np.mean([s == 1.0 for s in same]))])
        log(f"agreement shortlist {m}: {rows[-1][2]:.4f}")
    return table(["shortlist", "triggers", f"top_k={args.top_k} overlap", "same first", "all same"], rows,
                 f"Two stages vs the whole catalog ranked by the recommend model ({len(catalog.columns().ids)} items): "
                 "share of the whole-catalog top_k also recommended (mean per trigger), share with the same "
                 "first recommendation, share with the identical set") + \
        f"\nprices per trigger (shortlist={args.shortlist}, top_k={args.top_k}): {resend}"


# ------------------------------------------------------------------ Kafka helpers
def _clients():
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    return AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


async def produce_all(bootstrap: str, topic: str, recs: list[tuple[bytes, bytes]]) -> None:
    _, AIOKafkaProducer, _ = _clients()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    try:
        for i in range(0, len(recs), 5000):
            futs = [await producer.send(topic, v, key=k) for k, v in recs[i:i + 5000]]
            await asyncio.gather(*futs)
    finally:
        await producer.stop()


async def passthrough(bootstrap: str, src: str, dst: str, n: int, group: str, timeout: float = 300,
                      fanout: tuple[frozenset[str], int] | None = None, linger_ms: int = 1) -> dict:
    """Copy ``n`` records src -> dst, acking each fetched batch before the next (like the worker).

    ``fanout=(triggers, k)``: instead write what the worker writes, with no processing: ``k`` copies
    per trigger event (its prices) plus one record per event (its table write's changelog record).
    """
    AIOKafkaConsumer, AIOKafkaProducer, _ = _clients()
    consumer = AIOKafkaConsumer(src, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                                enable_auto_commit=True)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=linger_ms)
    await consumer.start()
    await producer.start()
    count, t_first = 0, None
    cpu0 = time.process_time()
    deadline = time.monotonic() + timeout
    try:
        while count < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            futs = []
            for msgs in batch.values():
                if msgs and t_first is None:
                    t_first = time.perf_counter()
                for m in msgs:
                    copies = 1
                    if fanout is not None:
                        copies += fanout[1] if orjson.loads(m.value).get("type") in fanout[0] else 0
                    for _ in range(copies):
                        futs.append(await producer.send(dst, m.value, key=m.key))
                    count += 1
            await asyncio.gather(*futs)
        t_end = time.perf_counter()
    finally:
        await producer.stop()
        await consumer.stop()
    wall = t_end - (t_first or t_end)
    return {"events": count, "seconds": wall, "rate": count / wall if wall > 0 else float("nan"),
            "cpu": (time.process_time() - cpu0) / wall if wall > 0 else float("nan")}


async def _end_offsets(consumer, tps) -> int:
    return sum((await consumer.end_offsets(tps)).values())


async def _edge_timestamps(bootstrap: str, topic: str, partitions: int) -> tuple[float, float]:
    """Smallest first-record and largest last-record timestamp over the topic's partitions (s)."""
    AIOKafkaConsumer, _, TopicPartition = _clients()
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await c.start()
    first, last = [], []
    try:
        for p in range(partitions):
            tp = TopicPartition(topic, p)
            c.assign([tp])
            lo, hi = (await c.beginning_offsets([tp]))[tp], (await c.end_offsets([tp]))[tp]
            if hi <= lo:
                continue
            for off, acc in ((lo, first), (hi - 1, last)):
                c.seek(tp, off)
                rec = await asyncio.wait_for(c.getone(), 30)
                acc.append(rec.timestamp / 1000)
    finally:
        await c.stop()
    return min(first), max(last)


VARIANTS = {
    "stock": "python -m streams.app, unchanged",
    "before": "python -m streams.app as before issue 15: PRICING_SHORTLIST=0 (the recommend model ranks the "
              "whole catalog), PRICING_RESEND_UNCHANGED_S=0 (every price sent), PRICING_PRODUCER_LINGER_MS=1",
    "shortlist": "python -m streams.app with the shortlist but PRICING_RESEND_UNCHANGED_S=0 (every price sent)",
    "linger1": "stock with PRICING_PRODUCER_LINGER_MS=1 (the default before issue 15; now 5)",
    "linger5": "stock with PRICING_PRODUCER_LINGER_MS=5 (the default since issue 15)",
    "lz4": "stock with PRICING_PRODUCER_COMPRESSION=lz4 (default none)",
    "null": "Faust worker with Pipeline.process replaced by a stub that writes the same records "
            "(1+top_k copies of the input per trigger, one table write per user): Faust + Kafka cost only",
    "null1": "like null but one record per trigger (as if a trigger's prices travelled in one record)",
    "table": "like null but no prices (one small marker record per batch): Faust consume + table writes",
    "consume": "like null but neither prices nor table writes (one marker per batch): Faust consume only",
    "patched": "stock + candidate speed-ups monkeypatched in (schemas.dumps via orjson's native dataclass "
               "support, cached reason_names, cached assign_arm): same output bytes",
}


MARKER_VARIANTS = ("table", "consume")
# the unpatched worker with other settings
VARIANT_ENV: dict[str, dict[str, object]] = {
    "stock": {}, "before": {"SHORTLIST": 0, "RESEND_UNCHANGED_S": 0, "PRODUCER_LINGER_MS": 1},
    "shortlist": {"RESEND_UNCHANGED_S": 0}, "linger1": {"PRODUCER_LINGER_MS": 1}, "linger5": {"PRODUCER_LINGER_MS": 5},
    "lz4": {"PRODUCER_COMPRESSION": "lz4"}}
SETTINGS_VARIANTS = tuple(VARIANT_ENV)


def _patch(variant: str) -> None:
    """Monkeypatch ``streams`` for a worker variant (measurement only; the source is untouched)."""
    import functools

    import streams.pipeline as pl

    if variant == "patched":
        from streams import pricing

        pl.dumps = orjson.dumps  # type: ignore[assignment]  # orjson serialises slotted dataclasses natively
        pl.reason_names = functools.lru_cache(maxsize=256)(pricing.reason_names)  # type: ignore[assignment]
        pl.assign_arm = functools.lru_cache(maxsize=1 << 16)(pl.assign_arm)  # type: ignore[assignment]
    elif variant in ("null", "null1"):
        def process(self: Pipeline, batch: list[RawRecord], load: Callable[[str], bytes | None]) -> object:
            out, copies = pl.BatchOutput(), 1 + self.s.top_k if variant == "null" else 1
            for i, raw in enumerate(batch):
                if orjson.loads(raw.value)["type"] in self.triggers:
                    out.prices.extend([(raw.key or b"", raw.value)] * copies)
                out.records[(raw.key or b"").decode()] = (raw.value, i)
            return out

        pl.Pipeline.process = process  # type: ignore[assignment,method-assign]
    elif variant in MARKER_VARIANTS:
        def marker(self: Pipeline, batch: list[RawRecord], load: Callable[[str], bytes | None]) -> object:
            out = pl.BatchOutput()
            if variant == "table":
                for i, raw in enumerate(batch):
                    out.records[(raw.key or b"").decode()] = (raw.value, i)
            out.prices.append((b"marker", b"%d" % len(batch)))  # how many events this batch took
            return out

        pl.Pipeline.process = marker  # type: ignore[assignment,method-assign]
    elif variant not in SETTINGS_VARIANTS:
        raise SystemExit(f"unknown worker variant {variant!r}; known: {sorted(VARIANTS)}")


def run_worker_variant(variant: str) -> int:
    """Entry point of a worker subprocess: patch, then run ``streams.app.main``."""
    _patch(variant)
    from streams import app

    return app.main(["--loglevel", "info"])


class Worker:
    """One ``python -m streams.app`` subprocess (or a patched variant) with its own PRICING_* environment."""

    def __init__(self, env: dict[str, str], logfile: Path, profile: Path | None = None, variant: str = "stock") -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("PRICING_")}
        self.log = logfile
        prof = ["-m", "cProfile", "-o", str(profile)] if profile else []
        cmd = ["-m", "streams.app", "--loglevel", "info"] if variant in SETTINGS_VARIANTS else \
            [str(Path(__file__).resolve()), "--run-worker", variant]
        self.proc = subprocess.Popen([sys.executable, *prof, *cmd], cwd=ROOT,
                                     env=base | env, stdout=logfile.open("ab"), stderr=subprocess.STDOUT)
        self.started = time.monotonic()

    def cpu(self) -> float:
        return proc_cpu_s(self.proc.pid)

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class WorkerGroup:
    """N worker processes in one consumer group (same app id, a data dir each): Kafka spreads the
    partitions over them. Same interface as :class:`Worker`; ``cpu()`` is their sum."""

    def __init__(self, env: dict[str, str], run_dir: Path, n: int, variant: str) -> None:
        # a data dir and a metrics port each (two processes cannot serve the same port)
        self.members = [Worker(env | {"PRICING_DATA_DIR": str(run_dir / f"worker{k}"), "PRICING_METRICS_PORT": "0"},
                               run_dir / f"worker{k}.log", None, variant) for k in range(n)]
        self.started = min(w.started for w in self.members)

    def cpu(self) -> float:
        return sum(w.cpu() for w in self.members)

    def check(self) -> None:
        for w in self.members:
            w.check()

    def stop(self) -> None:
        for w in self.members:
            w.stop()


def _wait_stable(s: Settings, n: int, worker: Worker | WorkerGroup, timeout: float) -> None:
    """Until the worker group (the app id) is Stable with ``n`` members: the rebalance is behind us."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            worker.check()
            g = admin.describe_groups([s.app_id]).get(s.app_id, {})
            if g.get("group_state") == "Stable" and len(g.get("members", ())) == n:
                time.sleep(2.0)  # table recovery and the seek after the assignment
                return
            time.sleep(0.5)
    finally:
        admin.close()
    raise RuntimeError(f"worker group {s.app_id} not stable with {n} members after {timeout:.0f} s")


def _committed(s: Settings) -> int:
    """Clickstream offsets the worker's group (the app id) has committed, summed over partitions."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    try:
        got = admin.list_group_offsets({s.app_id: None}).get(s.app_id, {})
    finally:
        admin.close()
    return sum(o.offset for tp, o in got.items() if tp.topic == s.topic_clickstream and o.offset > 0)


async def worker_throughput(s: Settings, worker: Worker, n_events: int, expected: int, timeout: float) -> dict:
    """Wait until the worker has committed all ``n_events`` input offsets (the price count is not
    known in advance: unchanged recommended prices are not re-sent; ``expected`` = 1 + top_k per
    trigger is the most); rate from the price records' LogAppendTimes."""
    AIOKafkaConsumer, _, TopicPartition = _clients()
    c = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=None, enable_auto_commit=False)
    await c.start()
    tps = [TopicPartition(s.topic_prices, p) for p in range(s.partitions)]
    cpu_first = wall_first = cpu_last = wall_last = None
    deadline = time.monotonic() + timeout
    try:
        while True:
            worker.check()
            have = await _end_offsets(c, tps)
            if have and cpu_first is None:
                cpu_first, wall_first = worker.cpu(), time.monotonic()
                log(f"first prices after {wall_first - worker.started:.1f} s of worker start")
            if have >= expected and cpu_last is None:  # the worker's CPU up to the last price at most
                cpu_last, wall_last = worker.cpu(), time.monotonic()
            if have and await asyncio.to_thread(_committed, s) >= n_events:
                break
            if time.monotonic() > deadline:
                log(f"timeout: {have} prices, not every event committed")
                break
            await asyncio.sleep(0.25)
        if cpu_last is None:
            cpu_last, wall_last = worker.cpu(), time.monotonic()
        dlq = await _end_offsets(c, [TopicPartition(s.topic_dead_letter, 0)])
    finally:
        await c.stop()
    t0, t1 = await _edge_timestamps(s.kafka_bootstrap, s.topic_prices, s.partitions)
    return {"rate": n_events / (t1 - t0), "seconds": t1 - t0, "prices": have, "expected": expected,
            "prices_rate": have / (t1 - t0), "dead_letters": dlq, "startup_s": (wall_first or 0) - worker.started,
            "cpu": (cpu_last - cpu_first) / (wall_last - wall_first) if wall_first and wall_last > wall_first
            else float("nan")}


async def marker_throughput(s: Settings, worker: Worker, n_events: int, timeout: float) -> dict:
    """For the marker variants: read the per-batch markers until they count ``n_events``."""
    AIOKafkaConsumer, _, TopicPartition = _clients()
    c = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=None, enable_auto_commit=False,
                         auto_offset_reset="earliest")
    await c.start()
    tps = [TopicPartition(s.topic_prices, p) for p in range(s.partitions)]
    c.assign(tps)
    await c.seek_to_beginning(*tps)
    seen, ts, markers = 0, [], 0
    cpu_first = wall_first = None
    deadline = time.monotonic() + timeout
    try:
        while seen < n_events and time.monotonic() < deadline:
            worker.check()
            for msgs in (await c.getmany(timeout_ms=250)).values():
                for m in msgs:
                    if cpu_first is None:
                        cpu_first, wall_first = worker.cpu(), time.monotonic()
                    seen += int(m.value)
                    markers += 1
                    ts.append(m.timestamp / 1000)
        cpu_last, wall_last = worker.cpu(), time.monotonic()
    finally:
        await c.stop()
    span = max(ts) - min(ts)
    return {"rate": seen / span, "seconds": span, "prices": seen, "expected": n_events, "batches": markers,
            "prices_rate": float("nan"), "startup_s": (wall_first or 0) - worker.started,
            "cpu": (cpu_last - cpu_first) / (wall_last - wall_first) if wall_first and wall_last > wall_first
            else float("nan")}


async def latency_run(s: Settings, worker: Worker, maker: EventMaker, rate: float, warmup: float,
                      duration: float, drain: float = 30.0) -> dict:
    """Offer ``rate`` events/s; latency of every price of the events sent after ``warmup``."""
    AIOKafkaConsumer, AIOKafkaProducer, TopicPartition = _clients()
    consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=None, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, linger_ms=0)
    await consumer.start()
    await producer.start()
    tps = [TopicPartition(s.topic_prices, p) for p in range(s.partitions)]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)
    total = int(rate * (warmup + duration))
    templates = maker.events(np.zeros(total))
    triggers = set(s.triggers)
    got: list[tuple[float, float, float]] = []  # (event ts = send time, append time, receive time)
    # the viewed item's decision of every trigger is always sent (unchanged recommended ones may not be)
    want: set[str] = set()
    measured_ids: set[str] = set()
    seen: set[str] = set()
    sending = True

    async def consume() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            recv = time.time()
            for msgs in batch.values():
                for m in msgs:
                    pe = orjson.loads(m.value)
                    got.append((pe["ts"], m.timestamp / 1000, recv))
                    seen.add(pe["decision_id"])
            if not sending and want <= seen:
                return

    task = asyncio.create_task(consume())
    t0 = time.time()
    cpu0, w0 = worker.cpu(), time.monotonic()
    sent = n_trig = 0
    futs = []
    try:
        while sent < total:
            target = min(total, int(rate * (time.time() - t0)) + 1)
            while sent < target:
                ts = time.time()
                ev = dataclasses.replace(templates[sent], ts=ts)
                futs.append(await producer.send(s.topic_clickstream, dumps(ev), key=ev.user_id.encode()))
                if ev.type in triggers:
                    n_trig += 1
                    want.add(decision_id(ev.event_id, ev.item_id))
                    if ts >= t0 + warmup:
                        measured_ids.add(decision_id(ev.event_id, ev.item_id))
                sent += 1
            if len(futs) > 2000:
                await asyncio.gather(*futs)
                futs.clear()
            worker.check()
            await asyncio.sleep(0.002)
        t_sent = time.time()
        await asyncio.gather(*futs)
        sending = False
        try:
            await asyncio.wait_for(task, drain)
        except TimeoutError:
            log(f"latency run: {len(want - seen)} of {len(want)} viewed-item prices missing after {drain:.0f} s "
                f"of drain")
        cpu = (worker.cpu() - cpu0) / (time.monotonic() - w0)
    finally:
        task.cancel()
        await producer.stop()
        await consumer.stop()
    measured = [g for g in got if g[0] >= t0 + warmup]
    lat_append = [(a - ts) * 1e3 for ts, a, _ in measured]
    lat_recv = [(r - ts) * 1e3 for ts, _, r in measured]
    res = {"offered": sent / (t_sent - t0), "prices": len(measured), "triggers": len(measured_ids),
           "missing": len(measured_ids - seen), "cpu": cpu}
    for name, vals in (("append", lat_append), ("recv", lat_recv)):
        for q in (50, 90, 99):
            res[f"{name}_p{q}"] = percentile(vals, q)
        res[f"{name}_max"] = max(vals) if vals else float("nan")
    return res


def _worker_profile(path: Path) -> str:
    for _ in range(50):
        if path.exists():
            break
        time.sleep(0.2)
    buf = io.StringIO()
    st = pstats.Stats(str(path), stream=buf)
    st.sort_stats("tottime").print_stats(35)
    st.sort_stats("cumulative").print_stats(60)
    return buf.getvalue()


def run_config(args: argparse.Namespace, model_dir: Path, items: list[CatalogItem], size: int,
               within: float, variant: str = "stock", fetch_ms: int | None = None) -> dict:
    """One deployment on fresh topics: pre-load, both passthroughs, then the worker (throughput, latency)."""
    tag = uuid.uuid4().hex[:8]
    name = f"{variant} {size}/{within:g}"
    run_dir = CACHE / "runs" / tag
    run_dir.mkdir(parents=True, exist_ok=True)
    fetch = {} if fetch_ms is None else {"FETCH_MAX_WAIT_MS": fetch_ms}
    env = bench_env(tag, model_dir, run_dir / "worker", BATCH_SIZE=size, BATCH_WITHIN_S=within,
                    TOP_K=args.top_k, ONNX_THREADS=args.onnx_threads,
                    **({"SHORTLIST": args.shortlist, "RESEND_UNCHANGED_S": args.resend}
                       | fetch | VARIANT_ENV.get(variant, {})))
    s = settings_from(env)
    out_topic = f"bench-{tag}-passthrough"
    create_topics(s, extra=[out_topic, out_topic + "-fanout"])
    res: dict = {"variant": variant if args.workers == 1 else f"{variant} x{args.workers}",
                 "batch_size": size, "within": within, "top_k": args.top_k, "tag": tag,
                 "fetch_ms": s.fetch_max_wait_ms,
                 "load_before": load_str()}
    worker = None
    try:
        from kafka import KafkaProducer

        from streams.tools.source import publish

        kp = KafkaProducer(bootstrap_servers=s.kafka_bootstrap)
        publish(kp, s.topic_catalog, [(c.item_id.encode(), dumps(c)) for c in items])
        kp.close()
        maker = EventMaker(items, args.users, seed=11, prefix=f"{tag}-")
        t = time.time()
        evs = maker.events(np.linspace(t - 3600, t - 60, args.events))
        n_trig = sum(e.type in s.triggers for e in evs)
        res["triggers"] = n_trig
        prof = CACHE / f"worker-{variant}-{size}-{within:g}.prof" if args.profile_worker else None

        def start() -> Worker | WorkerGroup:
            return Worker(env, run_dir / "worker.log", prof, variant) if args.workers == 1 else \
                WorkerGroup(env, run_dir, args.workers, variant)

        if args.start_first:  # the group settles first: no rebalance inside the measured window
            worker = start()
            _wait_stable(s, args.workers, worker, 120.0)
            log(f"[{name}] {args.workers} worker(s) assigned; pre-loading (no passthrough runs)")
        log(f"[{name}] pre-loading {len(evs)} events ({n_trig} triggers, {args.users} users) into "
            f"{s.topic_clickstream}")
        asyncio.run(produce_all(s.kafka_bootstrap, s.topic_clickstream, records(evs)))
        if worker is None:
            res["passthrough"] = asyncio.run(passthrough(s.kafka_bootstrap, s.topic_clickstream, out_topic,
                                                         len(evs), f"bench-{tag}-passthrough",
                                                         linger_ms=s.producer_linger_ms))
            res["fanout"] = asyncio.run(passthrough(s.kafka_bootstrap, s.topic_clickstream, out_topic + "-fanout",
                                                    len(evs), f"bench-{tag}-fanout",
                                                    fanout=(frozenset(s.triggers), 1 + args.top_k),
                                                    linger_ms=s.producer_linger_ms))
            log(f"[{name}] passthrough {res['passthrough']['rate']:.0f} events/s, with the worker's fan-out "
                f"{res['fanout']['rate']:.0f} events/s; starting the worker")
            worker = start()
        if variant in MARKER_VARIANTS:
            res["worker"] = asyncio.run(marker_throughput(s, worker, len(evs), args.timeout))
        else:
            res["worker"] = asyncio.run(worker_throughput(s, worker, len(evs), n_trig * (1 + args.top_k),
                                                          args.timeout))
        log(f"[{name}] worker {res['worker']['rate']:.0f} events/s "
            f"({res['worker']['prices']}/{res['worker']['expected']} prices)")
        if prof:  # the throughput phase only: stop the worker so cProfile writes its stats
            worker.stop()
            res["profile"] = _worker_profile(prof)
        elif args.latency_s > 0 and variant not in MARKER_VARIANTS:
            log(f"[{name}] latency at {args.rate:.0f} events/s")
            res["latency"] = asyncio.run(latency_run(s, worker, maker, args.rate, args.warmup_s, args.latency_s))
            lat = res["latency"]
            log(f"[{name}] latency p50 {lat['append_p50']:.1f} ms p99 {lat['append_p99']:.1f} ms "
                f"(offered {lat['offered']:.0f}/s, missing {lat['missing']})")
    finally:
        if worker is not None:
            worker.stop()
        res["load_after"] = load_str()
        if not args.keep:
            try:
                delete_topics(s.kafka_bootstrap, f"bench-{tag}")
            except Exception as exc:  # noqa: BLE001 - cleanup must not hide the result
                log(f"could not delete topics of {tag}: {exc!r}")
            shutil.rmtree(run_dir, ignore_errors=True)
    return res


NAN = float("nan")


def summary(results: list[dict], args: argparse.Namespace) -> str:
    rows = []
    for r in results:
        pt, fo = r.get("passthrough", {}).get("rate", NAN), r.get("fanout", {}).get("rate", NAN)
        w, lat = r.get("worker", {}), r.get("latency", {})
        rate = w.get("rate", NAN)
        config = f"{r['batch_size']}/{r['within']:g}/{r['top_k']}/{r.get('fetch_ms', '-')}"
        rows.append([r["variant"], config, pt, rate, rate / pt,
                     "yes" if rate / pt >= 0.25 else "NO", fo, rate / fo, 1e6 / rate - 1e6 / fo,
                     w.get("cpu", NAN) * 100, w.get("cpu", NAN) * 1e6 / rate,
                     w.get("prices", NAN) / r.get("triggers", NAN),
                     lat.get("offered", NAN), lat.get("append_p50", NAN),
                     lat.get("append_p90", NAN), lat.get("append_p99", NAN), lat.get("append_max", NAN),
                     lat.get("recv_p99", NAN), "yes" if lat.get("append_p99", float("inf")) <= 100 else "NO",
                     lat.get("missing", NAN), f"{r['load_before']} -> {r['load_after']}"])
    return table(["worker", "batch/within/k/fetch", "passthru ev/s", "worker ev/s", "ratio", ">=.25",
                  "fan-out ev/s", "w/fan-out", "extra us/ev", "cpu%", "cpu us/ev", "prices/trig", "offered/s", "p50 ms",
                  "p90 ms", "p99 ms", "max ms",
                  "p99 recv", "p99<=100", "missing", "loadavg before -> after"], rows,
                 f"End to end, one worker vs passthrough ({args.events} pre-loaded events, {args.users} users, "
                 f"{args.items} items; latency at {args.rate:.0f} events/s for {args.latency_s:.0f} s after "
                 f"{args.warmup_s:.0f} s warm-up; {os.cpu_count()} cores)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000, help="pre-loaded events per configuration")
    parser.add_argument("--users", type=int, default=10_000, help="distinct users in the clickstream")
    parser.add_argument("--items", type=int, default=400, help="catalog items (the default simulated market)")
    parser.add_argument("--configs", default="64:0.01,64:0.01:1500,256:0.05",
                        help="comma-separated batch_size:batch_within_s[:fetch_max_wait_ms] to run "
                             "(first = the default settings; fetch wait defaults to PRICING_FETCH_MAX_WAIT_MS)")
    parser.add_argument("--variants", default="stock",
                        help="worker variants for the FIRST config, comma-separated: "
                             + "; ".join(f"{k} = {v}" for k, v in VARIANTS.items())
                             + " (later configs run stock only)")
    parser.add_argument("--run-worker", metavar="VARIANT", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes in one group (one per core is the way to use more cores)")
    parser.add_argument("--start-first", action="store_true",
                        help="start the worker(s) and wait for a stable group before pre-loading (no passthrough "
                             "runs): the rebalance of a multi-worker group stays out of the measured window")
    parser.add_argument("--top-k", type=int, default=3, help="PRICING_TOP_K")
    parser.add_argument("--shortlist", type=int, default=48,
                        help="PRICING_SHORTLIST of the scoring-cost and stock runs (the variant `before` uses 0)")
    parser.add_argument("--resend", type=float, default=Settings.model_fields["resend_unchanged_s"].default,
                        help="PRICING_RESEND_UNCHANGED_S of the stock runs (the variants before/shortlist use 0)")
    parser.add_argument("--onnx-threads", type=int, default=1, help="PRICING_ONNX_THREADS")
    parser.add_argument("--rate", type=float, default=1000.0, help="offered events/s of the latency run")
    parser.add_argument("--warmup-s", type=float, default=5.0, help="latency run: seconds not measured")
    parser.add_argument("--latency-s", type=float, default=30.0, help="latency run: seconds measured (0 = skip)")
    parser.add_argument("--timeout", type=float, default=600.0, help="longest wait for the worker to catch up")
    parser.add_argument("--scoring-events", type=int, default=4096, help="events timed per scoring variant")
    parser.add_argument("--scoring-users", type=int, default=2000, help="users of the scoring-cost run")
    parser.add_argument("--skip-scoring", action="store_true", help="no in-process scoring-cost table")
    parser.add_argument("--skip-kafka", action="store_true", help="only the in-process scoring-cost table")
    parser.add_argument("--profile", action="store_true", help="cProfile Pipeline.process (onnx) and print it")
    parser.add_argument("--profile-worker", action="store_true",
                        help="run the worker under cProfile (throughput phase only, no latency run); "
                             "prints its stats; the rates are then profiler-inflated")
    parser.add_argument("--profile-batch", type=int, default=64, help="batch size of the profiled run")
    parser.add_argument("--keep", action="store_true", help="keep the run's topics and worker data dir")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    if args.run_worker:
        return run_worker_variant(args.run_worker)

    model_dir = ensure_bundle(log=log)
    items = make_catalog(args.items)
    print(f"machine: {os.cpu_count()} cores, loadavg {load_str()}; bundle {model_dir}", flush=True)
    if not args.skip_scoring:
        print(scoring_cost(args, model_dir, items) + "\n", flush=True)
    results: list[dict] = []
    if not args.skip_kafka:
        runs = []
        for n, spec in enumerate(args.configs.split(",")):
            size, within, *fetch = spec.split(":")
            fetch_ms = int(fetch[0]) if fetch else None
            runs += [(int(size), float(within), v, fetch_ms)
                     for v in (args.variants.split(",") if n == 0 else ["stock"])]
        for size, within, variant, fetch_ms in runs:
            results.append(run_config(args, model_dir, items, size, within, variant, fetch_ms))
            print(summary(results[-1:], args) + "\n", flush=True)
            if "profile" in results[-1]:
                print(results[-1].pop("profile"), flush=True)
        print(summary(results, args))
        print("\nratio = worker ev/s / passthrough ev/s (acceptance >= 0.25); fan-out = the passthrough writing "
              "what the worker writes (1+top_k records per trigger + 1 per event), no processing; extra us/ev = "
              "1e6/worker - 1e6/fan-out; cpu% = worker process CPU during its throughput run; cpu us/ev = its "
              "CPU per event (comparable when the worker is starved of CPU on a shared machine); p50..max = price "
              f"appended (LogAppendTime) - event send time, ms, at {args.rate:.0f} events/s "
              "(acceptance p99 <= 100 ms); "
              "p99 recv = to the bench consumer's receipt; prices/trig = price records per trigger event in the "
              "throughput run (at most 1 + top_k); missing = viewed-item prices (always sent) not seen")
    if args.json:
        args.json.write_text(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
