"""Wire schemas: valid records round-trip, every malformation gets its typed code."""

from __future__ import annotations

import json
import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.schemas import (
    DEAD_LETTER_MAX_ORIGINAL,
    CatalogItem,
    ClickEvent,
    DeadLetter,
    PriceEvent,
    SchemaError,
    dead_letter_bytes,
    dumps,
    parse_catalog,
    parse_click,
    parse_dead_letter,
    parse_price,
)

NOW = 1_700_000_000.0
GOOD = {"event_id": "e1", "ts": NOW - 5, "user_id": "u1", "session_id": "s1", "type": "view",
        "item_id": "i1", "price": 12.5}


def raw(**changes: object) -> bytes:
    obj = {**GOOD, **changes}
    return orjson.dumps({k: v for k, v in obj.items() if v is not ...})


def test_valid_click_round_trips() -> None:
    ev = parse_click(raw(type="review", rating=4, quantity=2), now=NOW)
    assert ev == ClickEvent("e1", NOW - 5, "u1", "s1", "review", "i1", 12.5, 2, 4.0)
    assert parse_click(dumps(ev), now=NOW) == ev


@pytest.mark.parametrize(("payload", "code"), [
    (b"not json", "NOT_JSON"),
    (b"\xff\xfe", "NOT_JSON"),
    (b"[1, 2]", "NOT_OBJECT"),
    (b"null", "NOT_OBJECT"),
    (raw(price="12"), "WRONG_TYPE"),
    (raw(ts=True), "WRONG_TYPE"),
    (raw(quantity=1.5), "WRONG_TYPE"),
    (raw(user_id=...), "MISSING_FIELD"),
    (raw(type="hover"), "UNKNOWN_EVENT_TYPE"),
    (raw(price=-1), "BAD_PRICE"),
    (b'{"event_id":"e1","ts":1,"user_id":"u","session_id":"s","type":"view","item_id":"i","price":1e999}', "NOT_JSON"),  # orjson refuses non-finite numbers
    (raw(ts=NOW + 3600), "FUTURE_TIMESTAMP"),
    (raw(colour="red"), "UNKNOWN_FIELD"),
    (raw(user_id=""), "BAD_VALUE"),
    (raw(quantity=0), "BAD_VALUE"),
    (raw(type="review", rating=6), "BAD_VALUE"),
    (raw(session_id="x" * 20_000), "OVERSIZE"),
])
def test_malformed_click_gets_typed_code(payload: bytes, code: str) -> None:
    with pytest.raises(SchemaError) as info:
        parse_click(payload, now=NOW)
    assert info.value.code == code
    assert info.value.code in SchemaError.CODES
    assert info.value.reason


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_parser_raises_only_schema_error_on_any_bytes(data: bytes) -> None:
    try:
        parse_click(data, now=NOW)
    except SchemaError as exc:
        assert exc.code in SchemaError.CODES


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(st.fixed_dictionaries({}, optional={k: _json for k in [*GOOD, "quantity", "rating"]}))
def test_any_json_object_parses_or_raises_schema_error(obj: dict[str, object]) -> None:
    merged = {**GOOD, **obj}
    for parser in (lambda b: parse_click(b, now=NOW), parse_catalog, parse_price):
        try:
            parser(json.dumps(merged).encode())
        except SchemaError as exc:
            assert exc.code in SchemaError.CODES


def test_catalog_bounds_must_be_ordered() -> None:
    good = {"item_id": "i1", "category": "shoes", "base_price": 10.0, "unit_cost": 4.0,
            "min_price": 8.0, "max_price": 12.0}
    assert parse_catalog(orjson.dumps(good)) == CatalogItem("i1", "shoes", 10.0, 4.0, 8.0, 12.0, "EUR")
    with pytest.raises(SchemaError, match="BAD_PRICE"):
        parse_catalog(orjson.dumps({**good, "min_price": 11.0}))
    with pytest.raises(SchemaError, match="BAD_PRICE"):
        parse_catalog(orjson.dumps({**good, "base_price": 0}))


def test_price_event_round_trip() -> None:
    pe = PriceEvent("d1", NOW, "u1", "i1", 9.5, 10.0, "treatment", 0.3, 1.2, "abc123", ("OPTIMAL",))
    assert parse_price(dumps(pe)) == pe
    with pytest.raises(SchemaError, match="BAD_VALUE"):
        parse_price(dumps(pe).replace(b"treatment", b"placebo"))


@given(st.text(max_size=20), st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["control", "treatment"]),
       st.one_of(st.none(), st.floats(0, 1)), st.lists(st.sampled_from(["OPTIMAL", "CLIP_MAX_PRICE"]), max_size=3))
def test_dumps_writes_the_fields_in_declaration_order(uid: str, price: float, arm: str, conv: float | None,
                                                      reasons: list[str]) -> None:
    # dumps hands the slotted dataclass to orjson directly; the bytes must be those of its field dict
    from dataclasses import asdict

    pe = PriceEvent("d1", NOW, uid, "i1", price, 10.0, arm, conv, None, "v1", tuple(reasons))  # type: ignore[arg-type]
    assert dumps(pe) == orjson.dumps(asdict(pe))
    ev = ClickEvent("e1", NOW, uid, "s1", "review", "i1", price, 2, 4.0)
    assert dumps(ev) == orjson.dumps(asdict(ev))
    item = CatalogItem("i1", "shoes", 10.0, 4.0, 8.0, 12.0, "EUR")
    assert dumps(item) == orjson.dumps(asdict(item))


@given(st.binary(max_size=200), st.text(max_size=30))
def test_dead_letter_keeps_original_bytes(original: bytes, message: str) -> None:
    letter = DeadLetter(original, "clickstream", 3, 42, "NOT_JSON", message, NOW)
    back = parse_dead_letter(dead_letter_bytes(letter))
    assert back == letter
    assert math.isfinite(back.ts)


def test_a_dead_letter_of_a_record_near_the_broker_limit_still_fits_under_it() -> None:
    # a 900 KiB clickstream record is accepted by a default topic (1 MiB); carried whole, base64 would make
    # its dead letter 1.2 MiB, which the broker refuses, and the batch could never be committed
    original = bytes(range(256)) * (900 * 4)
    wire = dead_letter_bytes(DeadLetter(original, "clickstream", 1, 9, "OVERSIZE", "too big", NOW))
    assert len(wire) < 512 * 1024
    back = parse_dead_letter(wire)
    assert back.original == original[:DEAD_LETTER_MAX_ORIGINAL] and back.original_size == len(original)
    assert (back.topic, back.partition, back.offset) == ("clickstream", 1, 9)  # where the whole record is
    small = parse_dead_letter(dead_letter_bytes(DeadLetter(b"{bad", "clickstream", 0, 1, "NOT_JSON", "m", NOW)))
    assert small.original == b"{bad" and small.original_size is None  # carried whole: no size field
    with pytest.raises(SchemaError, match="original_size"):
        parse_dead_letter(wire.replace(b'"original_size":', b'"original_size":-'))
