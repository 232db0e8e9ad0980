"""The worker and the tools over TLS, mTLS and SASL_SSL/SCRAM against a real secured broker.

The module starts its own broker with ``broker.py up --security`` (own ports and data dir; a
throwaway CA, a client certificate and a SCRAM user) and stops it at the end. Events go in with
``pricing-replay`` and the prices come out of a ``pricing-worker`` (deterministic scorer: the
point here is the connection, not the model); both read only PRICING_* settings.
Refused credentials must fail fast, typed and named: exit 3 and the setting in the message.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streams.kafka_config import kafka_python_config
from streams.schemas import CatalogItem, ClickEvent, decision_id, dumps, parse_price
from streams.settings import Settings, load_settings
from streams.tools.source import publish
from streams.topics import ensure_topics

REPO = Path(__file__).resolve().parents[2]
CATALOG = [CatalogItem(f"i{k}", f"cat{k % 3}", 10.0 + k, 4.0 + k / 2, 8.0 + k * 0.8, 12.0 + k * 1.2)
           for k in range(6)]
TIMEOUT_S = 60  # a refused login must be reported well within this, never hang
pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def secured(local_brokers):
    return local_brokers(security=True)


def _env(base: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRICING_")}
    return env | base | extra


def _deployment(secured, listener: str, tmp_path: Path) -> tuple[dict[str, str], Settings]:
    tag = uuid.uuid4().hex[:8]
    pricing = secured.client_env(listener) | {
        "PRICING_APP_ID": f"sec-{tag}", "PRICING_TOPIC_CLICKSTREAM": f"clicks-{tag}",
        "PRICING_TOPIC_CATALOG": f"catalog-{tag}", "PRICING_TOPIC_PRICES": f"prices-{tag}",
        "PRICING_TOPIC_DEAD_LETTER": f"dlq-{tag}", "PRICING_PARTITIONS": "2", "PRICING_TOP_K": "1",
        "PRICING_SESSION_TIMEOUT_S": "6", "PRICING_USER_HASH_KEY": "it-secret", "PRICING_STORE": "memory://",
        "PRICING_DATA_DIR": str(tmp_path / "worker"), "PRICING_BATCH_WITHIN_S": "0.05",
        "PRICING_METRICS_PORT": "0",  # the default port may be taken by another worker on this machine
    }
    s = load_settings(pricing)
    ensure_topics(s)  # pricing-topics' code path over the secured listener
    producer = KafkaProducer(**kafka_python_config(s))
    done = publish(producer, s.topic_catalog, [(c.item_id.encode(), dumps(c)) for c in CATALOG])
    producer.close()
    assert done.failed == 0, done.first_error
    return pricing, s


def _events(n_users: int, per_user: int) -> list[ClickEvent]:
    now = time.time()
    types = ["view", "click", "add_to_cart", "purchase"]
    return [ClickEvent(f"e{k}-{u}", now - 600 + k, f"user-{u}", f"s{u}", types[(k + u) % 4], f"i{(u + k) % 6}",
                       9.0 + k % 3, 1, None) for k in range(per_user) for u in range(n_users)]


def _read_prices(s: Settings, want: set[str], timeout: float, logs) -> set[str]:
    consumer = KafkaConsumer(enable_auto_commit=False, auto_offset_reset="earliest", **kafka_python_config(s))
    consumer.assign([TopicPartition(s.topic_prices, p) for p in range(s.partitions)])
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not want <= seen:
            for batch in consumer.poll(timeout_ms=500).values():
                seen |= {parse_price(r.value).decision_id for r in batch}
    finally:
        consumer.close()
    assert want <= seen, f"{len(want - seen)} of {len(want)} triggers unpriced\n{logs()}"
    return seen


def _replay(env: dict[str, str], path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.tools.replay", str(path), "--rate", "2000", "--no-progress",
                           "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.mark.parametrize("listener", ["ssl", "mtls", "sasl_ssl"])
def test_worker_and_replay_price_events_over_the_secured_listener(secured, listener: str, tmp_path: Path) -> None:
    pricing, s = _deployment(secured, listener, tmp_path)
    assert s.kafka_security_protocol == ("SASL_SSL" if listener == "sasl_ssl" else "SSL")
    if listener == "mtls":
        assert s.kafka_ssl_certfile and s.kafka_ssl_key_password  # the encrypted client key is used
    if listener == "sasl_ssl":
        assert s.kafka_sasl_mechanism == "SCRAM-SHA-512"
    log = tmp_path / "worker.log"
    worker = subprocess.Popen([sys.executable, "-m", "streams.app", "--deterministic-scorer"], cwd=REPO,
                              env=_env(pricing), stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        evs = _events(n_users=4, per_user=5)
        events = tmp_path / "events.jsonl"
        events.write_bytes(b"\n".join(dumps(e) for e in evs) + b"\n")
        done = _replay(_env(pricing), events)
        assert done.returncode == 0, done.stderr
        want = {decision_id(e.event_id, e.item_id) for e in evs if e.type in s.triggers}
        _read_prices(s, want, 120, lambda: log.read_text(errors="replace")[-4000:])
        assert worker.poll() is None, log.read_text(errors="replace")[-4000:]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    # the worker's own consumers and producer used the secured listener, not a fallback
    assert "ssl_context is mandatory" not in log.read_text(errors="replace")


def _untrusted_ca(tmp_path: Path) -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location("it_kafka_security", REPO / "deploy" / "kafka" / "kafka_security.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    _key, cert = mod.make_ca("someone else's CA")
    path = tmp_path / "other-ca.pem"
    path.write_bytes(mod.pem(cert))
    return path


@pytest.mark.parametrize(("case", "named"), [
    ("wrong_password", "PRICING_KAFKA_SASL_PASSWORD"),
    ("untrusted_ca", "PRICING_KAFKA_SSL_CAFILE"),
    ("no_client_cert", "PRICING_KAFKA_SSL_CERTFILE"),
])
def test_refused_credentials_fail_fast_typed_and_named(secured, tmp_path: Path, case: str, named: str) -> None:
    if case == "wrong_password":
        pricing = secured.client_env("sasl_ssl") | {"PRICING_KAFKA_SASL_PASSWORD": "not-the-password"}
    elif case == "untrusted_ca":
        pricing = secured.client_env("ssl") | {"PRICING_KAFKA_SSL_CAFILE": str(_untrusted_ca(tmp_path))}
    else:  # the mTLS listener with the plain SSL settings
        pricing = secured.client_env("ssl") | {"PRICING_KAFKA_BOOTSTRAP": secured.client_env("mtls")[
            "PRICING_KAFKA_BOOTSTRAP"]}
    pricing |= {"PRICING_DATA_DIR": str(tmp_path / "worker"), "PRICING_STORE": "memory://", "PRICING_METRICS_PORT": "0"}
    events = tmp_path / "events.jsonl"
    events.write_bytes(dumps(_events(1, 1)[0]) + b"\n")
    commands = {"pricing-replay": [sys.executable, "-m", "streams.tools.replay", str(events), "--no-progress"],
                "pricing-worker": [sys.executable, "-m", "streams.app", "--deterministic-scorer"],
                "pricing-topics": [sys.executable, "-m", "streams.topics"]}
    for prog, cmd in commands.items():
        t0 = time.monotonic()
        done = subprocess.run(cmd, cwd=REPO, env=_env(pricing), capture_output=True, text=True, timeout=TIMEOUT_S)
        took = time.monotonic() - t0
        assert done.returncode == 3, (prog, done.returncode, done.stderr[-3000:])
        err = done.stderr.strip().splitlines()
        assert err and err[-1].startswith(f"{prog}: error: KafkaSecurityError: "), (prog, done.stderr[-3000:])
        assert named in err[-1], (prog, err[-1])
        assert "Traceback" not in done.stderr, (prog, done.stderr[-3000:])
        print(f"{case} {prog}: exit 3 after {took:.1f} s: {err[-1][:160]}")
