"""``pricing-monitor`` in a real headless Chromium, beside a real worker pricing a live stream.

The page must show numbers (throughput, latency, both arms' exposures), and they must change
between two refreshes while events keep coming. The screenshot goes to var/monitor.png (and to
docs/monitor.png, the README's, with UPDATE_SCREENSHOT=1).
Chromium is Debian's (``apt-get install chromium``; deploy/run-tests.sh installs it when missing),
driven by Playwright; a missing browser fails the test, it is never skipped.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from streams.schemas import CatalogItem, ClickEvent, dumps
from streams.settings import load_settings
from streams.tools.source import publish
from streams.topics import ensure_topics
from tests.integration.net import free_port, get

REPO = Path(__file__).resolve().parents[2]
CATALOG = [CatalogItem(f"i{k}", f"cat{k % 3}", 10.0 + k, 4.0 + k / 2, 8.0 + k * 0.8, 12.0 + k * 1.2)
           for k in range(8)]




def wait_until(what: str, check, timeout: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    tails = "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:]) for p in logs)
    pytest.fail(f"timed out waiting for {what}\n{tails}", pytrace=False)


def stream_events(bootstrap: str, topic: str, stop: threading.Event) -> None:
    """About 150 events/s: sessions of views, some followed by a purchase of the viewed item."""
    producer, rng, k = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5), random.Random(7), 0
    try:
        while not stop.is_set():
            for _ in range(30):
                user, item = f"user-{rng.randrange(200)}", CATALOG[rng.randrange(len(CATALOG))]
                types = ["view", "click"] + (["purchase"] if rng.random() < 0.3 else [])
                if rng.random() < 0.02:
                    producer.send(topic, key=user.encode(), value=b"{not json")
                for typ in types:
                    k += 1
                    ev = ClickEvent(f"m{k}", time.time(), user, f"s-{user}", typ, item.item_id, item.base_price)
                    producer.send(topic, key=user.encode(), value=dumps(ev))
            producer.flush()
            stop.wait(0.5)
    finally:
        producer.close()


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("no chromium on PATH: `apt-get install -y chromium` (deploy/run-tests.sh does it as root)",
                    pytrace=False)
    return path


def test_monitor_page_shows_live_numbers_that_change(bootstrap: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    browser_path = chromium_path()
    tag, wport, mport = uuid.uuid4().hex[:8], free_port(), free_port()
    settings = {
        "PRICING_KAFKA_BOOTSTRAP": bootstrap, "PRICING_APP_ID": f"it-monitor-{tag}",
        "PRICING_TOPIC_CLICKSTREAM": f"clicks-{tag}", "PRICING_TOPIC_CATALOG": f"catalog-{tag}",
        "PRICING_TOPIC_PRICES": f"prices-{tag}", "PRICING_TOPIC_DEAD_LETTER": f"dlq-{tag}",
        "PRICING_PARTITIONS": "2", "PRICING_TOP_K": "1", "PRICING_BATCH_WITHIN_S": "0.02",
        "PRICING_DATA_DIR": str(tmp_path / "w"), "PRICING_METRICS_PORT": str(wport), "PRICING_METRICS_HOST": "127.0.0.1",
    }
    s = load_settings(settings)
    ensure_topics(s)
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    publish(producer, s.topic_catalog, [(c.item_id.encode(), dumps(c)) for c in CATALOG])
    producer.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRICING_")} | settings
    wlog, mlog = tmp_path / "worker.log", tmp_path / "monitor.log"
    procs = [subprocess.Popen([sys.executable, "-m", "streams.app", "--deterministic-scorer"], env=env, cwd=REPO,
                              stdout=wlog.open("wb"), stderr=subprocess.STDOUT)]
    stop = threading.Event()
    try:
        wait_until("worker ready", lambda: get(f"http://127.0.0.1:{wport}/ready")[0] == 200, 90, [wlog])
        procs.append(subprocess.Popen([sys.executable, "-m", "streams.tools.monitor", "--worker-url",
                                       f"http://127.0.0.1:{wport}", "--port", str(mport), "--refresh-s", "1"],
                                      env=env, cwd=REPO, stdout=mlog.open("wb"), stderr=subprocess.STDOUT))
        base = f"http://127.0.0.1:{mport}"
        wait_until("monitor up", lambda: get(base + "/api/state")[0] == 200, 30, [mlog])
        time.sleep(1.5)  # the monitor's topic reader seeks to the end before the stream starts
        feeder = threading.Thread(target=stream_events, args=(bootstrap, s.topic_clickstream, stop), daemon=True)
        feeder.start()

        def arms_seen() -> bool:
            arms = (orjson.loads(get(base + "/api/state")[1]).get("topics") or {}).get("arms", {})
            return all(arms.get(a, {}).get("purchases", 0) > 0 for a in ("control", "treatment"))
        wait_until("purchases attributed in both arms", arms_seen, 90, [wlog, mlog])

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(base + "/")
            page.wait_for_function("document.getElementById('p99').textContent !== '-' && "
                                   "document.querySelectorAll('#arms tbody tr').length >= 2", timeout=30_000)

            def read() -> dict[str, str]:
                return {k: page.inner_text(f"#{k}") for k in ("records-total", "records-rate", "prices-rate", "p50",
                                                              "p99", "updated", "model", "arms")}
            first = read()
            page.wait_for_function(f"document.getElementById('updated').textContent !== {first['updated']!r}",
                                   timeout=15_000)
            time.sleep(2.5)  # a couple more refreshes with events in between
            second = read()
            num = lambda v: float(v.replace(",", ""))  # noqa: E731
            assert num(second["records-total"]) > num(first["records-total"]) > 0, (first, second)
            assert num(first["records-rate"]) > 0 and num(first["prices-rate"]) > 0
            assert 0 < num(first["p50"]) <= num(first["p99"]) < 60_000
            assert first["model"] == "deterministic"
            assert first["arms"] != second["arms"]  # exposures keep growing
            for arm in ("control", "treatment"):
                assert arm in second["arms"]
            assert page.locator("#tput polyline").count() == 3
            assert page.locator("#ratio rect").count() > 0 and page.locator("#dead rect").count() > 0
            assert "NOT_JSON" in page.inner_html("#dead")
            shot = REPO / ("docs" if os.environ.get("UPDATE_SCREENSHOT") == "1" else "var") / "monitor.png"
            shot.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            browser.close()
    finally:
        stop.set()
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=60)
