"""Each override of Faust's and aiokafka's private API (streams/faust_compat.py), against stand-ins.

The integration tests (kill -9, two-worker takeover) prove the whole fix on a real broker; these
pin down the contract of each piece: where a seek puts each partition, which fetched batches
reach Faust, in which order recovery ends, where a table write is routed, and which versions
the module agrees to run on.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from aiokafka import TopicPartition
from faust.streams import current_event

from streams import faust_compat
from streams.faust_compat import (
    FaustVersionError,
    OrderedRecovery,
    PricingApp,
    PricingTableManager,
    SafeConsumerThread,
    check_versions,
    hold_back,
    topic_partitions,
    write_as_of,
)

CLICKS = [TopicPartition("clicks", p) for p in range(3)]
CHANGELOG = TopicPartition("app-users-changelog", 0)


class FakeConsumer:
    """What SafeConsumerThread uses of AIOKafkaConsumer: assignment, committed, offsets, seek."""

    _max_poll_records = None

    def __init__(self, committed: dict[TopicPartition, int | None]) -> None:
        self._committed = committed
        self.positions: dict[TopicPartition, int] = {}

    def assignment(self) -> set[TopicPartition]:
        return {*CLICKS, CHANGELOG}

    async def committed(self, tp: TopicPartition) -> int | None:
        return self._committed.get(tp)

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 5 for tp in tps}  # log start after retention

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 900 for tp in tps}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset


def thread(consumer: FakeConsumer, reset: str = "earliest") -> Any:
    t: Any = object.__new__(SafeConsumerThread)  # no Faust service around it: only the methods under test
    t._ensure_consumer = lambda: consumer
    t.consumer = SimpleNamespace(_is_changelog_tp=lambda tp: tp.topic.endswith("-changelog"))
    t.app = SimpleNamespace(conf=SimpleNamespace(consumer_auto_offset_reset=reset))

    async def call_thread(fun: Any, *args: Any, **kwargs: Any) -> Any:
        return await fun(*args, **kwargs)
    t.call_thread = call_thread
    return t


def test_seek_moves_every_stream_partition_and_bumps_the_epoch() -> None:
    consumer = FakeConsumer({CLICKS[0]: 120, CLICKS[1]: 0})
    t = thread(consumer)
    got = asyncio.run(t.seek_to_committed())
    # committed -> there (0 included, which aiokafka's own seek skips); none -> log start;
    # the changelog is left to recovery
    assert consumer.positions == {CLICKS[0]: 120, CLICKS[1]: 0, CLICKS[2]: 5}
    assert got == {CLICKS[0]: 120, CLICKS[1]: 0, CLICKS[2]: None, CHANGELOG: None}
    assert t._seek_epoch == 1
    consumer2 = FakeConsumer({})
    asyncio.run(thread(consumer2, reset="latest").seek_to_committed())
    assert consumer2.positions == {tp: 900 for tp in CLICKS}


def test_stream_records_collected_before_a_seek_are_dropped() -> None:
    t = thread(FakeConsumer({}))
    batches: list[tuple[dict, int]] = []

    async def fetch(consumer: Any, partitions: Any, timeout: float, max_records: Any) -> tuple[dict, int]:
        assert isinstance(partitions, frozenset)  # never Faust's live, mutable set
        return batches.pop(0)
    t._fetch_tagged = fetch
    t._seek_epoch = 3
    batches += [({CLICKS[0]: ["stale"], CHANGELOG: ["standby"]}, 2), ({CLICKS[0]: ["fresh"]}, 3)]
    # the seek moved the stream partition back (its records come again), not the changelog
    assert asyncio.run(t.getmany({CLICKS[0], CHANGELOG}, 1.0)) == {CHANGELOG: ["standby"]}
    assert asyncio.run(t.getmany({CLICKS[0]}, 1.0)) == {CLICKS[0]: ["fresh"]}


def test_an_empty_partition_set_fetches_nothing() -> None:
    t = thread(FakeConsumer({}))

    async def fetch(*args: Any) -> tuple[dict, int]:
        raise AssertionError("aiokafka reads an empty set as every partition: must not be asked")
    t._fetch_tagged = fetch
    assert asyncio.run(t.getmany(set(), 1.0)) == {}


# ---------------------------------------------------------------- OrderedRecovery
class Calls(list):
    def record(self, name: str, result: Any = None) -> Any:
        def f(*args: Any, **kwargs: Any) -> Any:
            self.append(name)
            return result
        return f


def recovery(calls: Calls, generation_now: int = 7, generation_after_seek: int | None = None) -> Any:
    """An OrderedRecovery with only what on_recovery_completed touches, each touch recorded."""
    r: Any = object.__new__(OrderedRecovery)
    generations = iter([generation_now, generation_after_seek if generation_after_seek is not None
                        else generation_now])

    class App:
        @property
        def consumer_generation_id(self) -> int:
            return next(generations, generation_now)

    app: Any = App()
    consumer = SimpleNamespace(
        assignment=lambda: {*CLICKS, CHANGELOG}, _buffered_partitions={CLICKS[0], CHANGELOG},
        perform_seek=calls.record("seek"), resume_partitions=lambda tps: calls.append(("resume", frozenset(tps))),
        resume_flow=calls.record("resume_flow"))
    app.consumer = consumer
    app.conf = SimpleNamespace(broker_request_timeout=1.0)
    app.on_rebalance_complete = SimpleNamespace(send=lambda: asyncio.sleep(0))
    app.flow_control = SimpleNamespace(resume=calls.record("flow_control.resume"))
    app._fetcher = SimpleNamespace(maybe_start=lambda: asyncio.sleep(0))
    app.assignor = SimpleNamespace(assigned_standbys=lambda: [])
    app.on_rebalance_end = calls.record("rebalance_end")
    r.app = app
    r.log = SimpleNamespace(info=lambda *a: None, warning=lambda *a: calls.append("warning"))
    r._set_recovery_ended = calls.record("recovery_ended")
    r.tables = SimpleNamespace(values=lambda: [], on_actives_ready=calls.record("actives_ready"),
                               on_standbys_ready=calls.record("standbys_ready"))
    r.actives_for_table, r.standbys_for_table = {}, {}
    r._is_changelog_tp = lambda tp: tp.topic.endswith("-changelog")
    r.completed = SimpleNamespace(set=calls.record("completed"))

    async def wait(coro: Any, timeout: float) -> None:
        await asyncio.sleep(0)
    r._wait = wait
    return r


def test_recovery_seeks_the_paused_stream_partitions_before_it_resumes_them() -> None:
    calls = Calls()
    r = recovery(calls)
    asyncio.run(r.on_recovery_completed(generation_id=7))
    resume = ("resume", frozenset(CLICKS))  # the stream partitions only, never the changelog
    assert calls.index("seek") < calls.index(resume) < calls.index("flow_control.resume") < calls.index("resume_flow")
    assert r.app.consumer._buffered_partitions == {CHANGELOG}  # nothing buffered bypasses the pause
    assert calls[-3:] == ["actives_ready", "standbys_ready", "rebalance_end"]


def test_recovery_that_is_overtaken_by_a_rebalance_resumes_nothing() -> None:
    for gen_now, gen_after in ((8, None), (7, 9)):  # a new generation before, or right after, the seek
        calls = Calls()
        asyncio.run(recovery(calls, gen_now, gen_after).on_recovery_completed(generation_id=7))
        assert "warning" in calls
        assert not any(isinstance(c, tuple) for c in calls) and "resume_flow" not in calls


def test_the_table_manager_and_the_app_use_the_overrides() -> None:
    app = PricingApp("compat-test", broker="kafka://127.0.0.1:1", store="memory://",
                     TableManager=PricingTableManager)
    assert isinstance(app.tables.recovery, OrderedRecovery)
    assert app.tables.recovery is app.tables.recovery  # created once
    consumer_cls = app._new_transport().Consumer
    assert consumer_cls._new_consumer_thread is not faust.transport.drivers.aiokafka.Consumer._new_consumer_thread


def test_fetch_wait_is_the_apps_setting() -> None:
    t: Any = object.__new__(SafeConsumerThread)
    t.app = SimpleNamespace(fetch_max_wait_ms=20)
    made = SimpleNamespace(_fetch_max_wait_ms=1500)
    base = faust_compat.faust_aiokafka.AIOKafkaConsumerThread
    original = base._create_worker_consumer
    base._create_worker_consumer = lambda self, transport: made  # type: ignore[method-assign]
    try:
        assert t._create_worker_consumer(None)._fetch_max_wait_ms == 20
    finally:
        base._create_worker_consumer = original  # type: ignore[method-assign]


# ---------------------------------------------------------------- table writes, metadata, versions
def test_a_table_write_names_the_event_whose_partition_routes_it() -> None:
    seen: list[Any] = []

    class Table(dict):
        def __setitem__(self, key: bytes, value: bytes) -> None:
            seen.append(current_event())
            super().__setitem__(key, value)

    class Event:  # weak-referenceable, as Faust's events are
        message = SimpleNamespace(partition=3)

    event = Event()
    table = Table()
    write_as_of(table, b"u", b"state", event)
    assert table == {b"u": b"state"} and seen == [event]
    assert current_event() is None  # the context is restored after the write


def test_a_held_back_batch_is_never_recorded_as_acked_so_no_commit_passes_it() -> None:
    # Faust's take_events acks its batch in a `finally`, also when the agent's body raised: held
    # back, those acks record nothing, and the commit offset stops before the batch
    from faust.types import Message

    app = faust.App("hold-back-test", store="memory://")
    app.finalize()
    consumer = app.consumer
    app.topics._acking_topics.add("clicks")  # what subscribing the agent's stream does
    tp = TopicPartition("clicks", 0)

    def message(offset: int) -> Message:
        m = Message(topic="clicks", partition=0, offset=offset, timestamp=0.0, timestamp_type=0, headers=[],
                    key=b"k", value=b"v", checksum=None)
        consumer.track_message(m)
        return m

    done, failed, later = message(0), [message(1), message(2)], message(3)
    assert consumer.ack(done) is True  # the control: an ordinary ack is recorded
    assert hold_back(app, [SimpleNamespace(message=m) for m in failed]) == 2
    assert [consumer.ack(m) for m in failed] == [False, False]  # take_events' finally: no effect
    assert consumer.ack(later) is True
    assert sorted(consumer._acked[tp]) == [0, 3]
    assert consumer._new_offset(tp) == 1  # the next commit: offset 1, the first held-back event
    assert not any(m in consumer._unacked_messages for m in failed)  # a stop does not wait for them
    assert hold_back(app, [SimpleNamespace(message=done)]) == 0  # already acked: nothing to hold


def test_topic_partitions_asks_for_the_topics_metadata_first() -> None:
    asked: list[Any] = []

    class Client:
        def set_topics(self, topics: list[str]) -> None:
            asked.append(topics)

        async def force_metadata_update(self) -> None:
            asked.append("update")

    consumer = SimpleNamespace(_client=Client(), partitions_for_topic=lambda t: {0, 1} if asked else None)
    assert asyncio.run(topic_partitions(consumer, "catalog")) == {0, 1}
    assert asked == [["catalog"], "update"]
    empty = SimpleNamespace(_client=Client(), partitions_for_topic=lambda t: None)
    assert asyncio.run(topic_partitions(empty, "nope")) == set()


def test_versions_are_checked_against_the_verified_ones() -> None:
    assert check_versions()["faust-streaming"] in faust_compat.VERIFIED["faust-streaming"]
    with pytest.raises(FaustVersionError, match=r"faust-streaming 0\.16\.0.*VERIFIED"):
        check_versions({"faust-streaming": "0.16.0", "aiokafka": "0.14.0"})
    with pytest.raises(FaustVersionError, match="aiokafka not installed"):
        check_versions({"faust-streaming": "0.15.3", "aiokafka": "not installed"})


async def test_final_commit_on_stop_is_bounded(caplog) -> None:
    # Faust's stop waits for in-flight events and commits, unbounded: with the brokers gone it never ends
    app = PricingApp("bounded-stop", broker="kafka://127.0.0.1:1", store="memory://")
    never = asyncio.Event()

    class Stuck:
        _unacked_messages = {object()}
        should_stop = False

        async def wait_empty(self) -> None:
            await never.wait()

    app.commit_on_stop_timeout_s = 0.2
    t0 = asyncio.get_running_loop().time()
    await app._consumer_wait_empty(Stuck(), app.log)
    assert asyncio.get_running_loop().time() - t0 < 2.0
    assert "final offset commit did not finish" in caplog.text


async def test_final_commit_unbounded_by_default() -> None:
    app = PricingApp("default-stop", broker="kafka://127.0.0.1:1", store="memory://")
    assert app.commit_on_stop_timeout_s is None
    done: list[bool] = []

    class Quick:
        async def wait_empty(self) -> None:
            done.append(True)

    await app._consumer_wait_empty(Quick(), app.log)
    assert done == [True]


# ---------------------------------------------------------------- bounded stop, lag
def test_the_final_commit_on_stop_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    async def forever(self: Any, consumer: Any, logger: Any) -> None:
        await asyncio.sleep(3600)  # Faust's commit with the brokers gone
    monkeypatch.setattr(faust.App, "_consumer_wait_empty", forever)
    app = PricingApp("compat-stop", broker="kafka://127.0.0.1:1", store="memory://")
    warned: list[str] = []
    logger = SimpleNamespace(warning=lambda msg, *a: warned.append(msg % a))
    app.commit_on_stop_timeout_s = 0.05
    asyncio.run(asyncio.wait_for(app._consumer_wait_empty(None, logger), 5.0))  # returns: bounded
    assert warned and "did not finish within" in warned[0]
    app.commit_on_stop_timeout_s = None  # Faust's own behaviour when no bound is set: it waits
    with pytest.raises(TimeoutError):
        asyncio.run(asyncio.wait_for(app._consumer_wait_empty(None, logger), 0.2))


def test_a_consumer_threads_stop_wait_is_the_apps_bound() -> None:
    thread = SimpleNamespace(shutdown_timeout=60.0)
    faust_compat._bound_thread_stop(thread, SimpleNamespace(thread_shutdown_timeout_s=6.5))
    assert thread.shutdown_timeout == 6.5
    faust_compat._bound_thread_stop(thread, SimpleNamespace())  # an app without the setting: left alone
    assert thread.shutdown_timeout == 6.5


def test_sought_offsets_are_a_copy_of_what_faust_sought() -> None:
    offsets = {CLICKS[0]: 12, CLICKS[1]: None}
    consumer = SimpleNamespace(_committed_offset=offsets)
    got = faust_compat.sought_offsets(consumer)
    assert got == offsets and got is not offsets
    assert faust_compat.sought_offsets(SimpleNamespace()) == {}
