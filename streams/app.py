"""The Faust worker: thin glue that reads, calls the pipeline, writes and sends.

``create_app(settings)`` builds the app; ``pricing-worker`` (``python -m streams.app``) runs it.
Topics are raw bytes end to end: validation happens in :mod:`streams.schemas`, so a bad
record becomes a dead letter with its reason instead of a deserialisation crash.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import faust

from export.bundle import BundleError

from .catalog import Catalog
from .faust_compat import (
    PricingApp,
    PricingTableManager,
    check_versions,
    hold_back,
    topic_partitions,
    worker_class,
    write_as_of,
)
from .features import FeatureSpec, feature_names
from .health import MetricsServerError, faust_snapshot, sample_forever, serve
from .kafka_config import aiokafka_config, cli_check_connection, faust_broker, faust_credentials
from .logs import faust_logging_config
from .metrics import WorkerMetrics
from .pipeline import Pipeline, RawRecord, UnknownFields, is_history
from .runtime import EXIT_BATCH_FAILED, RepeatFilter, ShutdownWatchdog, install_repeat_filter
from .schemas import DeadLetter, SchemaError, dead_letter_bytes, parse_catalog
from .scoring import BundleWatcher, DeterministicScorer, Scorer
from .settings import Settings, cli_settings
from .topics import USERS_TABLE
from .version import add_version

log = logging.getLogger("pricing.worker")


def _scorer_source(s: Settings, deterministic: bool) -> tuple[Callable[[], Scorer], BundleWatcher | None]:
    if deterministic:
        fixed = DeterministicScorer()
        return (lambda: fixed), None

    watcher = BundleWatcher(s.model_dir, s.model_reload_s, feature_names(FeatureSpec.from_settings(s)),
                            threads=s.onnx_threads)
    return (lambda: watcher.scorer), watcher


Sender = Callable[[str, bytes, bytes], Awaitable[None]]


def create_app(s: Settings, *, deterministic_scorer: bool = False,
               clock: Callable[[], float] = time.time, sender: Sender | None = None,
               on_batch_failure: Callable[[BaseException], object] | None = None) -> faust.App:
    """Build the Faust app: clickstream agent, catalog loader, model reload and stats timers.

    ``sender(topic, key, value)`` replaces the Kafka producer in agent tests. ``on_batch_failure(exc)``
    runs once a batch failed and was held back uncommitted; by default it stops the worker (SIGTERM to
    itself, a graceful stop), and ``pricing-worker`` then exits with :data:`EXIT_BATCH_FAILED`.
    """
    check_versions()
    on_batch_failure = on_batch_failure or _stop_self
    # SIGTERM/SIGINT arm the watchdog, then Faust stops gracefully; reconnect errors are rate-limited
    watchdog, repeat = ShutdownWatchdog(s.shutdown_timeout_s), RepeatFilter()
    app = PricingApp(
        s.app_id, broker=faust_broker(s),
        broker_credentials=faust_credentials(s), store=s.store, datadir=str(s.data_dir),
        topic_partitions=s.partitions, topic_replication_factor=s.replication_factor,
        consumer_auto_offset_reset="earliest", web_enabled=False, broker_commit_every=1000,
        broker_commit_interval=1.0, producer_linger_ms=s.producer_linger_ms,
        producer_compression_type=None if s.producer_compression == "none" else s.producer_compression,
        broker_session_timeout=s.session_timeout_s, broker_heartbeat_interval=min(3.0, s.session_timeout_s / 3),
        TableManager=PricingTableManager,  # seek before resuming after recovery (streams/faust_compat.py)
        logging_config=faust_logging_config(s.log_format),
        Worker=worker_class(lambda sig: watchdog.arm(f"{sig} received"),
                            lambda root: install_repeat_filter(root, repeat)),
    )
    app.fetch_max_wait_ms = s.fetch_max_wait_ms
    # a graceful stop in three parts of at most a third of the timeout each: the final commit, the
    # consumer thread, the rest (producer flush, tables); the watchdog only if that still hangs
    app.commit_on_stop_timeout_s = app.thread_shutdown_timeout_s = min(10.0, s.shutdown_timeout_s / 3)
    clicks = app.topic(s.topic_clickstream, partitions=s.partitions, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    users = app.Table(USERS_TABLE, default=None, partitions=s.partitions,
                      key_type=bytes, value_type=bytes)  # bytes types -> raw serializers
    catalog = Catalog()
    catalog_ready = asyncio.Event()
    scorer, watcher = _scorer_source(s, deterministic_scorer)
    pipeline = Pipeline(s, catalog, scorer, clock)
    stats: Counter[str] = Counter()
    metrics, created_at = WorkerMetrics(), time.time()  # created_at: the deterministic scorer's "load" time

    async def send(topic: str, key: bytes, value: bytes) -> Any:
        # enqueue; returns the delivery future (None in agent tests)
        if sender is not None:
            return await sender(topic, key, value)
        return await app.producer.send(topic, key, value, None, None, None)

    async def price_batch(events: list[Any]) -> None:
        # events: raw clickstream records of one batch, from any partitions we own
        started = time.perf_counter()
        out = pipeline.process([RawRecord(e.message.key, e.message.value, e.message.topic, e.message.partition,
                                          e.message.offset, is_history(e.message.headers)) for e in events],
                               lambda k: users.get(k.encode()))
        took = time.perf_counter() - started
        # one table write per user per batch, routed by the partition of its last event
        for ukey, (blob, i) in out.records.items():
            write_as_of(users, ukey.encode(), blob, events[i])
        pending = [await send(s.topic_dead_letter, k, v) for k, v in out.dead_letters]
        pending += [await send(s.topic_prices, k, v) for k, v in out.prices]
        # at-least-once: the batch is acked (its offsets become committable) only after every
        # price and dead letter it produced is in Kafka
        await asyncio.gather(*(f for f in pending if f is not None))
        stats.update(out.counts)
        metrics.on_batch(out.counts, records=len(events), seconds=took, done_at=time.time(),
                         record_ts=[e.message.timestamp for e in events])

    @app.agent(clicks, name="clickstream")
    async def price_clickstream(stream: faust.StreamT[bytes]) -> None:
        await catalog_ready.wait()
        async for events in stream.take_events(s.batch_size, within=s.batch_within_s):  # type: ignore[attr-defined]
            try:
                await price_batch(events)
            except Exception as exc:  # noqa: BLE001 - any failure: keep the batch uncommitted, then stop
                # Faust would ack (and commit) the batch of a crashed agent and restart the agent on
                # the next events: the failed batch's triggers would never be priced
                held = hold_back(app, events)
                log.critical("a batch of %d events failed: %r. None of it is committed (%d held back); stopping "
                             "the worker (exit %d) so that a restart prices them again with the same decision ids",
                             len(events), exc, held, EXIT_BATCH_FAILED, exc_info=exc)
                app.batch_failure = exc  # type: ignore[attr-defined]
                on_batch_failure(exc)
                return

    @app.task
    async def load_catalog() -> None:
        await _follow_catalog(app, s, catalog, catalog_ready, send, clock, metrics.count)

    if watcher is not None:
        @app.timer(s.model_reload_s)
        async def reload_models() -> None:
            # load and verify in a thread, then swap: scoring never sees a half-loaded bundle
            await asyncio.get_running_loop().run_in_executor(None, watcher.maybe_reload, time.monotonic())

    @app.task
    async def sample_state() -> None:
        # once a second on the event loop: gauges, /ready, and the heartbeat /healthz checks
        await sample_forever(metrics, lambda: faust_snapshot(
            app, catalog_caught_up=catalog_ready.is_set(), catalog_items=len(catalog),
            scorer_version=scorer().version, bundle_loaded=watcher is None or watcher.loaded_at is not None,
            bundle_loaded_at=created_at if watcher is None else watcher.loaded_at,
            topics=frozenset({s.topic_clickstream})))

    @app.timer(30.0)
    async def report() -> None:
        repeat.flush()
        if stats:
            log.info("last 30 s: %s; catalog items %d; model %s", dict(sorted(stats.items())),
                     len(catalog), scorer().version)
            stats.clear()

    # handles for tests and tools
    app.pricing, app.catalog_ready, app.users = pipeline, catalog_ready, users  # type: ignore[attr-defined]
    app.metrics = metrics  # type: ignore[attr-defined]
    app.watchdog, app.repeat_filter = watchdog, repeat  # type: ignore[attr-defined]
    return app


def _stop_self(exc: BaseException) -> None:
    # the same graceful stop as an operator's SIGTERM: the watchdog bounds it, the final commit stops
    # before the held-back batch
    os.kill(os.getpid(), signal.SIGTERM)


async def _follow_catalog(app: faust.App, s: Settings, catalog: Catalog, ready: asyncio.Event,
                          send: Callable[[str, bytes, bytes], Any], clock: Callable[[], float],
                          count: Callable[[dict[str, int]], None] = lambda _: None) -> None:
    """Read the whole compacted catalog topic (outside the group) forever; set ``ready`` when caught up.
    A record that does not parse is dead-lettered and counted (``catalog_dead_letter.<code>``)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                                **aiokafka_config(s))
    unknown = UnknownFields(s.topic_catalog) if s.unknown_fields == "ignore" else None
    await consumer.start()
    try:
        parts = None
        while not parts:
            parts = await topic_partitions(consumer, s.topic_catalog)
            if not parts:
                log.warning("catalog topic %r not found yet; waiting", s.topic_catalog)
                await asyncio.sleep(2.0)
        tps = [TopicPartition(s.topic_catalog, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        while True:
            if not ready.is_set() and all([await consumer.position(tp) >= end[tp] for tp in tps]):
                log.info("catalog loaded: %d items", len(catalog))
                ready.set()
            batch = await consumer.getmany(timeout_ms=500)
            for tp, msgs in batch.items():
                for m in msgs:
                    if m.value is None:  # tombstone: the item is withdrawn
                        catalog.remove(m.key.decode() if m.key else "")
                        continue
                    try:
                        catalog.put(parse_catalog(m.value, on_unknown=unknown))
                    except SchemaError as exc:
                        log.warning("catalog record %s:%d rejected: %s", tp.partition, m.offset, exc)
                        letter = DeadLetter(m.value, tp.topic, tp.partition, m.offset, exc.code, exc.reason, clock())
                        await send(s.topic_dead_letter, m.key or b"", dead_letter_bytes(letter))
                        count({f"catalog_dead_letter.{exc.code}": 1})
    finally:
        await consumer.stop()


def main(argv: list[str] | None = None) -> int:
    """``pricing-worker``: run one pricing worker (add more for more partitions' worth of load)."""
    import argparse

    parser = argparse.ArgumentParser(prog="pricing-worker", description=main.__doc__,
                                     epilog="Configuration: PRICING_* environment variables "
                                            "(see `pricing-settings`, docs/settings.md).")
    add_version(parser)
    parser.add_argument("--deterministic-scorer", action="store_true",
                        help="closed-form test scorer instead of the ONNX bundle (smoke tests only)")
    parser.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    s = cli_settings()
    Path(s.data_dir).mkdir(parents=True, exist_ok=True)
    try:
        app = create_app(s, deterministic_scorer=args.deterministic_scorer)
    except BundleError as exc:
        print(f"error: no usable model bundle in PRICING_MODEL_DIR={s.model_dir}: {exc}. Make one with "
              f"`pricing-train --out train/` then `pricing-export --train-dir train/ --model-dir {s.model_dir}`",
              file=sys.stderr)
        return 2
    if s.metrics_port:  # a taken port is a local mistake: said at once, before any wait on the network
        try:
            serve(app.metrics, s.metrics_host, s.metrics_port, s.metrics_stall_s)  # type: ignore[attr-defined]
        except MetricsServerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    # a refused certificate or password fails here, named, instead of as endless client retries
    cli_check_connection(s, "pricing-worker")
    web = ["--web-port", str(s.web_port)] if s.web_port else ["--without-web"]
    quiet = ["--quiet"] if s.log_format == "json" else []  # Faust's startup banner is not JSON
    sys.argv = [sys.argv[0], *quiet, "worker", "--loglevel", args.loglevel, *web]
    try:
        app.main()
    except SystemExit as done:  # mode's worker always leaves through SystemExit
        code = done.code
    else:
        code = 0
    if getattr(app, "batch_failure", None) is not None:
        return EXIT_BATCH_FAILED
    return code if isinstance(code, int) else 1


if __name__ == "__main__":
    raise SystemExit(main())
