"""A real worker's /metrics, /healthz and /ready against the real broker.

The worker starts before its catalog is published: /ready must name the catalog as missing (and
only the catalog, once recovery and the bundle are in place), then turn 200 when the catalog
arrives. Then events go through, and the scraped counters must add up with what was sent and with
the price events on the topic.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from export.bundle import read_current
from streams.schemas import CatalogItem, ClickEvent, decision_id, dumps, parse_price
from streams.settings import Settings, load_settings
from streams.tools.source import keyed, publish
from streams.topics import ensure_topics
from tests.integration.net import free_port, get

REPO = Path(__file__).resolve().parents[2]
NOW = time.time()
CATALOG = [CatalogItem(f"i{k}", f"cat{k % 3}", 10.0 + k, 4.0 + k / 2, 8.0 + k * 0.8, 12.0 + k * 1.2)
           for k in range(8)]
TYPES = ["view", "click", "view", "add_to_cart", "purchase", "review"]




def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    code, body = get(base + "/metrics")
    assert code == 200, code
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


def by_label(samples: dict, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name}


def wait_for(what: str, check: Callable[[], object], timeout: float, log: Path) -> object:
    """Poll ``check`` until it returns something true; fail with the last value and the worker's log tail."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if last is True or (last and not isinstance(last, str)):  # a string says why not yet
            return last
        time.sleep(0.25)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    pytest.fail(f"timed out waiting for {what} (last: {last!r})\n{tail}", pytrace=False)


def read_prices(s: Settings, want: set[str], timeout: float, log: Path) -> list:
    consumer = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    consumer.assign([TopicPartition(s.topic_prices, p) for p in consumer.partitions_for_topic(s.topic_prices)])
    records: list = []
    try:
        wait_for("the prices of every trigger", lambda: bool(
            [records.extend(b) for b in consumer.poll(timeout_ms=500).values()] or True)
            and want <= {parse_price(r.value).decision_id for r in records}, timeout, log)
    finally:
        consumer.close()
    return [parse_price(r.value) for r in records]


def test_ready_waits_for_the_catalog_and_the_counters_add_up(bootstrap: str, tmp_path: Path, model_dir: Path) -> None:
    tag, port = uuid.uuid4().hex[:8], free_port()
    settings = {
        "PRICING_KAFKA_BOOTSTRAP": bootstrap, "PRICING_APP_ID": f"it-metrics-{tag}",
        "PRICING_TOPIC_CLICKSTREAM": f"clicks-{tag}", "PRICING_TOPIC_CATALOG": f"catalog-{tag}",
        "PRICING_TOPIC_PRICES": f"prices-{tag}", "PRICING_TOPIC_DEAD_LETTER": f"dlq-{tag}",
        "PRICING_PARTITIONS": "4", "PRICING_MODEL_DIR": str(model_dir), "PRICING_TOP_K": "2",
        "PRICING_USER_HASH_KEY": "it-secret", "PRICING_BATCH_WITHIN_S": "0.05", "PRICING_DATA_DIR": str(tmp_path / "w"),
        "PRICING_METRICS_PORT": str(port), "PRICING_METRICS_HOST": "127.0.0.1", "PRICING_LOG_FORMAT": "json",
        # three arms; with this key and the default salt the five users fall into all three
        "PRICING_TREATMENT_SHARE": "0.34", "PRICING_UNIFORM_SHARE": "0.33",
    }
    s = load_settings(settings)
    ensure_topics(s)  # the catalog topic exists but is empty
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRICING_")} | settings
    log = tmp_path / "worker.log"
    worker = subprocess.Popen([sys.executable, "-m", "streams.app"], env=env, cwd=REPO, stdout=log.open("wb"),
                              stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for("/healthz 200", lambda: get(base + "/healthz")[0] == 200, 60, log)
        first = get(base + "/ready")
        assert first[0] == 503 and "catalog" in orjson.loads(first[1])["missing"], first
        # bundle loaded and table recovery done, and still not ready: the catalog is what is missing
        wait_for("/ready missing only the catalog",
                 lambda: set(orjson.loads(get(base + "/ready")[1])["missing"]) == {"catalog"}, 60, log)
        time.sleep(1.5)
        code, body = get(base + "/ready")
        assert code == 503 and orjson.loads(body)["missing"] == {"catalog": "catalog is empty"}, body

        producer = KafkaProducer(bootstrap_servers=bootstrap)
        # one catalog record that does not parse: dead-lettered and counted apart from the clickstream's
        publish(producer, s.topic_catalog, [(c.item_id.encode(), dumps(c)) for c in CATALOG] + [(b"i-bad", b"{oops")])
        wait_for("/ready 200 after the catalog", lambda: get(base + "/ready")[0] == 200, 30, log)

        good = [ClickEvent(f"e{k}-{u}", NOW - 3000 + k, f"user-{u}", f"s{u}", TYPES[(k + u) % len(TYPES)],
                           f"i{(u + k) % 8}", 9.0 + k % 5, 1, 4.0 if TYPES[(k + u) % len(TYPES)] == "review" else None)
                for k in range(6) for u in range(5)]
        bad = [b"{oops", b"[]", b'{"event_id":"x"}', dumps(good[0]).replace(b'"view"', b'"hover"')]
        result = publish(producer, s.topic_clickstream, keyed([dumps(e) for e in good] + bad))
        producer.close()
        assert result.failed == 0, result.first_error
        triggers = [e for e in good if e.type in s.triggers]
        prices = read_prices(s, {decision_id(e.event_id, e.item_id) for e in triggers}, 120, log)
        sent = len(good) + len(bad)
        wait_for("every record counted", lambda: scrape(base).get(("pricing_records_total", ())) == sent, 30, log)
        m = scrape(base)

        events = by_label(m, "pricing_events_total", "type")
        letters = by_label(m, "pricing_dead_letters_total", "code")
        assert events == dict(Counter(e.type for e in good))
        assert sum(events[t] for t in s.triggers) == len(triggers)
        assert letters == {"NOT_JSON": 1, "NOT_OBJECT": 1, "MISSING_FIELD": 1, "UNKNOWN_EVENT_TYPE": 1}
        assert sum(events.values()) + sum(letters.values()) == sent
        arms = by_label(m, "pricing_prices_total", "arm")
        assert arms == dict(Counter(p.arm for p in prices)) and sum(arms.values()) == len(prices)
        # own item + top 2 for each trigger: sent, or left out as unchanged (PRICING_RESEND_UNCHANGED_S)
        unchanged = by_label(m, "pricing_pipeline_counts_total", "key").get("unchanged_prices", 0)
        assert len(prices) + unchanged == len(triggers) * 3
        assert len({p.decision_id for p in prices if any(p.decision_id == decision_id(e.event_id, e.item_id)
                                                         for e in triggers)}) == len(triggers)  # own items: all
        reasons = by_label(m, "pricing_price_reasons_total", "reason")
        assert reasons == dict(Counter(r for p in prices for r in p.reasons))
        assert reasons.get("CONTROL", 0) == arms.get("control", 0)
        assert set(arms) == {"control", "uniform", "treatment"}
        assert reasons.get("UNIFORM", 0) == arms["uniform"] and {p.policy for p in prices if p.arm == "uniform"} == {
            "uniform"}
        # the uniform arm: one price per item, whoever the user (the bundle's uniform.json, in the guardrails)
        assert all(len({p.price for p in prices if p.arm == "uniform" and p.item_id == i}) == 1
                   for i in {p.item_id for p in prices if p.arm == "uniform"})
        assert m[("pricing_batch_size_sum", ())] == sent == m[("pricing_decision_latency_seconds_count", ())]
        assert m[("pricing_batch_seconds_count", ())] == m[("pricing_batch_size_count", ())] >= 1
        # produced a moment ago: every record's latency is well under a minute
        assert m[("pricing_decision_latency_seconds_bucket", (("le", "60.0"),))] == sent
        assert m[("pricing_catalog_items", ())] == len(CATALOG)
        assert by_label(m, "pricing_catalog_dead_letters_total", "code") == {"NOT_JSON": 1}
        assert by_label(m, "pricing_model_info", "version") == {read_current(model_dir): 1.0}
        assert 0 <= m[("pricing_model_age_seconds", ())] < 600
        assert m[("pricing_recovering", ())] == 0
        # the worker commits every second: the lag of each of the 4 partitions drops to 0
        zero = {str(p): 0.0 for p in range(4)}
        lag = wait_for("zero lag on all 4 partitions", lambda: (lag := by_label(scrape(base), "pricing_consumer_lag",
                       "partition")) == zero or f"lag {lag}", 30, log)
        assert lag is True
        assert get(base + "/healthz")[0] == 200
        assert worker.poll() is None
        # PRICING_LOG_FORMAT=json: every line of the worker's output is one JSON object
        lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
        parsed = [orjson.loads(ln) for ln in lines]
        assert any(p["logger"] == "pricing.worker" and p["message"].startswith("catalog loaded") for p in parsed)
        assert all({"ts", "level", "logger", "message"} <= p.keys() for p in parsed)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
