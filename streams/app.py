"""The Faust worker: thin glue that reads, calls the pipeline, writes and sends.

``create_app(settings)`` builds the app; ``pricing-worker`` (``python -m streams.app``) runs it.
Topics are raw bytes end to end: validation happens in :mod:`streams.schemas`, so a bad
record becomes a dead letter with its reason instead of a deserialisation crash.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import faust
from faust.streams import _current_event
from faust.transport.drivers import aiokafka as faust_aiokafka

from .catalog import Catalog
from .pipeline import Pipeline, RawRecord
from .schemas import DeadLetter, SchemaError, dead_letter_bytes, parse_catalog
from .scoring import BundleWatcher, DeterministicScorer, Scorer
from .settings import Settings, cli_settings
from .topics import kafka_client_config

log = logging.getLogger("pricing.worker")


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer with the app's fetch wait instead of Faust's hard-coded 1,500 ms.

    aiokafka keeps one fetch in flight per broker and leaves out partitions whose records are still
    buffered. When a fetch names only partitions without new data, the broker holds it for the full
    ``fetch_max_wait_ms``, and the buffered partitions cannot be fetched again until it returns:
    with Faust's 1,500 ms, prices then came 1.5-1.8 s late (measured in the benchmark and in the
    closed loop, where late prices also slow the producers down, so the stall feeds itself).
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # read by the Fetcher that the consumer builds on start()
        consumer._fetch_max_wait_ms = getattr(self.app, "fetch_max_wait_ms", consumer._fetch_max_wait_ms)
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class _App(faust.App):
    """faust.App whose worker consumer waits at most ``fetch_max_wait_ms`` per fetch."""

    fetch_max_wait_ms: int = 1500

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


def _credentials(s: Settings) -> Any:
    if s.kafka_sasl_mechanism:
        return faust.SASLCredentials(username=s.kafka_sasl_username,
                                     password=s.kafka_sasl_password.get_secret_value()
                                     if s.kafka_sasl_password else None, mechanism=s.kafka_sasl_mechanism)
    if s.kafka_security_protocol == "SSL":
        import ssl

        return faust.SSLCredentials(ssl.create_default_context(cafile=s.kafka_ssl_cafile))
    return None


def _scorer_source(s: Settings, deterministic: bool) -> tuple[Callable[[], Scorer], BundleWatcher | None]:
    if deterministic:
        fixed = DeterministicScorer()
        return (lambda: fixed), None
    from .features import FeatureSpec, feature_names

    watcher = BundleWatcher(s.model_dir, s.model_reload_s, feature_names(FeatureSpec.from_settings(s)),
                            threads=s.onnx_threads)
    return (lambda: watcher.scorer), watcher


Sender = Callable[[str, bytes, bytes], Awaitable[None]]


def create_app(s: Settings, *, deterministic_scorer: bool = False,
               clock: Callable[[], float] = time.time, sender: Sender | None = None) -> faust.App:
    """Build the Faust app: clickstream agent, catalog loader, model reload and stats timers.

    ``sender(topic, key, value)`` replaces the Kafka producer in agent tests.
    """
    app = _App(
        s.app_id, broker=[f"kafka://{h}" for h in s.kafka_bootstrap.split(",")],
        broker_credentials=_credentials(s), store=s.store, datadir=str(s.data_dir),
        topic_partitions=s.partitions, topic_replication_factor=s.replication_factor,
        consumer_auto_offset_reset="earliest", web_enabled=False, broker_commit_every=1000,
        broker_commit_interval=1.0, producer_linger_ms=1,
        broker_session_timeout=s.session_timeout_s, broker_heartbeat_interval=min(3.0, s.session_timeout_s / 3),
    )
    app.fetch_max_wait_ms = s.fetch_max_wait_ms
    clicks = app.topic(s.topic_clickstream, partitions=s.partitions, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    users = app.Table("users", default=None, partitions=s.partitions,
                      key_type=bytes, value_type=bytes)  # bytes types -> raw serializers
    catalog = Catalog()
    catalog_ready = asyncio.Event()
    scorer, watcher = _scorer_source(s, deterministic_scorer)
    pipeline = Pipeline(s, catalog, scorer, clock)
    stats: Counter[str] = Counter()
    timing = _BatchTimes()

    async def send(topic: str, key: bytes, value: bytes) -> Any:
        # enqueue; returns the delivery future (None in agent tests)
        if sender is not None:
            return await sender(topic, key, value)
        return await app.producer.send(topic, key, value, None, None, None)

    @app.agent(clicks, name="clickstream")
    async def price_clickstream(stream: faust.StreamT) -> None:
        await catalog_ready.wait()
        async for events in stream.take_events(s.batch_size, within=s.batch_within_s):  # type: ignore[attr-defined]
            # events: raw clickstream records of one batch, from any partitions we own
            t0 = time.monotonic()
            out = pipeline.process([RawRecord(e.message.key, e.message.value, e.message.topic,
                                              e.message.partition, e.message.offset) for e in events],
                                   lambda k: users.get(k.encode()))
            # one table write per user per batch, routed by the partition of its last event
            for ukey, (blob, i) in out.records.items():
                token = _current_event.set(weakref.ref(events[i]))
                try:
                    users[ukey.encode()] = blob
                finally:
                    _current_event.reset(token)
            pending = [await send(s.topic_dead_letter, k, v) for k, v in out.dead_letters]
            pending += [await send(s.topic_prices, k, v) for k, v in out.prices]
            # at-least-once: the batch is acked (its offsets become committable) only after every
            # price and dead letter it produced is in Kafka; a failed delivery crashes the batch
            t1 = time.monotonic()
            await asyncio.gather(*(f for f in pending if f is not None))
            timing.add(len(events), t1 - t0, time.monotonic() - t1,
                       clock() - min(e.message.timestamp or 0.0 for e in events))
            stats.update(out.counts)

    @app.task
    async def load_catalog() -> None:
        await _follow_catalog(app, s, catalog, catalog_ready, send, clock)

    if watcher is not None:
        @app.timer(s.model_reload_s)
        async def reload_models() -> None:
            # load and verify in a thread, then swap: scoring never sees a half-loaded bundle
            await asyncio.get_running_loop().run_in_executor(None, watcher.maybe_reload, time.monotonic())

    @app.timer(30.0)
    async def report() -> None:
        if stats:
            log.info("last 30 s: %s; catalog items %d; model %s; %s", dict(sorted(stats.items())),
                     len(catalog), scorer().version, timing.summary())
            stats.clear()
        timing.clear()

    # handles for tests and tools
    app.pricing, app.catalog_ready, app.users = pipeline, catalog_ready, users  # type: ignore[attr-defined]
    return app


class _BatchTimes:
    """Per-batch timings for the periodic log line: where a slow price comes from at 3 a.m."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Start a new period."""
        self.batches, self.events = 0, 0
        self.process: list[float] = []
        self.deliver: list[float] = []
        self.age: list[float] = []

    def add(self, n: int, process_s: float, deliver_s: float, age_s: float) -> None:
        """One batch: its size, pipeline time, wait for delivery, age of its oldest record at pick-up."""
        self.batches, self.events = self.batches + 1, self.events + n
        self.process.append(process_s)
        self.deliver.append(deliver_s)
        self.age.append(age_s)

    def summary(self) -> str:
        """``batches``, mean size, and p50/max ms of process, delivery and record age."""
        if not self.batches:
            return "no batches"

        def ms(xs: list[float]) -> str:
            xs = sorted(xs)
            return f"{1000 * xs[len(xs) // 2]:.0f}/{1000 * xs[-1]:.0f}"

        return (f"{self.batches} batches of {self.events / self.batches:.1f}; ms p50/max: process {ms(self.process)}, "
                f"delivery {ms(self.deliver)}, record age at pick-up {ms(self.age)}")


async def _follow_catalog(app: faust.App, s: Settings, catalog: Catalog, ready: asyncio.Event,
                          send: Callable[[str, bytes, bytes], Any], clock: Callable[[], float]) -> None:
    """Read the whole compacted catalog topic (outside the group) forever; set ``ready`` when caught up."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    cfg = kafka_client_config(s)
    consumer = AIOKafkaConsumer(bootstrap_servers=cfg.pop("bootstrap_servers"), group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                **{k: v for k, v in cfg.items() if k != "ssl_cafile"})
    await consumer.start()
    try:
        parts = None
        while not parts:
            # partitions_for_topic reads the client's metadata cache: ask for this topic's metadata
            consumer._client.set_topics([s.topic_catalog])
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(s.topic_catalog)
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
                        catalog.put(parse_catalog(m.value))
                    except SchemaError as exc:
                        log.warning("catalog record %s:%d rejected: %s", tp.partition, m.offset, exc)
                        letter = DeadLetter(m.value, tp.topic, tp.partition, m.offset, exc.code, exc.reason, clock())
                        await send(s.topic_dead_letter, m.key or b"", dead_letter_bytes(letter))
    finally:
        await consumer.stop()


def main(argv: list[str] | None = None) -> int:
    """``pricing-worker``: run one pricing worker (add more for more partitions' worth of load)."""
    import argparse

    parser = argparse.ArgumentParser(prog="pricing-worker", description=main.__doc__,
                                     epilog="Configuration: PRICING_* environment variables "
                                            "(see `pricing-settings`).")
    parser.add_argument("--deterministic-scorer", action="store_true",
                        help="closed-form test scorer instead of the ONNX bundle (smoke tests only)")
    parser.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    s = cli_settings()
    Path(s.data_dir).mkdir(parents=True, exist_ok=True)
    app = create_app(s, deterministic_scorer=args.deterministic_scorer)
    web = ["--web-port", str(s.web_port)] if s.web_port else ["--without-web"]
    sys.argv = [sys.argv[0], "worker", "--loglevel", args.loglevel, *web]
    app.main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
