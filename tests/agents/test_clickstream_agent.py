"""The clickstream agent in Faust's test context: memory store, no broker, deterministic scorer."""

from __future__ import annotations

import time

import orjson
import pytest

from streams.app import create_app
from streams.schemas import CatalogItem, parse_dead_letter, parse_price
from streams.settings import load_settings
from streams.state import decode_record

NOW = time.time()


def click(i: int, user: str = "alice", typ: str = "view", item: str = "i1", **extra: object) -> bytes:
    return orjson.dumps({"event_id": f"e{i}", "ts": NOW - 100 + i, "user_id": user, "session_id": "s1",
                         "type": typ, "item_id": item, "price": 10.0, **extra})


@pytest.fixture()
def app_and_sent():
    sent: list[tuple[str, bytes, bytes]] = []

    async def sender(topic: str, key: bytes, value: bytes) -> None:
        sent.append((topic, key, value))

    # every price sent (no unchanged recommended price left out): the tests count them
    s = load_settings({}, store="memory://", top_k=2, treatment_share=1.0, partitions=1, resend_unchanged_s=0)
    app = create_app(s, deterministic_scorer=True, sender=sender)
    app.finalize()
    app.conf.store = "memory://"
    app.flow_control.resume()
    for k in range(5):
        app.pricing.catalog.put(CatalogItem(f"i{k}", f"cat{k % 2}", 10.0 + k, 4.0, 7.0, 16.0))
    app.catalog_ready.set()
    return app, sent


async def test_valid_events_priced_and_bad_ones_dead_lettered(app_and_sent) -> None:
    app, sent = app_and_sent
    agent = app.agents["clickstream"]
    async with agent.test_context() as ctx:
        await ctx.put(key=b"alice", value=click(1))
        await ctx.put(key=b"alice", value=b"{not json")
        await ctx.put(key=b"alice", value=click(2, typ="hover"))
        await ctx.put(key=b"alice", value=click(3, typ="purchase"))  # not a trigger by default
        await ctx.put(key=b"bob", value=click(4, user="alice"))      # key is not the user
        await ctx.put(key=b"alice", value=click(5, item="unknown-item"))
    prices = [parse_price(v) for t, _, v in sent if t == "prices"]
    letters = [parse_dead_letter(v) for t, _, v in sent if t == "clickstream-dlq"]
    assert sorted(dl.error_code for dl in letters) == ["KEY_MISMATCH", "NOT_JSON", "UNKNOWN_EVENT_TYPE"]
    assert [dl.original for dl in letters if dl.error_code == "NOT_JSON"] == [b"{not json"]
    # event 1: its own item plus top-2 recommended; event 5: unknown item -> only the 2 recommended
    by_event: dict[str, list[str]] = {}
    for p in prices:
        by_event.setdefault(p.decision_id, []).append(p.item_id)
    assert len(prices) == 3 + 2
    assert prices[0].item_id == "i1" and "unknown-item" not in {p.item_id for p in prices}
    assert all(p.arm == "treatment" and p.user_id == "alice" and p.model_version for p in prices)
    for p in prices:
        assert 0.8 * p.base_price - 0.01 <= p.price <= 1.2 * p.base_price + 0.01
    # the table holds only the keyed hash, and counts the 4 valid events once each
    hashed = app.pricing.hasher.hash("alice").encode()
    record = decode_record(app.users[hashed])
    assert app.users.get(b"alice") is None
    assert record.features.counts[0] > 0 and record.offset >= 0

    assert record.features.counts[0] > 0 and record.offset >= 0


async def test_worker_consumer_uses_the_configured_fetch_wait() -> None:
    # Faust hard-codes fetch_max_wait_ms=1500 for its aiokafka consumer, which delayed prices by
    # 1.5-1.8 s whenever a fetch named only idle partitions; the app replaces it with the setting
    s = load_settings({}, store="memory://", fetch_max_wait_ms=7)
    app = create_app(s, deterministic_scorer=True)
    app.finalize()
    thread = app.consumer._thread
    consumer = thread._create_worker_consumer(app.transport)
    assert consumer._fetch_max_wait_ms == 7
    default = create_app(load_settings({}, store="memory://"), deterministic_scorer=True)
    default.finalize()
    assert default.consumer._thread._create_worker_consumer(default.transport)._fetch_max_wait_ms == 20


async def test_an_added_upstream_field_does_not_stop_pricing(app_and_sent) -> None:
    # the default PRICING_UNKNOWN_FIELDS=ignore: an upstream producer adds "campaign_id" to every event
    app, sent = app_and_sent
    assert app.pricing.s.unknown_fields == "ignore"
    async with app.agents["clickstream"].test_context() as ctx:
        for i in range(3):
            await ctx.put(key=b"alice", value=click(i, campaign_id=f"c{i}"))
        await ctx.put(key=b"alice", value=click(9, price=1e308))  # absurd shown price: BAD_PRICE
    prices = [parse_price(v) for t, _, v in sent if t == "prices"]
    letters = [parse_dead_letter(v) for t, _, v in sent if t == "clickstream-dlq"]
    assert len(prices) == 3 * 3 and {p.user_id for p in prices} == {"alice"}
    assert [dl.error_code for dl in letters] == ["BAD_PRICE"]


async def test_a_batch_whose_prices_cannot_be_delivered_stops_the_worker_uncommitted() -> None:
    # a delivery that fails (brokers gone past the producer's timeout, a record refused) must not let
    # Faust ack the batch and go on: the batch is held back and the worker asked to stop
    attempts: list[str] = []
    failures: list[BaseException] = []

    async def sender(topic: str, key: bytes, value: bytes) -> None:
        attempts.append(topic)
        raise RuntimeError("broker gone")

    s = load_settings({}, store="memory://", top_k=2, treatment_share=1.0, partitions=1)
    app = create_app(s, deterministic_scorer=True, sender=sender, on_batch_failure=failures.append)
    app.finalize()
    app.conf.store = "memory://"
    app.flow_control.resume()
    app.pricing.catalog.put(CatalogItem("i1", "cat0", 10.0, 4.0, 7.0, 16.0))
    app.catalog_ready.set()
    async with app.agents["clickstream"].test_context() as ctx:
        await ctx.put(key=b"alice", value=click(1))
        await ctx.put(key=b"alice", value=click(2))
    assert [str(e) for e in failures] == ["broker gone"]  # once: the agent stopped after the failed batch
    assert attempts == ["prices"]
    assert str(app.batch_failure) == "broker gone"


async def test_a_record_with_the_history_header_builds_state_without_a_price(app_and_sent) -> None:
    app, sent = app_and_sent
    async with app.agents["clickstream"].test_context() as ctx:
        await ctx.put(key=b"alice", value=click(1), headers={"pricing-history": b"1"})
        await ctx.put(key=b"alice", value=click(2), headers=[("pricing-history", b"1")])
    assert [t for t, _, _ in sent if t == "prices"] == []
    record = decode_record(app.users[app.pricing.hasher.hash("alice").encode()])
    assert record.features.counts[0] > 0  # both views are in the user's state
    async with app.agents["clickstream"].test_context() as ctx:
        await ctx.put(key=b"alice", value=click(3))  # live: priced
    assert len([t for t, _, _ in sent if t == "prices"]) == 3
