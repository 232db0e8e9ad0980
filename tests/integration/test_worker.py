"""The pricing worker as a real process against the real broker.

Scenarios: valid events priced and malformed ones dead-lettered (worker stays up); kill -9
mid-stream and restart (state equals a run that never crashed, every trigger priced); two
workers share a 4-partition clickstream and one takes over when the other dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from export.bundle import read_current
from streams.features import FeatureSpec, category_levels, new_state, update
from streams.privacy import UserHasher
from streams.schemas import CatalogItem, ClickEvent, decision_id, dumps, parse_dead_letter, parse_price
from streams.settings import Settings, load_settings
from streams.state import decode_record
from streams.tools.source import keyed, publish
from streams.topics import changelog_topic, ensure_topics

REPO = Path(__file__).resolve().parents[2]
NOW = time.time()
CATALOG = [CatalogItem(f"i{k}", f"cat{k % 3}", 10.0 + k, 4.0 + k / 2, 8.0 + k * 0.8, 12.0 + k * 1.2)
           for k in range(8)]


class Worker:
    """One ``pricing-worker`` subprocess with its own log file."""

    def __init__(self, env: dict[str, str], log: Path, model_args: list[str]) -> None:
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "streams.app", *model_args], env=env, cwd=REPO,
                                     stdout=log.open("ab"), stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture()
def models_copy(model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the session's bundle directory, for tests that export into it."""
    import shutil

    return Path(shutil.copytree(model_dir, tmp_path / "models"))


@pytest.fixture()
def deployment(bootstrap: str, tmp_path: Path, model_dir: Path) -> Iterator[tuple[Settings, Callable[..., Worker]]]:
    """Unique topics and app id; a factory for workers; every worker is stopped at the end."""
    tag = uuid.uuid4().hex[:8]
    env_settings = {
        "PRICING_KAFKA_BOOTSTRAP": bootstrap, "PRICING_APP_ID": f"it-{tag}",
        "PRICING_TOPIC_CLICKSTREAM": f"clicks-{tag}", "PRICING_TOPIC_CATALOG": f"catalog-{tag}",
        "PRICING_TOPIC_PRICES": f"prices-{tag}", "PRICING_TOPIC_DEAD_LETTER": f"dlq-{tag}",
        "PRICING_PARTITIONS": "4", "PRICING_SESSION_TIMEOUT_S": "6", "PRICING_MODEL_DIR": str(model_dir),
        "PRICING_TOP_K": "2", "PRICING_USER_HASH_KEY": "it-secret", "PRICING_BATCH_WITHIN_S": "0.05",
        "PRICING_METRICS_PORT": "0",  # several workers per test, and other test runs on this machine
    }
    s = load_settings(env_settings)
    ensure_topics(s)
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    publish(producer, s.topic_catalog, [(c.item_id.encode(), dumps(c)) for c in CATALOG])
    producer.close()
    workers: list[Worker] = []

    def start(name: str = "w", **overrides: str) -> Worker:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRICING_")}
        env |= env_settings | {"PRICING_DATA_DIR": str(tmp_path / name)} | overrides
        w = Worker(env, tmp_path / f"{name}.log", [])
        workers.append(w)
        return w

    yield s, start
    for w in workers:
        w.kill(signal.SIGTERM)


def owned_partitions(worker: Worker, topic: str) -> set[int]:
    """Partitions of ``topic`` in the worker's latest assignment, as Faust logs it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = [line for line in worker.log.read_text(errors="replace").splitlines()
                if line.startswith(f"| {topic} ") and "{" in line]
        if rows:  # e.g. "| clicks-x | {0-1, 3} |"
            out: set[int] = set()
            for part in rows[-1].split("{")[1].split("}")[0].split(","):
                lo, _, hi = part.strip().partition("-")
                out |= set(range(int(lo), int(hi or lo) + 1))
            return out
        time.sleep(0.5)
    return set()


def make_events(n_users: int, per_user: int, start: int = 0) -> list[ClickEvent]:
    types = ["view", "click", "view", "add_to_cart", "purchase", "review"]
    evs = []
    for k in range(per_user):
        for u in range(n_users):
            typ = types[(k + u) % len(types)]
            evs.append(ClickEvent(f"e{start + k}-{u}", NOW - 3000 + start + k, f"user-{u}", f"s{u}-{k // 4}", typ,
                                  f"i{(u + k) % 8}", 9.0 + (k % 5), 1, 4.0 if typ == "review" else None))
    return evs


def send_events(s: Settings, payloads: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=s.kafka_bootstrap)
    result = publish(producer, s.topic_clickstream, keyed(payloads))
    producer.close()
    assert result.failed == 0, result.first_error


def read_topic(s: Settings, topic: str, until: Callable[[list], bool], timeout: float,
               worker_logs: Callable[[], str] = lambda: "") -> list:
    """All records of ``topic`` from the start, polled until ``until(records)`` or the timeout."""
    consumer = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=500)
    parts = consumer.partitions_for_topic(topic) or {0}
    consumer.assign([TopicPartition(topic, p) for p in parts])
    records: list = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
            if until(records):
                return records
    finally:
        consumer.close()
    pytest.fail(f"timed out with {len(records)} records on {topic}\n{worker_logs()}", pytrace=False)


def wait_for_commit(s: Settings, timeout: float, worker_logs: Callable[[], str]) -> dict[int, int]:
    """Poll the worker group's committed clickstream offsets until any is above zero."""
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            got = admin.list_group_offsets(s.app_id).get(s.app_id, {})
            committed = {tp.partition: om.offset for tp, om in got.items() if tp.topic == s.topic_clickstream}
            if any(offset > 0 for offset in committed.values()):
                return committed
            time.sleep(0.02)
    finally:
        admin.close()
    pytest.fail(f"no offset committed within {timeout} s\n{worker_logs()}", pytrace=False)


def read_all(s: Settings, topic: str) -> list:
    """Every record of ``topic`` up to its end offsets now."""
    consumer = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or {0}]
    consumer.assign(tps)
    end = consumer.end_offsets(tps)
    records: list = []
    try:
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def final_states(s: Settings, ref: dict[bytes, object], timeout: float = 60.0) -> dict[bytes, bytes]:
    """Latest value per key of the worker's user-table changelog, once every user of ``ref`` is there
    with its newest event folded in (or what is there after ``timeout``: the caller's asserts say what is off)."""
    topic = changelog_topic(s)
    deadline = time.monotonic() + timeout
    while True:
        latest: dict[bytes, bytes] = {}
        for r in sorted(read_all(s, topic), key=lambda r: (r.partition, r.offset)):
            latest[r.key] = r.value
        done = all(k in latest and _clock(decode_record(latest[k]).features) == _clock(st) for k, st in ref.items())
        if done or time.monotonic() > deadline:
            return latest
        time.sleep(0.2)


def _clock(state: object) -> tuple:
    return state.t, state.prev_t, state.session, state.depth


def reference_features(s: Settings, evs: list[ClickEvent]) -> dict[bytes, object]:
    """Each user's features from folding their events in order: a run that never crashed."""
    spec, hasher = FeatureSpec.from_settings(s), UserHasher(s.user_hash_key.get_secret_value())
    items = {c.item_id: c for c in CATALOG}
    levels = dict(zip(items, category_levels([c.category for c in CATALOG], [c.base_price for c in CATALOG]),
                      strict=True))
    states: dict[bytes, object] = {}
    for ev in evs:
        key = hasher.hash(ev.user_id).encode()
        st = states.setdefault(key, new_state(spec))
        update(st, ev, spec, base_price=items[ev.item_id].base_price, category=items[ev.item_id].category,
               level=levels[ev.item_id])
    return states


def assert_same_features(got: object, want: object) -> None:
    """Equal up to float rounding (batching may change nothing else)."""
    assert (got.t, got.prev_t, got.session, got.depth) == (want.t, want.prev_t, want.session, want.depth)
    for field in ("counts", "sums", "buckets"):
        assert getattr(got, field) == pytest.approx(getattr(want, field), rel=1e-9, abs=1e-12), field


def assert_state_as_if_never_stopped(s: Settings, evs: list[ClickEvent]) -> None:
    """Every user's final table state equals the one folded from their events in order, by a run that never stopped."""
    ref = reference_features(s, evs)
    states = final_states(s, ref)
    assert set(states) == set(ref)
    for key, blob in states.items():
        assert_same_features(decode_record(blob).features, ref[key])


def expected_ids(s: Settings, evs: list[ClickEvent]) -> set[str]:
    """The decision for each trigger event's own item (recommended ones vary with the model)."""
    return {decision_id(e.event_id, e.item_id) for e in evs if e.type in s.triggers}


def test_events_priced_and_malformed_dead_lettered(deployment, model_dir: Path) -> None:
    s, start = deployment
    worker = start(PRICING_RESEND_UNCHANGED_S="0")  # every price sent, so the count below is exact
    good = make_events(n_users=3, per_user=4)
    bad = [b"{oops", b'{"event_id":"x"}', dumps(good[0]).replace(b'"view"', b'"hover"'),
           dumps(good[0]).replace(b'"price":9.0', b'"price":-3.0'), b"\xff" * 10, b"[]",
           orjson.dumps({**orjson.loads(dumps(good[0])), "ts": NOW + 86400})]
    send_events(s, [dumps(e) for e in good[:6]] + bad + [dumps(e) for e in good[6:]])
    want = expected_ids(s, good)
    prices = read_topic(s, s.topic_prices, lambda r: want <= {parse_price(x.value).decision_id for x in r},
                        timeout=120, worker_logs=worker.tail)
    letters = read_topic(s, s.topic_dead_letter, lambda r: len(r) >= len(bad), timeout=30,
                         worker_logs=worker.tail)
    codes = sorted(parse_dead_letter(r.value).error_code for r in letters)
    assert codes == sorted(["NOT_JSON", "MISSING_FIELD", "UNKNOWN_EVENT_TYPE", "BAD_PRICE", "NOT_JSON",
                            "NOT_OBJECT", "FUTURE_TIMESTAMP"])
    assert {parse_dead_letter(r.value).original for r in letters} == set(bad)
    assert worker.alive(), worker.tail()
    events = [parse_price(r.value) for r in prices]
    # priced by the really exported ONNX bundle, whose version every decision carries
    assert {p.model_version for p in events} == {read_current(model_dir)}
    assert {p.arm for p in events} <= {"control", "treatment"}
    assert all(r.key == parse_price(r.value).user_id.encode() for r in prices)  # keyed by user
    # one PriceEvent per trigger per candidate (own item + top-2), no more
    n_triggers = sum(e.type in s.triggers for e in good)
    assert len({p.decision_id for p in events}) == n_triggers * 3


def test_kill_9_and_restart_loses_nothing(deployment) -> None:
    s, start = deployment
    evs = make_events(n_users=40, per_user=60)
    send_events(s, [dumps(e) for e in evs])
    want = expected_ids(s, evs)
    worker = start("a")

    def ids(recs: list) -> set[str]:
        return {parse_price(r.value).decision_id for r in recs}

    # kill -9 right after the group's first offset commit: restart must resume from committed
    # offsets (not from the start) while part of the stream is still unprocessed
    committed = wait_for_commit(s, 60, worker.tail)
    worker.kill(signal.SIGKILL)
    assert sum(committed.values()) < len(evs), "killed too late to test"
    assert not (want <= ids(read_all(s, s.topic_prices))), "killed too late to test"
    worker = start("a")  # same data dir: rocksdb state plus changelog recovery
    read_topic(s, s.topic_prices, lambda r: want <= ids(r), 180, worker.tail)
    assert_state_as_if_never_stopped(s, evs)


def test_two_workers_share_partitions_and_take_over(deployment) -> None:
    s, start = deployment
    first = make_events(n_users=40, per_user=10)
    a, b = start("a"), start("b")
    send_events(s, [dumps(e) for e in first])
    want = expected_ids(s, first)
    read_topic(s, s.topic_prices, lambda r: want <= {parse_price(x.value).decision_id for x in r}, 180,
               lambda: a.tail() + "\n" + b.tail())
    # both workers own clickstream partitions, and together all four
    owned_a, owned_b = owned_partitions(a, s.topic_clickstream), owned_partitions(b, s.topic_clickstream)
    assert owned_a and owned_b and owned_a | owned_b == {0, 1, 2, 3}, (owned_a, owned_b)
    b.kill(signal.SIGKILL)
    second = make_events(n_users=40, per_user=10, start=10)
    send_events(s, [dumps(e) for e in second])
    want2 = expected_ids(s, second)
    read_topic(s, s.topic_prices, lambda r: want2 <= {parse_price(x.value).decision_id for x in r}, 180, a.tail)
    assert owned_partitions(a, s.topic_clickstream) == {0, 1, 2, 3}
    # the survivor took over b's partitions and their state: every user's features include all events
    assert_state_as_if_never_stopped(s, first + second)


def test_newer_bundle_is_picked_up_without_restart_or_gap(deployment, models_copy: Path, tmp_path: Path) -> None:
    s, start = deployment
    worker = start(PRICING_MODEL_DIR=str(models_copy), PRICING_MODEL_RELOAD_S="1")
    old = read_current(models_copy)
    first = make_events(n_users=10, per_user=6)
    send_events(s, [dumps(e) for e in first])
    want = expected_ids(s, first)
    read_topic(s, s.topic_prices, lambda r: want <= {parse_price(x.value).decision_id for x in r}, 120, worker.tail)
    # train a different model (another seed) and export it into the directory the worker watches
    train, out = tmp_path / "train2", str(models_copy)
    for cmd in (["-m", "models.train", "--small", "--seed", "7", "--out", str(train), "--no-plots", "--quiet"],
                ["-m", "export", "--train-dir", str(train), "--model-dir", out, "--no-progress"]):
        subprocess.run([sys.executable, *cmd], cwd=REPO, check=True, capture_output=True, timeout=600)
    new = read_current(models_copy)
    assert new != old
    # the worker checks CURRENT every PRICING_MODEL_RELOAD_S and logs the swap: wait for that line
    deadline = time.monotonic() + 60
    while f"model bundle {old} -> {new}" not in worker.log.read_text() and time.monotonic() < deadline:
        assert worker.alive(), worker.tail()
        time.sleep(0.2)
    second = make_events(n_users=10, per_user=6, start=100)
    send_events(s, [dumps(e) for e in second])
    want2 = expected_ids(s, second)
    recs = read_topic(s, s.topic_prices, lambda r: want2 <= {parse_price(x.value).decision_id for x in r}, 120,
                      worker.tail)
    assert worker.alive(), worker.tail()
    versions = {p.decision_id: p.model_version for p in map(lambda r: parse_price(r.value), recs)}
    assert {versions[d] for d in want} == {old}      # before the swap: the old model
    assert {versions[d] for d in want2} == {new}     # after it: every decision by the new one, none missing
    assert f"model bundle {old} -> {new}" in worker.log.read_text()
