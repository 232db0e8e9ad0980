"""Every use of Faust's and aiokafka's private API, in one guarded place.

The worker relies on internals of faust-streaming, mode and aiokafka in these places, all here:

* the recovery and fetch path, fixed so that a restart or a takeover loses no event
  (:class:`OrderedRecovery`, :class:`SafeConsumerThread`, described below);
* the consumer's fetch wait, which Faust hard-codes (:class:`SafeConsumerThread`);
* routing a table write to the changelog partition of a given event (:func:`write_as_of`), which
  Faust reads from a private context variable;
* asking an aiokafka consumer outside any group for one topic's metadata (:func:`topic_partitions`);
* keeping the events of a failed batch from ever being committed (:func:`hold_back`): Faust's
  ``Stream.take_events`` acknowledges a batch in a ``finally``, so a batch whose body raised (a
  failed delivery, a table write refused) would otherwise be committed unprocessed;
* learning that a stop signal arrived, and bounding how long a stop waits for the final offset
  commit and for Faust's consumer thread (:func:`worker_class`, :class:`PricingApp`).

:func:`check_versions` refuses to start on versions these overrides were not verified against:
re-read each override against the new version's source, re-run the kill -9 and two-worker
integration tests, then add the version to ``VERIFIED``.

The recovery and fetch path:

When table recovery ends, faust-streaming 0.15 resumes the stream partitions *first* and then
seeks them to their committed offsets, with its fetcher already running (it was started to read
the changelog). Records fetched in between, from wherever the fetcher's position happened to
be, reach the agent's queue and move Faust's read offsets; the seek then moves the read offsets
back while the tail of that stale fetch is still being drained, and resuming flow clears the
queue. Two things then go wrong, both seen in the kill -9 and two-worker integration tests:

* a jump from the reset read offset to a stale record counts as a *gap*, and Faust treats gap
  offsets as acknowledged: events that were only ever in the cleared queue are committed without
  being processed (their prices never come, and the user's features miss them);
* re-fetched records below a stale read offset are dropped as already read, yet never acked:
  the partition's committed offset stops moving for good (the "stall").

:class:`OrderedRecovery` seeks the stream partitions while they are still paused and resumes
them only afterwards, so every record delivered to an agent comes from the committed position.
:class:`PricingTableManager` makes Faust use it (``faust.App(..., TableManager=...)``).

Two more holes are in Faust's aiokafka consumer thread, closed by :class:`SafeConsumerThread`
(installed by :class:`PricingApp`):

* records that reach Faust while its flow is stopped, or for a partition paused meanwhile, are
  thrown away after aiokafka has already moved past them, and the "seek back to committed"
  that should follow skips a partition with no committed offset yet (a fresh group, or a
  takeover of a worker that died before its first commit): those records were never seen again.
  Here a partition without a commit goes back to the start (or the end, per
  ``consumer_auto_offset_reset``);
* a fetch collected before a seek can reach Faust after it. Every seek bumps an epoch on the
  consumer's own thread; the stream records of a batch collected under an older epoch are
  dropped, which is safe because the seek has moved those partitions back and the records come
  again (changelog records in the same batch are kept: the seek does not move them). Faust is also
  given a frozen copy of its active partitions: aiokafka reads an empty set as "all partitions",
  and Faust's live set could be emptied by a rebalance while a fetch was waiting.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import weakref
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import faust
from faust.streams import _current_event
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka as faust_aiokafka


class OrderedRecovery(Recovery):
    """Recovery whose last step is: seek (partitions paused), then resume, then start the flow."""

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        """Active tables are restored: position the stream partitions, then let records flow."""
        app: Any = self.app
        consumer: Any = app.consumer
        self.log.info("Restore complete!")
        await app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [asyncio.ensure_future(table.on_recovery_completed(self.actives_for_table[table],
                                                                       self.standbys_for_table[table]))
                     for table in self.tables.values()]
        if callbacks:
            await asyncio.wait(callbacks)
        if app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again (generation %r, now %r)",
                             generation_id, app.consumer_generation_id)
            return
        streams = {tp for tp in consumer.assignment() if not self._is_changelog_tp(tp)}
        if streams:
            # still paused here: no record of these partitions reaches an agent while they move;
            # a partition left "buffered" from before the rebalance would bypass the pause
            consumer._buffered_partitions.difference_update(streams)
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
            if app.consumer_generation_id != generation_id:
                self.log.warning("Recovery rebalancing again after the seek")
                return
        # no await from here to resume_flow: nothing can be queued between resuming the
        # partitions and flow_control.resume() clearing the (so far empty) agent queues
        consumer.resume_partitions(streams)
        self.completed.set()
        app.flow_control.resume()
        consumer.resume_flow()
        await app._fetcher.maybe_start()
        self.tables.on_actives_ready()
        if not app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        app.on_rebalance_end()
        self.log.info("Worker ready")


class PricingTableManager(TableManager):
    """Faust's table manager with :class:`OrderedRecovery` as its recovery service."""

    @property
    def recovery(self) -> Recovery:
        """The recovery service (created on first use, as Faust's own)."""
        if self._recovery is None:
            self._recovery = OrderedRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


class SafeConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread with complete seeks, epoch-checked fetches, a set fetch wait.

    The fetch wait: aiokafka keeps one fetch in flight per broker and leaves out the partitions
    whose records are still buffered. A fetch that names only idle partitions is held by the
    broker for the whole ``fetch_max_wait_ms``, and the busy partitions wait behind it; with
    Faust's hard-coded 1,500 ms, prices came 1.3-1.8 s late (bench/README.md).
    """

    _seek_epoch = 0  # bumped on the consumer thread whenever positions are moved

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # read by the aiokafka Fetcher that the consumer builds on start()
        consumer._fetch_max_wait_ms = getattr(self.app, "fetch_max_wait_ms", consumer._fetch_max_wait_ms)
        return consumer

    async def seek_to_committed(self) -> Any:
        """Seek every stream partition to its committed offset, or per the reset policy if none."""
        return await self.call_thread(self._seek_to_committed)  # type: ignore[no-any-return]

    async def _seek_to_committed(self) -> dict[Any, int | None]:
        # on the consumer thread's loop: every await comes first, then all seeks and the epoch
        # bump in one step, so no fetch can be collected from a half-moved assignment
        consumer = self._ensure_consumer()
        assigned = consumer.assignment()
        streams = [tp for tp in assigned if not self.consumer._is_changelog_tp(tp)]
        committed = {tp: await consumer.committed(tp) for tp in streams}
        fresh = [tp for tp, offset in committed.items() if offset is None]
        latest = self.app.conf.consumer_auto_offset_reset == "latest"
        reset = (await (consumer.end_offsets if latest else consumer.beginning_offsets)(fresh)) if fresh else {}
        for tp in streams:
            offset = committed[tp]
            consumer.seek(tp, offset if offset is not None else reset[tp])
        self._seek_epoch += 1
        # changelog partitions are positioned by recovery, not here (as in Faust: no commit, no seek)
        return {**{tp: None for tp in assigned}, **committed}

    async def getmany(self, active_partitions: Any, timeout: float) -> Any:
        """Records of the active partitions; none from a fetch collected before the latest seek."""
        if active_partitions is not None and not active_partitions:
            return {}  # aiokafka would read an empty set as "every partition"
        consumer = self._ensure_consumer()
        frozen = frozenset(active_partitions) if active_partitions is not None else None
        records, epoch = await self.call_thread(self._fetch_tagged, consumer, frozen, timeout,
                                                consumer._max_poll_records)
        if epoch != self._seek_epoch:
            # collected before a seek moved the stream partitions back: their records come again;
            # changelog records (standby tables) were not moved and must not be dropped
            return {tp: recs for tp, recs in records.items() if self.consumer._is_changelog_tp(tp)}
        return records

    async def _fetch_tagged(self, consumer: Any, partitions: Any, timeout: float,
                            max_records: int | None) -> tuple[Any, int]:
        # the epoch is read in the same step as the fetch returns, on the consumer thread
        records = await self._fetch_records(consumer, partitions, timeout=timeout, max_records=max_records)
        return records, self._seek_epoch


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        thread = SafeConsumerThread(self, loop=self.loop, beacon=self.beacon)
        _bound_thread_stop(thread, self.app)
        return thread


def _bound_thread_stop(thread: Any, app: Any) -> None:
    # mode's Service.stop waits ``shutdown_timeout`` (60 s) for a service thread to say it is down
    # (the producer is not threaded here: producer_threaded is off);
    # with the brokers gone, the aiokafka consumer's own stop is cancelled mid-way and never says
    # so, and every stop took a minute (seen with a stopped broker)
    thread.shutdown_timeout = getattr(app, "thread_shutdown_timeout_s", thread.shutdown_timeout)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class PricingApp(faust.App):
    """faust.App on the aiokafka transport with :class:`SafeConsumerThread` and bounded thread stops."""

    fetch_max_wait_ms: int = 1500  # Faust's own value unless create_app sets the setting
    thread_shutdown_timeout_s: float = 60.0  # mode's own value unless create_app sets it
    commit_on_stop_timeout_s: float | None = None  # Faust's own: no bound, unless create_app sets it

    async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
        # Faust's stop waits for in-flight events to be acked, then commits, with no time bound: with
        # the brokers gone, that commit retries forever (a worker kept spinning 20 minutes after SIGTERM)
        if self.commit_on_stop_timeout_s is None:
            return await super()._consumer_wait_empty(consumer, logger)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await asyncio.wait_for(super()._consumer_wait_empty(consumer, logger), self.commit_on_stop_timeout_s)
        except TimeoutError:
            pass
        # measured, not only caught: Faust's commit may swallow the cancellation and return normally
        if loop.time() - started >= self.commit_on_stop_timeout_s:
            logger.warning("final offset commit did not finish within %.0f s (brokers unreachable?); stopping "
                           "without it: a restart prices the uncommitted events again, with the same decision ids",
                           self.commit_on_stop_timeout_s)

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


def worker_class(on_stop_signal: Callable[[str], object],
                 on_root_logger: Callable[[logging.Logger], object]) -> type[faust.Worker]:
    """A ``faust.Worker`` (``faust.App(..., Worker=...)``) that calls ``on_stop_signal(name)`` when
    SIGTERM or SIGINT arrives, before Faust starts its stop, and ``on_root_logger(root)`` once Faust
    has configured logging (its handlers exist only then)."""

    class PricingWorker(faust.Worker):  # type: ignore[misc]
        def _schedule_shutdown(self, sig: signal.Signals) -> None:
            # mode.Worker's one entry for SIGTERM and SIGINT (its _on_sigterm/_on_sigint call it)
            on_stop_signal(signal.Signals(sig).name)
            super()._schedule_shutdown(sig)

        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            super().on_setup_root_logger(logger, level)
            on_root_logger(logger)

    return PricingWorker


# ---------------------------------------------------------------- versions
VERIFIED: dict[str, tuple[str, ...]] = {
    # package -> versions whose private API the overrides in this module were read and tested against
    "faust-streaming": ("0.15.3",),
    "mode-streaming": ("0.7.1",),
    "aiokafka": ("0.14.0",),
}


class FaustVersionError(RuntimeError):
    """An installed Faust or aiokafka version that the overrides here were not verified against."""


def check_versions(installed: dict[str, str] | None = None) -> dict[str, str]:
    """The installed versions of the packages in ``VERIFIED``; raises if one was not verified.

    >>> check_versions({"faust-streaming": "0.15.3", "aiokafka": "0.14.0"})["aiokafka"]
    '0.14.0'
    """
    found = dict(installed) if installed is not None else {}
    for name in VERIFIED:
        if name not in found:
            try:
                found[name] = version(name)
            except PackageNotFoundError:
                found[name] = "not installed"
    bad = {n: v for n, v in found.items() if n in VERIFIED and v not in VERIFIED[n]}
    if bad:
        have = ", ".join(f"{n} {v}" for n, v in sorted(bad.items()))
        want = ", ".join(f"{n} {' or '.join(v)}" for n, v in sorted(VERIFIED.items()))
        raise FaustVersionError(
            f"streams/faust_compat.py overrides Faust and aiokafka internals and was verified against {want}; "
            f"installed: {have}. Install the pinned versions (pip install -e .), or re-verify the overrides "
            f"against the new versions and add them to VERIFIED.")
    return found


# ---------------------------------------------------------------- table writes and metadata
@contextmanager
def as_of(event: Any) -> Iterator[None]:
    """Within the block, Faust takes ``event`` as the current event (its partition routes table writes)."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def write_as_of(table: MutableMapping[bytes, bytes], key: bytes, value: bytes, event: Any) -> None:
    """``table[key] = value``, its changelog record sent to the partition of ``event``.

    Faust routes a table write to the partition of the event being processed, which it reads from
    a context variable; an agent that writes after a batch (one write per user per batch) names
    the event that last touched the user, so the state lives in that user's partition.
    """
    with as_of(event):
        table[key] = value


def hold_back(app: Any, events: Any) -> int:
    """Make sure ``events`` are never acknowledged in this process: Faust's commits stop before the
    first of them in each partition, so a restart reads them again. Returns how many were held back.

    ``take_events`` acks its batch in a ``finally`` even when the agent's body raised, and an acked
    offset is committed. Faust's ``Consumer.ack`` records an offset only for a message whose
    ``acked`` flag is still clear; setting the flag (under Faust's own ``ack_lock``) without
    recording the offset leaves a gap that no commit passes. The message also leaves the set of
    unacked messages, so a graceful stop does not wait for it.
    """
    from faust.types.tuples import ack_lock

    consumer = app.consumer
    held = 0
    with ack_lock:
        for event in events:
            message = event.message
            if not message.acked:
                message.acked = True
                consumer._unacked_messages.discard(message)
                held += 1
    return held


async def topic_partitions(consumer: Any, topic: str) -> set[int]:
    """Partitions of ``topic`` for an aiokafka consumer outside any group (empty if unknown yet).

    ``partitions_for_topic`` reads the client's metadata cache, which an unassigned consumer never
    fills for a topic it has not subscribed to: ask for that topic's metadata first.
    """
    consumer._client.set_topics([topic])
    await consumer._client.force_metadata_update()
    return set(consumer.partitions_for_topic(topic) or ())


def sought_offsets(consumer: Any) -> Mapping[Any, int | None]:
    """The committed offset per partition that Faust's consumer sought to at assignment (its private
    ``_committed_offset``), for the consumer-lag gauge before this process's first commit."""
    return dict(getattr(consumer, "_committed_offset", {}))
