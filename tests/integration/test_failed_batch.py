"""A batch whose prices the broker refuses is never committed: the worker stops with exit 75, and a
restart, once the broker takes them, prices every trigger with the state as if nothing happened.
And the one input that used to make the worker's own output unsendable, a record near the broker's
size limit whose dead letter (base64) would be larger still, is dead-lettered cut to its first
bytes, and the worker goes on.

Faust acks the batch of a crashed agent (``take_events`` acks in a ``finally``) and goes on with the
next events; before this was caught, such a batch was committed unpriced. Here the broker really
refuses the records: the prices topic's ``max.message.bytes`` is set below the size of one price.
"""

from __future__ import annotations

import time

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from streams.schemas import DEAD_LETTER_MAX_ORIGINAL, dumps, parse_dead_letter, parse_price
from streams.settings import Settings
from tests.integration import test_worker
from tests.integration.test_worker import (
    assert_state_as_if_never_stopped,
    expected_ids,
    make_events,
    read_topic,
    send_events,
)

deployment = test_worker.deployment  # the fixture: unique topics on the shared broker, a worker factory
EXIT_BATCH_FAILED = 75


def _prices_max_bytes(s: Settings, value: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    try:  # a full (non-incremental) update: the topic's other configs fall back to the broker's defaults
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, s.topic_prices,
                                            configs={"max.message.bytes": str(value)})])
    finally:
        admin.close()


def _committed(s: Settings) -> dict[int, int]:
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    try:
        got = admin.list_group_offsets(s.app_id).get(s.app_id, {})
    finally:
        admin.close()
    return {tp.partition: om.offset for tp, om in got.items() if tp.topic == s.topic_clickstream and om.offset > 0}


def test_refused_prices_stop_the_worker_uncommitted_and_a_restart_prices_them(deployment) -> None:
    s, start = deployment
    _prices_max_bytes(s, 64)  # one price event is ~400 bytes: every produce to prices fails
    evs = make_events(n_users=6, per_user=5)
    send_events(s, [dumps(e) for e in evs])
    worker = start("w")
    deadline = time.monotonic() + 120
    while worker.alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not worker.alive(), "the worker kept running after its prices were refused\n" + worker.tail(60)
    log = worker.log.read_text(errors="replace")
    assert worker.proc.returncode == EXIT_BATCH_FAILED, worker.tail(60)
    assert "events failed" in log and "MessageSizeTooLarge" in log, worker.tail(60)
    assert _committed(s) == {}, "a batch whose prices were refused was committed"

    _prices_max_bytes(s, 1_048_588)  # the broker's default again
    worker = start("w")  # same data dir: its table state already holds the failed batch's events
    want = expected_ids(s, evs)
    read_topic(s, s.topic_prices, lambda r: want <= {parse_price(x.value).decision_id for x in r}, 120,
               worker.tail)
    assert_state_as_if_never_stopped(s, evs)  # the replayed events were not folded in twice


def test_a_record_near_the_size_limit_is_dead_lettered_cut_and_the_worker_goes_on(deployment) -> None:
    s, start = deployment
    worker = start("w")
    before, after = make_events(n_users=2, per_user=3), make_events(n_users=2, per_user=3, start=100)
    huge = b"x" * (900 * 1024)  # accepted by a default topic (1 MiB); its whole dead letter would not be
    send_events(s, [dumps(e) for e in before] + [huge] + [dumps(e) for e in after])
    want = expected_ids(s, before + after)
    read_topic(s, s.topic_prices, lambda r: want <= {parse_price(x.value).decision_id for x in r}, 120,
               worker.tail)
    letters = read_topic(s, s.topic_dead_letter, lambda r: len(r) >= 1, 30, worker.tail)
    letter = parse_dead_letter(letters[0].value)
    assert letter.error_code == "OVERSIZE" and letter.original_size == len(huge)
    assert letter.original == huge[:DEAD_LETTER_MAX_ORIGINAL]
    assert letter.topic == s.topic_clickstream
    assert _record_at(s, letter.partition, letter.offset) == huge  # the whole record, where the letter says
    assert worker.alive(), worker.tail()


def _record_at(s: Settings, partition: int, offset: int) -> bytes:
    consumer = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False,
                             max_partition_fetch_bytes=2 * 1024 * 1024)
    tp = TopicPartition(s.topic_clickstream, partition)
    try:
        consumer.assign([tp])
        consumer.seek(tp, offset)
        for _ in range(20):
            for batch in consumer.poll(timeout_ms=500).values():
                return bytes(batch[0].value)
    finally:
        consumer.close()
    raise AssertionError(f"no record at {s.topic_clickstream}/{partition}@{offset}")
