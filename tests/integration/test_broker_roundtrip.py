"""The local broker really carries messages: both Python clients, keys, partitions, groups.

These pin down what the pipeline relies on: records keyed by user land on one partition chosen
by the murmur2 partitioner (the same one Java clients, aiokafka and Faust use, so topics written
by different clients stay co-partitioned), and a consumer group resumes from its committed
offset (what lets a restarted Faust worker pick up where it stopped).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import OffsetAndMetadata as AIOOffsetAndMetadata
from aiokafka.structs import TopicPartition as AIOTopicPartition
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.partitioner.default import murmur2
from kafka.structs import OffsetAndMetadata

pytestmark = pytest.mark.timeout(120)

KEYS = [f"user-{i}".encode() for i in range(12)]
PER_KEY = 3
PARTITIONS = 3


def expected_partition(key: bytes, partitions: int = PARTITIONS) -> int:
    """Kafka's default partitioner for keyed records (Java DefaultPartitioner / BuiltInPartitioner)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def keyed_messages() -> list[tuple[bytes, bytes]]:
    return [(key, f"{key.decode()}:{n}".encode()) for n in range(PER_KEY) for key in KEYS]


def read_all(bootstrap: str, topic: str, partitions: int, expected: int, timeout: float = 30.0):
    """Read a topic from the beginning with manual assignment until `expected` records arrived."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    records = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def check_keyed_records(records, sent_partitions: dict[bytes, set[int]]) -> None:
    assert len(records) == len(KEYS) * PER_KEY
    by_key: dict[bytes, list] = defaultdict(list)
    for record in records:
        by_key[record.key].append(record)
    assert set(by_key) == set(KEYS)
    for key, recs in by_key.items():
        partitions = {r.partition for r in recs}
        # every record of a key is on one partition: the one murmur2 picks and the producer reported
        assert partitions == {expected_partition(key)} == sent_partitions[key], key
        # and in the order it was produced (per-key ordering is what the feature table needs)
        assert [r.value for r in sorted(recs, key=lambda r: r.offset)] == [
            f"{key.decode()}:{n}".encode() for n in range(PER_KEY)
        ]
    assert len({r.partition for r in records}) > 1, "12 keys should spread over 3 partitions"


def test_kafka_python_keyed_roundtrip(bootstrap: str, topic_factory) -> None:
    topic = topic_factory(partitions=PARTITIONS)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    sent: dict[bytes, set[int]] = defaultdict(set)
    try:
        futures = [(key, producer.send(topic, key=key, value=value))
                   for key, value in keyed_messages()]
        producer.flush(timeout=30)
        for key, future in futures:
            sent[key].add(future.get(timeout=10).partition)
    finally:
        producer.close()

    check_keyed_records(read_all(bootstrap, topic, PARTITIONS, len(KEYS) * PER_KEY), sent)


def test_aiokafka_keyed_roundtrip(bootstrap: str, topic_factory) -> None:
    topic = topic_factory(partitions=PARTITIONS)

    async def produce() -> dict[bytes, set[int]]:
        sent: dict[bytes, set[int]] = defaultdict(set)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for key, value in keyed_messages():
                metadata = await producer.send_and_wait(topic, key=key, value=value)
                sent[key].add(metadata.partition)
        finally:
            await producer.stop()
        return sent

    async def consume(expected: int) -> list:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            consumer.assign([AIOTopicPartition(topic, p) for p in range(PARTITIONS)])
            records: list = []
            async with asyncio.timeout(30):
                while len(records) < expected:
                    for batch in (await consumer.getmany(timeout_ms=500)).values():
                        records.extend(batch)
            return records
        finally:
            await consumer.stop()

    sent = asyncio.run(produce())
    check_keyed_records(asyncio.run(consume(len(KEYS) * PER_KEY)), sent)


def _produce_numbered(bootstrap: str, topic: str, count: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for n in range(count):
            producer.send(topic, key=b"k", value=str(n).encode())
        producer.flush(timeout=30)
    finally:
        producer.close()


def _group_consumer(bootstrap: str, topic: str, group: str) -> KafkaConsumer:
    return KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                         enable_auto_commit=False, auto_offset_reset="earliest")


def _take(consumer: KafkaConsumer, count: int, timeout: float = 30.0) -> list:
    """Records one at a time (poll may hand over more than asked; they stay uncommitted)."""
    taken: list = []
    deadline = time.monotonic() + timeout
    while len(taken) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500, max_records=count - len(taken)).values():
            taken.extend(batch)
    return taken


def test_consumer_group_resumes_from_commit(bootstrap: str, topic_factory) -> None:
    topic = topic_factory(partitions=1)
    group = f"it-group-{uuid.uuid4().hex[:8]}"
    _produce_numbered(bootstrap, topic, 10)

    first = _group_consumer(bootstrap, topic, group)
    try:
        head = _take(first, 5)
        assert [r.value for r in head] == [str(n).encode() for n in range(5)]
        first.commit({TopicPartition(topic, 0): OffsetAndMetadata(head[-1].offset + 1, "", -1)})
    finally:
        first.close(autocommit=False)

    second = _group_consumer(bootstrap, topic, group)
    try:
        rest = _take(second, 5)
        assert [r.value for r in rest] == [str(n).encode() for n in range(5, 10)]
        assert _take(second, 1, timeout=1.0) == []  # nothing beyond the 10 produced
        assert second.committed(TopicPartition(topic, 0)) == 5
    finally:
        second.close(autocommit=False)


def test_aiokafka_group_resumes_from_kafka_python_commit(bootstrap: str, topic_factory) -> None:
    """Faust consumes through aiokafka: it must see offsets committed by any client."""
    topic = topic_factory(partitions=1)
    group = f"it-group-{uuid.uuid4().hex[:8]}"
    _produce_numbered(bootstrap, topic, 10)

    first = _group_consumer(bootstrap, topic, group)
    try:
        head = _take(first, 5)
        first.commit({TopicPartition(topic, 0): OffsetAndMetadata(head[-1].offset + 1, "", -1)})
    finally:
        first.close(autocommit=False)

    async def resume() -> list[bytes]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        values: list[bytes] = []
        try:
            async with asyncio.timeout(30):
                while len(values) < 5:
                    for batch in (await consumer.getmany(timeout_ms=500)).values():
                        values.extend(r.value for r in batch)
            tp = AIOTopicPartition(topic, 0)
            await consumer.commit({tp: AIOOffsetAndMetadata(10, "")})
            assert await consumer.committed(tp) == 10
        finally:
            await consumer.stop()
        return values

    assert asyncio.run(resume()) == [str(n).encode() for n in range(5, 10)]
