"""The closed loop for real: broker, pricing worker on an exported bundle, live market, evaluation.

A short run (one simulated day of the small market in about 45 s) must give exposures in both
arms with prices inside the guardrails, and both evaluation paths (exposure log and Kafka topics)
must run, agree, and write the report.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.settings import Settings, load_settings
from streams.tools.evaluate import load_exposure_log
from streams.topics import ensure_topics

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def loop_env(bootstrap: str, tmp_path: Path, model_dir: Path) -> Iterator[tuple[Settings, dict[str, str]]]:
    """Unique topics and app id, a running worker on the session's bundle; stopped at the end."""
    tag = uuid.uuid4().hex[:8]
    settings = {
        "PRICING_KAFKA_BOOTSTRAP": bootstrap, "PRICING_APP_ID": f"loop-{tag}",
        "PRICING_TOPIC_CLICKSTREAM": f"loop-clicks-{tag}", "PRICING_TOPIC_CATALOG": f"loop-catalog-{tag}",
        "PRICING_TOPIC_PRICES": f"loop-prices-{tag}", "PRICING_TOPIC_DEAD_LETTER": f"loop-dlq-{tag}",
        "PRICING_MODEL_DIR": str(model_dir), "PRICING_DATA_DIR": str(tmp_path / "worker"),
        "PRICING_USER_HASH_KEY": "loop-secret", "PRICING_SESSION_TIMEOUT_S": "6",
        "PRICING_METRICS_PORT": "0",  # the default port may be taken by another worker on this machine
        "PRICING_TREATMENT_SHARE": "0.3334", "PRICING_UNIFORM_SHARE": "0.3333",  # three arms, as the demo
    }
    s = load_settings(settings)
    ensure_topics(s)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRICING_")} | settings
    log = tmp_path / "worker.log"
    worker = subprocess.Popen([sys.executable, "-m", "streams.app"], env=env, cwd=REPO, stdout=log.open("wb"),
                              stderr=subprocess.STDOUT)
    try:
        yield s, env
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()


def run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, *cmd], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd[:2]} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_closed_loop_run_is_priced_within_guardrails_and_evaluated(
        loop_env: tuple[Settings, dict[str, str]], model_dir: Path, tmp_path: Path) -> None:
    s, env = loop_env
    train_dir = model_dir.parent / "train"
    out = tmp_path / "run"
    run(["-m", "models.lab.live_market", "--train-dir", str(train_dir), "--out", str(out), "--days", "1",
         "--duration", "45", "--publish-catalog", "--wait-ready", "120"], env, timeout=300)

    meta = json.loads((out / "meta.json").read_text())
    assert meta["delivery_failures"] == 0
    assert meta["views"] > 500 and meta["price_timeouts"] <= 0.02 * meta["views"], meta
    exp, pur, _ = load_exposure_log(out)
    arms = set(exp.arm.tolist())
    assert {"control", "uniform", "treatment"} <= arms
    assert len(pur.user) > 0

    # every shown price inside the guardrails: +-20 % of base, the item's bounds, margin floor
    from models.lab.simulator import Market, MarketConfig

    market = Market(MarketConfig(**meta["market"]))
    priced = exp.arm != "none"
    i = exp.item_index[priced]
    price, base = exp.price[priced], exp.base_price[priced]
    assert (abs(price / base - 1.0) <= s.max_deviation + 1e-6).all()
    assert (price >= market.min_price[i] - 1e-6).all() and (price <= market.max_price[i] + 1e-6).all()
    assert (price >= market.cost[i] * (1 + s.margin_floor) - 1e-6).all()
    control = exp.arm == "control"
    assert (exp.price[control] == exp.base_price[control]).all()
    # the uniform arm: one price per item for every user (the bundle's uniform.json through the guardrails)
    uni = exp.arm == "uniform"
    assert all(len(set(exp.price[uni & (exp.item == it)].tolist())) == 1 for it in set(exp.item[uni].tolist()))

    # the exposure-log evaluation writes the report
    report = tmp_path / "report"
    shown = run(["-m", "models.lab.evaluate", "--exposures", str(out), "--model-dir", str(model_dir),
                 "--report-dir", str(report), "--resamples", "300"], env, timeout=300).stdout
    assert "lift of treatment over control" in shown and "efficiency" in shown
    assert "treatment over uniform" in shown and "better off" in shown
    for name in ("report.md", "result.json", "lift.png", "prices.png", "fairness.png", "conversion.png", "demand.png"):
        assert (report / name).stat().st_size > 0, name
    result = json.loads((report / "result.json").read_text())
    assert result["arms"]["treatment"]["users"] > 0 and result["arms"]["control"]["users"] > 0
    assert result["arms"]["uniform"]["users"] > 0 and set(result["welfare"]["arms"]) == {"control", "uniform",
                                                                                          "treatment"}

    # the generic path (topics only) sees the same exposures and purchases
    kafka = json.loads(run(["-m", "models.lab.evaluate", "--kafka", "--train-dir", str(train_dir), "--no-report",
                            "--json", "--resamples", "300"], env, timeout=300).stdout)
    assert kafka["counts"]["exposures"] == result["counts"]["exposures"]
    assert kafka["counts"]["purchases_in"] == result["counts"]["purchases_in"]
    for arm in ("control", "uniform", "treatment"):
        assert kafka["arms"][arm]["exposures"] == result["arms"][arm]["exposures"]
        assert kafka["arms"][arm]["purchases"] == result["arms"][arm]["purchases"]
        assert kafka["arms"][arm]["profit_per_user"] == pytest.approx(result["arms"][arm]["profit_per_user"])


def test_warm_up_history_is_consumed_before_the_loop_starts(
        loop_env: tuple[Settings, dict[str, str]], model_dir: Path, tmp_path: Path) -> None:
    # the demo first replays recent history so the worker starts with user state; the loop may
    # only start once the worker's group has committed the whole history
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    s, env = loop_env
    out = tmp_path / "run"
    run(["-m", "models.lab.live_market", "--train-dir", str(model_dir.parent / "train"), "--out", str(out),
         "--days", "0.1", "--duration", "8", "--warm-days", "0.5", "--publish-catalog", "--wait-ready", "120"],
        env, timeout=300)
    meta = json.loads((out / "meta.json").read_text())
    warm = meta["warm_up"]
    assert warm["events"] > 100 and warm["days"] == 0.5, warm
    assert meta["delivery_failures"] == 0 and meta["views"] > 0
    # warm-up events are not exposures, and they precede the loop's clock
    exposures = [json.loads(line) for line in (out / "exposures.jsonl").read_text().splitlines()]
    assert exposures and all(row["ts"] >= meta["sim_start"] for row in exposures)
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert len(events) >= meta["events"]  # the loop's events (and the readiness probes), no history
    assert not any(e["event_id"].startswith(f"{meta['run_id']}-w") for e in events)
    # the clickstream holds the warm-up history (before sim_start) and the worker consumed all of it
    consumer = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(s.topic_clickstream, p) for p in consumer.partitions_for_topic(s.topic_clickstream)]
    end = sum(consumer.end_offsets(tps).values())
    consumer.close()
    assert end >= warm["events"] + meta["events"]
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    committed = admin.list_group_offsets(s.app_id)[s.app_id]
    admin.close()
    assert sum(om.offset for tp, om in committed.items() if tp.topic == s.topic_clickstream) >= warm["events"]
    # the topics-only evaluation, windowed at the loop's start, sees the loop's exposures, not the history
    whole = json.loads(run(["-m", "streams.tools.evaluate_cmd", "--kafka", "--no-report", "--json", "--resamples", "50"],
                           env, timeout=300).stdout)
    windowed = json.loads(run(["-m", "streams.tools.evaluate_cmd", "--kafka", "--since", str(meta["sim_start"]), "--no-report",
                               "--json", "--resamples", "50"], env, timeout=300).stdout)
    assert windowed["counts"]["exposures"] == len(exposures) == meta["views"]
    assert whole["counts"]["exposures"] > windowed["counts"]["exposures"]
