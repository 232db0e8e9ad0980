"""The consumer-thread half of the restart fix, against a stand-in aiokafka consumer.

The integration tests (kill -9, two-worker takeover) prove the whole fix on a real broker; these
pin down the contract of each piece: where a seek puts each partition, and which fetched batches
reach Faust.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

from streams.recovery import SafeConsumerThread

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
