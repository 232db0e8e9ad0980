"""JSON Schema (draft 2020-12) files of the wire records, generated from :mod:`streams.schemas`.

The parser in :mod:`streams.schemas` is the contract; these files publish it for producers and
consumers in other languages. Types and required fields come from the parser's field specs,
defaults from the dataclasses; value bounds that the parser checks in code are restated in
:data:`_RULES` below, and ``tests/unit/test_jsonschema.py`` runs both on one corpus of good and
bad records, so the two cannot drift apart unnoticed. What JSON Schema cannot say (payload size in
bytes, cross-field rules, the reader's clock) is written in each schema's ``description``.

``python -m streams.tools.jsonschema --out schemas/`` rewrites the committed files;
``--check`` only compares them (exit 1 when they differ).

>>> s = record_schema("ClickEvent")
>>> s["additionalProperties"], s["properties"]["quantity"]["maximum"], s["required"][:2]
(False, 10000, ['event_id', 'ts'])
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Final

from .. import schemas as sch
from ..pricing import Reason
from ..version import add_version

DRAFT: Final = "https://json-schema.org/draft/2020-12/schema"
_NONE = type(None)

# record name -> (file name, dataclass, the parser's field spec)
RECORDS: Final[dict[str, tuple[str, type, dict[str, tuple[tuple[type, ...], bool]]]]] = {
    "ClickEvent": ("click-event.schema.json", sch.ClickEvent, sch._CLICK),
    "CatalogItem": ("catalog-item.schema.json", sch.CatalogItem, sch._CATALOG),
    "PriceEvent": ("price-event.schema.json", sch.PriceEvent, sch._PRICE),
    "DeadLetter": ("dead-letter.schema.json", sch.DeadLetter, sch._DEAD),
}

_SIZE = (f"Each record is one UTF-8 JSON object of at most {sch.MAX_PAYLOAD_BYTES} bytes (the reader's limit; "
         "PRICING_MAX_EVENT_BYTES for the clickstream; not expressible in JSON Schema). ")
_COMMON = ("Unknown fields are rejected. Integers are written without a fraction or exponent (1, not 1.0: "
           "the parser rejects 1.0 where an integer is expected, JSON Schema cannot tell them apart). Numbers "
           "must be finite doubles: 1e400 is refused as not JSON.")
_DEAD_REASONS: Final = (*sch.SchemaError.CODES, "KEY_MISMATCH", "LATE_EVENT")  # the last two: pipeline, features
# the pricing reasons, plus CONTROL that the pipeline gives the control arm
_PRICE_REASONS: Final = (*(str(r.name) for r in Reason), "CONTROL")

# record -> (description, {field: (description, extra JSON Schema keywords)}). Every field of the
# parser's spec must appear here (checked below), so a new field cannot be published undocumented.
_RULES: Final[dict[str, tuple[str, dict[str, tuple[str, dict[str, Any]]]]]] = {
    "ClickEvent": (
        "One clickstream event (topic `clickstream`, key = user_id). Also checked by the reader, not "
        "expressible here: `ts` at most PRICING_MAX_FUTURE_SKEW_S (300 s) ahead of the reader's wall clock "
        "(FUTURE_TIMESTAMP), and the record key equal to user_id (KEY_MISMATCH).", {
            "event_id": ("unique id of the event", {}),
            "ts": ("event time, epoch seconds", {"minimum": 0}),
            "user_id": ("the user; also the record key", {}),
            "session_id": ("the user's session", {}),
            "type": ("event type", {"enum": list(sch.EVENT_TYPES)}),
            "item_id": ("the item concerned", {}),
            "price": ("the price shown to the user", {"minimum": 0}),
            "quantity": ("units (purchases)", {"minimum": 1, "maximum": 10_000}),
            "rating": ("review rating, 0..5", {"minimum": 0, "maximum": 5}),
        }),
    "CatalogItem": (
        "An item's pricing terms (compacted topic `catalog`, key = item_id; a null value withdraws the "
        "item). Also checked by the reader, not expressible here: min_price <= base_price <= max_price "
        "(BAD_PRICE).", {
            "item_id": ("the item", {}),
            "category": ("the item's category", {}),
            "base_price": ("list price, > 0", {"exclusiveMinimum": 0}),
            "unit_cost": ("cost of one unit, >= 0 (the margin floor's base)", {"minimum": 0}),
            "min_price": ("lowest allowed price, > 0", {"exclusiveMinimum": 0}),
            "max_price": ("highest allowed price, > 0", {"exclusiveMinimum": 0}),
            "currency": ("ISO 4217 code (not checked)", {}),
        }),
    "PriceEvent": (
        "A personalized price for one user and item (topic `prices`, key = user_id). "
        f"schema_version {sch.PRICE_SCHEMA_VERSION} is the current format; a record without it is version 1; "
        "readers refuse a version newer than they know.", {
            "decision_id": ("stable for one trigger event and item: applying it twice is a no-op", {}),
            "ts": ("event time of the triggering event, epoch seconds", {"minimum": 0}),
            "user_id": ("the user", {}),
            "item_id": ("the item priced", {}),
            "price": ("the price to show", {"exclusiveMinimum": 0}),
            "base_price": ("the catalog's base price at decision time", {"exclusiveMinimum": 0}),
            "arm": ("experiment arm: control shows the base price, uniform the item's one learnt price, "
                    "treatment the personalized price", {"enum": ["control", "uniform", "treatment"]}),
            "expected_conversion": ("the model's purchase probability at `price`; null if the model output "
                                    "was invalid (MODEL_INVALID)", {}),
            "expected_profit": ("(price - unit_cost) * expected_conversion; null with it", {}),
            "model_version": ("the model bundle that decided", {}),
            "reasons": ("why the price is what it is, one or more of: " + ", ".join(_PRICE_REASONS),
                        {"items": {"type": "string"}}),
            "currency": ("ISO 4217 code, the catalog's", {}),
            "propensity": ("how likely this price was under `policy`: 1 for a point mass (control, uniform, "
                           "greedy), the density of log(price) for a dithered draw; > 0", {"exclusiveMinimum": 0}),
            "policy": ("how the price was chosen: control, uniform, greedy or dither:<w>",
                       {"examples": ["greedy", "control", "uniform", "dither:0.05"]}),
            "schema_version": ("version of this format", {"minimum": 1, "maximum": sch.PRICE_SCHEMA_VERSION}),
        }),
    "DeadLetter": (
        "A rejected record (dead-letter topic, key = the original key). Its size is not limited by the "
        "reader: the original may itself be oversize.", {
            "original_b64": ("the original bytes, canonical padded base64; only the first "
                             f"{sch.DEAD_LETTER_MAX_ORIGINAL} of them when `original_size` is present",
                             {"pattern": sch.BASE64_PATTERN, "contentEncoding": "base64"}),
            "topic": ("where the original came from", {}),
            "partition": ("its partition", {"minimum": 0, "maximum": sch.MAX_PARTITION}),
            "offset": ("its offset", {"minimum": 0, "maximum": sch.MAX_OFFSET}),
            "error_code": ("why it was rejected", {"examples": list(_DEAD_REASONS)}),
            "message": ("the reason, for humans", {}),
            "ts": ("when it was rejected, epoch seconds", {"minimum": 0}),
            "original_size": ("present when the original was too large to carry whole: its full size in bytes "
                              "(`original_b64` holds its first bytes; the whole record is at `topic`/`partition`/"
                              "`offset` for the topic's retention)", {"minimum": 0, "maximum": sch.MAX_OFFSET}),
        }),
}


def _type(types: tuple[type, ...]) -> str | list[str]:
    """The parser's accepted Python types as a JSON Schema ``type`` (bool is never a number there)."""
    names = {str: "string", int: "integer", float: "number", list: "array", _NONE: "null"}
    out = ["number" if t is float else names[t] for t in types]
    if "number" in out and "integer" in out:
        out.remove("integer")  # (int, float): any number
    return out[0] if len(out) == 1 else out


def _defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def record_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of one record (``ClickEvent``, ``CatalogItem``, ``PriceEvent``, ``DeadLetter``)."""
    _, cls, spec = RECORDS[name]
    description, rules = _RULES[name]
    if set(rules) != set(spec):
        raise RuntimeError(f"{name}: schema rules {sorted(rules)} do not cover the parser's fields {sorted(spec)}")
    defaults = _defaults(cls)
    props: dict[str, Any] = {}
    for field, (types, _required) in spec.items():
        text, extra = rules[field]
        prop: dict[str, Any] = {"description": text, "type": _type(types)}
        if types == (str,) and field.endswith("_id"):  # the parser's rule for every id
            prop |= {"minLength": 1, "maxLength": sch.MAX_ID_LEN}
        prop |= extra
        if field in defaults and not _required:
            prop["default"] = defaults[field]
        props[field] = prop
    return {
        "$schema": DRAFT,
        "$id": f"urn:pricing-streams:schema:{RECORDS[name][0].removesuffix('.schema.json')}",
        "title": name,
        "description": f"{description} {'' if name == 'DeadLetter' else _SIZE}{_COMMON}",
        "type": "object",
        "properties": props,
        "required": [f for f, (_, required) in spec.items() if required],
        "additionalProperties": False,
    }


def render(name: str) -> str:
    """One schema file's text: stable key order, two-space indent, final newline."""
    return json.dumps(record_schema(name), indent=2, ensure_ascii=False) + "\n"


def write_all(out: Path) -> list[Path]:
    """Write every record's schema file into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (file, _, _) in RECORDS.items():
        (out / file).write_text(render(name), encoding="utf-8")
        paths.append(out / file)
    return paths


def stale(out: Path) -> list[str]:
    """Files under ``out`` that are missing or differ from the generated text."""
    return [file for name, (file, _, _) in RECORDS.items()
            if not (out / file).is_file() or (out / file).read_text(encoding="utf-8") != render(name)]


def main(argv: list[str] | None = None) -> int:
    """``python -m streams.tools.jsonschema``: write (or check) the JSON Schema files of the wire records."""
    parser = argparse.ArgumentParser(prog="python -m streams.tools.jsonschema", description=main.__doc__,
                                     epilog=f"PriceEvent schema_version: {sch.PRICE_SCHEMA_VERSION}")
    parser.add_argument("--out", type=Path, default=Path("schemas"), help="directory of the files (default: schemas)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is missing or stale")
    add_version(parser)
    args = parser.parse_args(argv)
    if args.check:
        if bad := stale(args.out):
            print(f"error: stale or missing under {args.out}: {', '.join(bad)}; "
                  f"run python -m streams.tools.jsonschema --out {args.out}", file=sys.stderr)
            return 1
        print(f"{len(RECORDS)} schema files under {args.out} are up to date")
        return 0
    for path in write_all(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
