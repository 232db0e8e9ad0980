"""Worker metrics without Faust: counters from the pipeline's counts, the bulk histogram, the endpoints."""

from __future__ import annotations

import io
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from streams.catalog import Catalog
from streams.health import MetricsServerError, serve
from streams.logs import JsonFormatter
from streams.metrics import LATENCY_BUCKETS, BulkHistogram, Snapshot, WorkerMetrics
from streams.pipeline import Pipeline, RawRecord
from streams.schemas import CatalogItem, parse_price
from streams.scoring import DeterministicScorer
from streams.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
NOW = 1_700_000_000.0
READY = dict(catalog_caught_up=True, catalog_items=3, bundle_loaded=True, model_version="v1",
             model_loaded_at=NOW - 60, recovery_done=True)


def test_bulk_histogram_matches_prometheus_histogram_value_by_value() -> None:
    values = np.concatenate([np.array(LATENCY_BUCKETS), np.random.default_rng(0).exponential(0.3, 500), [0.0, 99.0]])
    bulk_reg, ref_reg = CollectorRegistry(), CollectorRegistry()
    bulk = BulkHistogram("lat_seconds", "x", LATENCY_BUCKETS, bulk_reg)
    ref = Histogram("lat_seconds", "x", buckets=LATENCY_BUCKETS, registry=ref_reg)
    bulk.observe_many(values[:200])
    bulk.observe_many(values[200:])
    for v in values:
        ref.observe(float(v))
    for le in [*map(str, map(float, LATENCY_BUCKETS)), "+Inf"]:
        assert bulk_reg.get_sample_value("lat_seconds_bucket", {"le": le}) == \
            ref_reg.get_sample_value("lat_seconds_bucket", {"le": le}), le
    assert bulk_reg.get_sample_value("lat_seconds_count") == len(values)
    assert bulk_reg.get_sample_value("lat_seconds_sum") == pytest.approx(ref_reg.get_sample_value("lat_seconds_sum"))


def test_batch_counts_land_in_their_labelled_counters() -> None:
    m = WorkerMetrics()
    counts = Counter({"event.view": 5, "event.purchase": 1, "dead_letter.NOT_JSON": 2, "price.treatment": 6,
                      "price.control": 3, "reason.OPTIMAL": 4, "reason.CLIP_MAX_DEVIATION": 2, "reason.CONTROL": 3,
                      "skipped.UNKNOWN_ITEM": 1, "replayed": 2, "something.new": 7})
    m.on_batch(counts, records=8, seconds=0.004, record_ts=[NOW - 0.5] * 7 + [0.0], done_at=NOW)
    m.on_batch(counts, records=8, seconds=0.006, record_ts=[], done_at=NOW)
    v = m.value
    assert v("pricing_records_total") == 16
    assert (v("pricing_events_total", type="view"), v("pricing_events_total", type="purchase")) == (10, 2)
    assert v("pricing_dead_letters_total", code="NOT_JSON") == 4
    assert (v("pricing_prices_total", arm="treatment"), v("pricing_prices_total", arm="control")) == (12, 6)
    assert v("pricing_price_reasons_total", reason="CONTROL") == 6
    assert v("pricing_skipped_triggers_total", reason="UNKNOWN_ITEM") == 2
    assert v("pricing_replayed_events_total") == 4
    assert v("pricing_pipeline_counts_total", key="something.new") == 14  # nothing counted is lost
    assert v("pricing_batch_size_count") == 2 and v("pricing_batch_size_sum") == 16
    assert v("pricing_batch_seconds_sum") == pytest.approx(0.01)
    # a record without a timestamp (0) has no latency; the other 7 waited 0.5 s
    assert v("pricing_decision_latency_seconds_count") == 7
    assert v("pricing_decision_latency_seconds_bucket", le="0.25") == 0
    assert v("pricing_decision_latency_seconds_bucket", le="0.5") == 7


def test_pipeline_counts_add_up_and_reasons_match_the_price_events() -> None:
    catalog = Catalog()
    for k in range(6):
        catalog.put(CatalogItem(f"i{k}", f"c{k % 3}", 10.0 + k, 5.0, 8.0, 20.0))
    scorer = DeterministicScorer()
    pipe = Pipeline(load_settings({}, treatment_share=0.5), catalog, lambda: scorer, lambda: NOW)
    types = ["view", "click", "add_to_cart", "purchase", "review", "view"]
    batch = []
    for off in range(60):
        user, typ = f"u{off % 7}", types[off % len(types)]
        value = orjson.dumps({"event_id": f"e{off}", "ts": NOW - 1000 + off, "user_id": user, "session_id": "s",
                              "type": typ, "item_id": f"i{off % 7}", "price": 10.0,
                              **({"rating": 4.0} if typ == "review" else {})})
        batch.append(RawRecord(user.encode(), b"{bad" if off % 13 == 0 else value, "clickstream", 0, off))
    out = pipe.process(batch, {}.get)
    c = out.counts
    events = {k[6:]: n for k, n in c.items() if k.startswith("event.")}
    letters = sum(n for k, n in c.items() if k.startswith("dead_letter."))
    assert sum(events.values()) + letters == len(batch) and letters == len(out.dead_letters) == 5
    prices = [parse_price(v) for _, v in out.prices]
    assert {a: c[f"price.{a}"] for a in ("control", "treatment")} == dict(Counter(p.arm for p in prices))
    assert {"control", "treatment"} == {p.arm for p in prices}  # both arms exercised
    want = Counter(r for p in prices for r in p.reasons)
    assert {k[7:]: n for k, n in c.items() if k.startswith("reason.")} == dict(want)
    assert c["reason.CONTROL"] == c["price.control"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_endpoints_report_metrics_liveness_and_what_readiness_misses() -> None:
    m = WorkerMetrics()
    port = _free_port()
    server = serve(m, "127.0.0.1", port, stall_s=0.5)
    try:
        base = f"http://127.0.0.1:{port}"
        code, body = _get(base + "/ready")
        assert code == 503 and set(orjson.loads(body)["missing"]) == {"catalog", "bundle", "recovery"}
        m.update(Snapshot(time.monotonic(), **{**READY, "catalog_items": 0}))
        code, body = _get(base + "/ready")
        assert code == 503 and orjson.loads(body)["missing"] == {"catalog": "catalog is empty"}
        m.update(Snapshot(time.monotonic(), **READY, lag={("clicks", 1): 7}))
        assert _get(base + "/ready") == (200, b'{"ready":true,"missing":{}}')
        assert _get(base + "/healthz")[0] == 200
        code, body = _get(base + "/metrics")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        assert families["pricing_model_info"].samples[0].labels == {"version": "v1"}
        assert families["pricing_model_age_seconds"].samples[0].value == pytest.approx(time.time() - (NOW - 60), abs=5)
        assert [(s.labels, s.value) for s in families["pricing_consumer_lag"].samples] == \
            [({"topic": "clicks", "partition": "1"}, 7.0)]
        assert families["pricing_catalog_items"].samples[0].value == 3
        time.sleep(0.6)  # no sample for longer than stall_s: the loop is considered stuck
        code, body = _get(base + "/healthz")
        assert code == 503 and orjson.loads(body)["event_loop_silence_s"] >= 0.5
        assert _get(base + "/nope")[0] == 404
    finally:
        server.shutdown()


def test_a_taken_port_is_an_error_naming_the_setting() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(MetricsServerError, match="PRICING_METRICS_PORT"):
            serve(WorkerMetrics(), "127.0.0.1", port, 10.0)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRICING_")}
        env |= {"PRICING_METRICS_PORT": str(port), "PRICING_METRICS_HOST": "127.0.0.1", "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, "-m", "streams.app", "--deterministic-scorer"], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "PRICING_METRICS_PORT" in done.stderr, done.stderr


def test_json_log_lines_carry_extra_fields_and_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("pricing.test-json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("lag %d on %s", 12, "clicks", extra={"partition": 3, "path": Path("/x")})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    first, second = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert {k: first[k] for k in ("level", "logger", "message", "partition", "path")} == \
        {"level": "WARNING", "logger": "pricing.test-json", "message": "lag 12 on clicks", "partition": 3, "path": "/x"}
    assert first["ts"].endswith("+00:00") and "exc" not in first
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc"]
