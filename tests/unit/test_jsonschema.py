"""The published JSON Schemas (schemas/*.json) are the generated ones, and they agree with the parser.

Agreement: every record of a corpus is accepted by both the parser (streams.schemas) and the JSON
Schema (validated with the `jsonschema` package), or rejected by both. What JSON Schema cannot
express is kept out of the agreement corpus and pinned down in `test_documented_gaps` instead:
there the parser rejects what the schema accepts, exactly as each schema's description says.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.schemas import (
    MAX_OFFSET,
    MAX_PARTITION,
    PRICE_SCHEMA_VERSION,
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
from streams.tools import jsonschema as gen

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_700_000_000.0
ABSENT = object()  # a field left out of the record

# The parser's future-timestamp check needs the reader's clock, which JSON Schema has not: the
# agreement corpus parses clicks with now=inf, which turns that one check off (see test_documented_gaps).
PARSERS: dict[str, Callable[[bytes], object]] = {
    "ClickEvent": lambda b: parse_click(b, now=math.inf),
    "CatalogItem": parse_catalog,
    "PriceEvent": parse_price,
    "DeadLetter": parse_dead_letter,
}

GOOD: dict[str, dict[str, Any]] = {
    "ClickEvent": {"event_id": "e1", "ts": NOW - 5, "user_id": "u1", "session_id": "s1", "type": "view",
                   "item_id": "i1", "price": 12.5},
    "CatalogItem": {"item_id": "i1", "category": "shoes", "base_price": 10.0, "unit_cost": 4.0,
                    "min_price": 8.0, "max_price": 12.0},
    "PriceEvent": orjson.loads(dumps(PriceEvent("d1", NOW, "u1", "i1", 9.5, 10.0, "treatment", 0.3, 1.2, "m1",
                                                ("OPTIMAL",)))),
    "DeadLetter": orjson.loads(dead_letter_bytes(DeadLetter(b"\x00\xff{oops", "clickstream", 3, 42, "NOT_JSON",
                                                            "payload is not valid JSON", NOW))),
}


def rec(name: str, **changes: Any) -> dict[str, Any]:
    obj = {**GOOD[name], **changes}
    return {k: v for k, v in obj.items() if v is not ABSENT}


def missing_each(name: str) -> list[dict[str, Any]]:
    return [rec(name, **{f: ABSENT}) for f in gen.record_schema(name)["required"]]


ID128, ID129 = "x" * 128, "x" * 129
EMOJI128 = "\U0001f600" * 128  # 128 characters, 512 UTF-8 bytes: both count characters

CORPUS: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {  # name -> (accepted, rejected)
    "ClickEvent": (
        [rec("ClickEvent"), *[rec("ClickEvent", type=t) for t in ("view", "click", "add_to_cart", "purchase")],
         rec("ClickEvent", type="review", rating=0), rec("ClickEvent", rating=5), rec("ClickEvent", rating=4.5),
         rec("ClickEvent", rating=None), rec("ClickEvent", quantity=1), rec("ClickEvent", quantity=10_000),
         rec("ClickEvent", price=0), rec("ClickEvent", price=7), rec("ClickEvent", price=10**30), rec("ClickEvent", ts=0),
         rec("ClickEvent", ts=-0.0), rec("ClickEvent", user_id="u"), rec("ClickEvent", user_id=ID128),
         rec("ClickEvent", session_id=EMOJI128)],
        [*missing_each("ClickEvent"), rec("ClickEvent", colour="red"), rec("ClickEvent", ts=True),
         rec("ClickEvent", price=False), rec("ClickEvent", quantity=True), rec("ClickEvent", rating=True),
         rec("ClickEvent", price="12"), rec("ClickEvent", ts="1700000000"), rec("ClickEvent", ts=None),
         rec("ClickEvent", quantity=0), rec("ClickEvent", quantity=10_001), rec("ClickEvent", quantity=-1),
         rec("ClickEvent", quantity=1.5), rec("ClickEvent", quantity=None), rec("ClickEvent", quantity=10**30),
         rec("ClickEvent", rating=-0.1), rec("ClickEvent", rating=5.01), rec("ClickEvent", rating="4"),
         rec("ClickEvent", price=-0.01), rec("ClickEvent", ts=-1), rec("ClickEvent", type="hover"),
         rec("ClickEvent", type=1), rec("ClickEvent", type=None), rec("ClickEvent", user_id=""),
         rec("ClickEvent", item_id=ID129), rec("ClickEvent", event_id=1), rec("ClickEvent", session_id=None),
         rec("ClickEvent", user_id=["u1"]), rec("ClickEvent", session_id=EMOJI128 + "x")],
    ),
    "CatalogItem": (
        [rec("CatalogItem"), rec("CatalogItem", currency="USD"), rec("CatalogItem", category=""),
         rec("CatalogItem", unit_cost=0), rec("CatalogItem", min_price=10, base_price=10, max_price=10),
         rec("CatalogItem", base_price=9, min_price=9, max_price=9.5), rec("CatalogItem", unit_cost=1e6),
         rec("CatalogItem", item_id=ID128)],
        [*missing_each("CatalogItem"), rec("CatalogItem", colour="red"),
         rec("CatalogItem", base_price=0, min_price=0), rec("CatalogItem", base_price=-1, min_price=-2),
         rec("CatalogItem", min_price=0), rec("CatalogItem", min_price=-0.0), rec("CatalogItem", unit_cost=-0.01),
         rec("CatalogItem", max_price="12"), rec("CatalogItem", base_price=True), rec("CatalogItem", currency=None),
         rec("CatalogItem", currency=1), rec("CatalogItem", category=None), rec("CatalogItem", item_id=""),
         rec("CatalogItem", item_id=ID129), rec("CatalogItem", unit_cost=None)],
    ),
    "PriceEvent": (
        [rec("PriceEvent"), rec("PriceEvent", schema_version=ABSENT), rec("PriceEvent", schema_version=1),
         rec("PriceEvent", expected_conversion=None, expected_profit=None, reasons=["MODEL_INVALID"]),
         rec("PriceEvent", expected_profit=-3.5), rec("PriceEvent", reasons=[]), rec("PriceEvent", model_version=""),
         rec("PriceEvent", arm="control", reasons=["CONTROL"]), rec("PriceEvent", currency=ABSENT),
         rec("PriceEvent", price=1e-9), rec("PriceEvent", reasons=["SOMETHING_NEW"]),
         rec("PriceEvent", propensity=0.25, policy="dither:0.05"), rec("PriceEvent", propensity=3.2),
         rec("PriceEvent", propensity=ABSENT, policy=ABSENT), rec("PriceEvent", policy="")],
        [*missing_each("PriceEvent"), rec("PriceEvent", colour="red"),
         rec("PriceEvent", schema_version=PRICE_SCHEMA_VERSION + 1), rec("PriceEvent", schema_version=0),
         rec("PriceEvent", schema_version=-1), rec("PriceEvent", schema_version=True),
         rec("PriceEvent", schema_version="1"), rec("PriceEvent", schema_version=None),
         rec("PriceEvent", arm="placebo"), rec("PriceEvent", arm=None), rec("PriceEvent", reasons=["OPTIMAL", 1]),
         rec("PriceEvent", reasons="OPTIMAL"), rec("PriceEvent", reasons=None), rec("PriceEvent", price=0),
         rec("PriceEvent", base_price=-1), rec("PriceEvent", ts=-1), rec("PriceEvent", expected_conversion="0.3"),
         rec("PriceEvent", expected_profit=True), rec("PriceEvent", currency=1), rec("PriceEvent", model_version=None),
         rec("PriceEvent", decision_id=""), rec("PriceEvent", user_id=ID129),
         rec("PriceEvent", propensity=0), rec("PriceEvent", propensity=-0.5), rec("PriceEvent", propensity=True),
         rec("PriceEvent", propensity="1"), rec("PriceEvent", propensity=None), rec("PriceEvent", policy=None),
         rec("PriceEvent", policy=1)],
    ),
    "DeadLetter": (
        [rec("DeadLetter"), *[rec("DeadLetter", original_b64=b) for b in ("", "YQ==", "YWI=", "YWJj", "+/+/")],
         rec("DeadLetter", partition=0, offset=0), rec("DeadLetter", partition=MAX_PARTITION, offset=MAX_OFFSET),
         rec("DeadLetter", error_code="SOMETHING_NEW"), rec("DeadLetter", ts=0), rec("DeadLetter", topic=""),
         rec("DeadLetter", message="")],
        [*missing_each("DeadLetter"), rec("DeadLetter", original="AAA="),
         *[rec("DeadLetter", original_b64=b) for b in ("YQ", "YQ==\n", "\nYQ==", "Y Q==", "YQ=a", "!!!!", "YQ===",
                                                       "YQ==YQ==", "YWJjZA", None, 1)],
         rec("DeadLetter", partition=-1), rec("DeadLetter", partition=MAX_PARTITION + 1),
         rec("DeadLetter", partition=2**63), rec("DeadLetter", partition=1.5), rec("DeadLetter", partition=True),
         rec("DeadLetter", offset=-1), rec("DeadLetter", offset=MAX_OFFSET + 1), rec("DeadLetter", offset=2**64),
         rec("DeadLetter", offset=-(2**63) - 1), rec("DeadLetter", ts=-1), rec("DeadLetter", ts="x"),
         rec("DeadLetter", error_code=None), rec("DeadLetter", message=1), rec("DeadLetter", topic=None)],
    ),
}


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(gen.record_schema(name))


def parser_accepts(name: str, obj: dict[str, Any]) -> bool:
    # json (not orjson) writes the bytes: it also writes integers beyond 64 bits, as a producer may
    try:
        PARSERS[name](json.dumps(obj).encode())
    except SchemaError:
        return False
    return True


def test_committed_files_are_the_generated_ones() -> None:
    assert gen.stale(ROOT / "schemas") == [], "run: python -m streams.tools.jsonschema --out schemas/"
    assert sorted(p.name for p in (ROOT / "schemas").glob("*.json")) == sorted(f for f, _, _ in gen.RECORDS.values())


@pytest.mark.parametrize("name", list(gen.RECORDS))
def test_schema_is_valid_draft_2020_12_and_closed(name: str) -> None:
    schema = json.loads((ROOT / "schemas" / gen.RECORDS[name][0]).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) >= set(schema["required"])


@pytest.mark.parametrize("name", list(gen.RECORDS))
def test_parser_and_schema_agree_on_the_corpus(name: str) -> None:
    good, bad = CORPUS[name]
    v = validator(name)
    for obj in good:
        assert parser_accepts(name, obj), obj
        assert v.is_valid(obj), (obj, [e.message for e in v.iter_errors(obj)])
    for obj in bad:
        assert not parser_accepts(name, obj), obj
        assert not v.is_valid(obj), obj


# Per field, values the parser and the schema must judge alike; field combinations come from hypothesis.
# Left out on purpose: integral floats for integer fields (1.0: see test_documented_gaps) and, for the
# catalog, records whose prices break min <= base <= max (a cross-field rule; filtered below).
_JUNK = [None, True, "x", [], {}, -1, 0]
_VALUES: dict[str, dict[str, list[Any]]] = {
    "ClickEvent": {"ts": [0, NOW, 1.5, -0.5], "type": ["view", "review", "VIEW", ""], "price": [0, 9.99, -0.01],
                   "quantity": [ABSENT, 1, 10_000, 10_001, 2.5], "rating": [ABSENT, 0, 5, 5.5, -1],
                   "user_id": ["u", ID128, ID129, ""], "extra": [ABSENT, 1]},
    "CatalogItem": {"base_price": [10, 0.01, 0], "unit_cost": [0, 3.5, -1], "min_price": [0.01, 10, 0, -1],
                    "max_price": [10, 1e9, 0], "currency": [ABSENT, "EUR", ""], "category": ["", "c"],
                    "extra": [ABSENT, "x"]},
    "PriceEvent": {"price": [0.5, 0, -1], "arm": ["control", "treatment", "Control"],
                   "expected_conversion": [0.3, -5, ABSENT], "reasons": [[], ["A"], [1], "A"],
                   "schema_version": [ABSENT, 1, 2, 0], "model_version": ["", "m"], "extra": [ABSENT, 0],
                   "propensity": [ABSENT, 1.0, 0.2, 0, -0.1], "policy": [ABSENT, "greedy", "dither:0.1", ""]},
    "DeadLetter": {"original_b64": ["", "YQ==", "YQ=", "YQ==\n"], "partition": [0, -1, MAX_PARTITION + 1, 7],
                   "offset": [0, MAX_OFFSET, MAX_OFFSET + 1, -5], "ts": [0, NOW, -1], "error_code": ["", "X"],
                   "extra": [ABSENT, None]},
}


def _ordered_prices(obj: dict[str, Any]) -> bool:
    lo, base, hi = (obj.get(k) for k in ("min_price", "base_price", "max_price"))
    nums = [x for x in (lo, base, hi) if isinstance(x, int | float) and not isinstance(x, bool)]
    return len(nums) < 3 or lo <= base <= hi  # type: ignore[operator]


KEEP = object()  # leave the good record's value


@pytest.mark.parametrize("name", list(gen.RECORDS))
def test_parser_and_schema_agree_on_every_single_field_change(name: str) -> None:
    v = validator(name)
    for field, vals in _VALUES[name].items():
        for value in vals + _JUNK:
            obj = rec(name, **{field: value})
            if name == "CatalogItem" and not _ordered_prices(obj):
                continue  # cross-field rule: parser-only, pinned in test_documented_gaps
            assert parser_accepts(name, obj) == v.is_valid(obj), obj


@pytest.mark.parametrize("name", list(gen.RECORDS))
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_parser_and_schema_agree_on_field_combinations(name: str, data: st.DataObject) -> None:
    # about half of the fields keep their good value, so records with one or two faults are common
    changes = {f: data.draw(st.sampled_from([KEEP] * len(vals + _JUNK) + vals + _JUNK), label=f)
               for f, vals in _VALUES[name].items()}
    obj = rec(name, **{f: v for f, v in changes.items() if v is not KEEP})
    if name == "CatalogItem" and not _ordered_prices(obj):
        return  # cross-field rule: parser-only, pinned in test_documented_gaps
    assert parser_accepts(name, obj) == validator(name).is_valid(obj), obj


@pytest.mark.parametrize(("name", "obj", "payload", "code"), [
    # the reader's clock: the schema cannot know "now"
    ("ClickEvent", rec("ClickEvent", ts=NOW + 3600), None, "FUTURE_TIMESTAMP"),
    # cross-field rule of the catalog
    ("CatalogItem", rec("CatalogItem", base_price=20.0), None, "BAD_PRICE"),
    ("CatalogItem", rec("CatalogItem", min_price=13.0, max_price=12.0), None, "BAD_PRICE"),
    # integral floats: the same JSON number as 1 to a JSON Schema validator, a float to the parser
    ("ClickEvent", rec("ClickEvent", quantity=2.0), None, "WRONG_TYPE"),
    ("PriceEvent", rec("PriceEvent", schema_version=1.0), None, "WRONG_TYPE"),
    ("DeadLetter", rec("DeadLetter", partition=3.0), None, "WRONG_TYPE"),
    # payload size in bytes
    ("CatalogItem", rec("CatalogItem", category="x" * 20_000), None, "OVERSIZE"),
    # a number beyond a double: valid JSON, refused by orjson
    ("ClickEvent", None, json.dumps(rec("ClickEvent")).replace("12.5", "1e400").encode(), "NOT_JSON"),
])
def test_documented_gaps(name: str, obj: dict[str, Any] | None, payload: bytes | None, code: str) -> None:
    if obj is not None:
        assert validator(name).is_valid(obj)
        payload = json.dumps(obj).encode()
        with pytest.raises(SchemaError) as info:
            # the real clock here (NOW), not the agreement corpus' now=inf
            parse_click(payload, now=NOW) if name == "ClickEvent" else PARSERS[name](payload)
    else:
        assert payload is not None
        assert validator(name).is_valid(json.loads(payload))  # Python's json reads 1e400 as inf, a number
        with pytest.raises(SchemaError) as info:
            PARSERS[name](payload)
    assert info.value.code == code


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_numbers_are_not_json(literal: bytes) -> None:
    # NaN and Infinity are no JSON values (RFC 8259), so no schema sees them; the parser refuses the bytes
    payload = json.dumps(rec("ClickEvent")).replace("12.5", literal.decode()).encode()
    with pytest.raises(SchemaError, match="NOT_JSON"):
        parse_click(payload, now=math.inf)


def test_schema_version_is_written_and_read() -> None:
    pe = PriceEvent("d1", NOW, "u1", "i1", 9.5, 10.0, "treatment", 0.3, 1.2, "m1", ("OPTIMAL",))
    assert orjson.loads(dumps(pe))["schema_version"] == PRICE_SCHEMA_VERSION == pe.schema_version
    old = dict(GOOD["PriceEvent"])
    del old["schema_version"]
    assert parse_price(orjson.dumps(old)) == pe  # records written before the field: version 1
    with pytest.raises(SchemaError) as info:
        parse_price(orjson.dumps({**old, "schema_version": PRICE_SCHEMA_VERSION + 1}))
    assert info.value.code == "BAD_VALUE" and "schema_version" in info.value.reason


@pytest.mark.parametrize(("payload", "code"), [
    (b"nope", "NOT_JSON"), (b"[]", "NOT_OBJECT"),
    (orjson.dumps(rec("DeadLetter", partition=ABSENT)), "MISSING_FIELD"),
    (orjson.dumps(rec("DeadLetter", original_b64="YQ")), "BAD_VALUE"),
    (orjson.dumps(rec("DeadLetter", offset=-1)), "BAD_VALUE"),
])
def test_dead_letter_parser_raises_typed_errors(payload: bytes, code: str) -> None:
    with pytest.raises(SchemaError) as info:
        parse_dead_letter(payload)
    assert info.value.code == code


def test_reason_and_error_code_lists_match_the_code() -> None:
    from streams.features import LateEvent
    from streams.pricing import Reason

    assert set(gen._PRICE_REASONS) == {r.name for r in Reason} | {"CONTROL"}
    assert '"CONTROL"' in (Path(__file__).resolve().parents[2] / "streams/pipeline.py").read_text()
    assert LateEvent.code in gen._DEAD_REASONS and set(SchemaError.CODES) <= set(gen._DEAD_REASONS)


def test_cli_check_version_and_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gen.main(["--check", "--out", str(tmp_path)]) == 1
    assert "stale or missing" in capsys.readouterr().err
    assert gen.main(["--out", str(tmp_path)]) == 0
    assert gen.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "price-event.schema.json").write_text("{}")
    assert gen.main(["--check", "--out", str(tmp_path)]) == 1
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        gen.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("python -m streams.tools.jsonschema ")
