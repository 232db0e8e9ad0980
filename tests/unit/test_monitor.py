"""pricing-monitor's data without a broker or a worker: scraped rates, quantiles, the topic join."""

from __future__ import annotations

import math
import socket
import threading
import urllib.request

import orjson
import pytest

from streams.schemas import CatalogItem, ClickEvent, PriceEvent, decision_id, dumps
from streams.settings import load_settings
from streams.tools.monitor import Monitor, main, serve
from streams.tools.monitor_data import MetricsHistory, Scrape, TopicFollower, histogram_quantile

LE = ("0.05", "0.1", "0.25", "+Inf")


def fake(url: str, records: float, prices: float, lat: tuple[float, ...], version: str = "v1", up: bool = True,
         at: float = 0.0) -> Scrape:
    samples = {("pricing_records_total", ()): records, ("pricing_prices_total", (("arm", "control"),)): prices,
               ("pricing_dead_letters_total", (("code", "NOT_JSON"),)): 1.0,
               ("pricing_model_info", (("version", version),)): 1.0, ("pricing_consumer_lag", (("partition", "0"),
                                                                                           ("topic", "c"))): 5.0}
    samples |= {("pricing_decision_latency_seconds_bucket", (("le", le),)): v for le, v in zip(LE, lat, strict=True)}
    return Scrape(url, at, up, "" if up else "refused", samples if up else {})


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    b = [(0.05, 50.0), (0.1, 90.0), (0.25, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, b) == pytest.approx(0.05)
    assert histogram_quantile(0.7, b) == pytest.approx(0.075)
    assert histogram_quantile(0.95, b) == pytest.approx(0.175)
    assert histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None
    assert histogram_quantile(0.99, [(0.1, 1.0), (math.inf, 10.0)]) == 0.1  # beyond the last bound


def test_history_sums_workers_rates_latency_window_and_model_changes(monkeypatch) -> None:
    clock = iter([100.0, 110.0, 120.0])
    monkeypatch.setattr("streams.tools.monitor_data.time.time", lambda: next(clock))
    rounds = iter([
        {"a": fake("a", 100, 50, (10, 10, 10, 10)), "b": fake("b", 0, 0, (0, 0, 0, 0), up=False)},
        {"a": fake("a", 300, 150, (10, 30, 40, 40)), "b": fake("b", 50, 20, (0, 0, 10, 10))},
        {"a": fake("a", 20, 10, (10, 30, 40, 40), version="v2"), "b": fake("b", 150, 60, (0, 0, 10, 10))},
    ])
    current: dict[str, Scrape] = {}
    h = MetricsHistory(["a", "b"], fetch=lambda url: current[url])
    for r in rounds:
        current = r
        h.poll()
    st = h.state(latency_window_s=15.0)
    # round 2: a +200, b +50 (came up) -> 25/s records; round 3: a restarted (its counter fell: +20, as
    # Prometheus' rate() counts a reset), b +100 -> 12/s
    assert st["series"][0][1:3] == [25.0, 12.0]
    assert st["series"][1][1:3] == [12.0, 5.0]
    assert st["totals"]["records"] == 170 and st["dead_letters"] == {"NOT_JSON": 2.0}
    # latency over the last 15 s: only the increase since round 2 (none) -> falls back to since start
    assert st["latency"]["window_s"] is None and st["latency"]["count"] == 50
    assert [(c["worker"], c["from"], c["to"]) for c in st["model_changes"]] == \
        [("a", None, "v1"), ("b", None, "v1"), ("a", "v1", "v2")]
    assert {w["url"]: w["lag"] for w in st["workers"]} == {"a": 5.0, "b": 5.0}
    wide = h.state(latency_window_s=25.0)  # since round 1: 40 - 10 on a, 10 on b
    assert wide["latency"]["window_s"] == 25.0 and wide["latency"]["count"] == 40


def test_topic_join_is_the_evaluations_attribution() -> None:
    f = TopicFollower(load_settings({}), since=None, window_s=3600.0)
    f._on_catalog(dumps(CatalogItem("i1", "c", 10.0, 6.0, 8.0, 12.0)))
    t0 = 1_700_000_000.0
    views = [ClickEvent("e1", t0, "u1", "s", "view", "i1", 10.0), ClickEvent("e2", t0 + 5, "u2", "s", "view", "i1", 10.0),
             ClickEvent("e3", t0 + 6, "u3", "s", "view", "i1", 10.0)]
    for v in views:
        f._on_click(dumps(v))
    for v, arm, price in ((views[0], "treatment", 11.0), (views[1], "control", 10.0)):
        f._on_price(dumps(PriceEvent(decision_id(v.event_id, v.item_id), v.ts, v.user_id, v.item_id, price, 10.0, arm,
                                     0.3, 1.0, "m1", ("OPTIMAL",))))
    f._on_click(dumps(ClickEvent("b1", t0 + 60, "u1", "s", "purchase", "i1", 11.0, 2)))
    f._on_click(dumps(ClickEvent("b2", t0 + 7200, "u2", "s", "purchase", "i1", 10.0)))  # outside the window
    st = f.state()
    assert st["arms"]["treatment"] == {"exposures": 1, "purchases": 1, "conversion": 1.0, "revenue": 22.0,
                                       "profit": 10.0, "profit_per_exposure": 10.0}
    assert st["arms"]["control"]["purchases"] == 0 and st["arms"]["control"]["exposures"] == 1
    assert st["arms"]["none"]["exposures"] == 1  # e3: old and never priced
    ratio = st["ratio_counts"]
    assert sum(ratio["treatment"]) == sum(ratio["control"]) == 1
    assert st["ratio_edges"][ratio["treatment"].index(1) - 1] == pytest.approx(1.1)  # 11/10 in [1.1, 1.125)
    assert [m["version"] for m in st["model_versions"]] == ["m1"] and st["read"]["prices"] == 2


def test_page_and_state_are_served_and_cli_basics(capsys) -> None:
    h = MetricsHistory(["a"], fetch=lambda url: fake(url, 10, 5, (1, 1, 1, 1)))
    h.poll()
    monitor = Monitor(h, None, refresh_s=1.0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = serve(monitor, "127.0.0.1", port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        assert "<svg" in page and "/api/state" in page and "http://" not in page.replace("http://' +", "")
        state = orjson.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=5).read())
        assert state["totals"]["records"] == 10 and state["topics"] is None
    finally:
        server.shutdown()
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("pricing-monitor ")
    with pytest.raises(SystemExit):
        main(["--no-topics"])  # nothing to show
