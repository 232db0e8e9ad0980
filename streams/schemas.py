"""Wire schemas: the only place bytes become domain objects, and back.

Every topic carries UTF-8 JSON objects (parsed with orjson). Parsing either returns a
validated frozen object or raises :class:`SchemaError` with a machine-readable ``code``;
nothing else escapes, whatever the bytes. Unknown fields are **rejected** (``UNKNOWN_FIELD``)
unless the caller passes ``on_unknown``: then they are dropped and ``on_unknown`` is told their
names (the worker does so for ``PRICING_UNKNOWN_FIELDS=ignore``, see docs/settings.md).

>>> ev = parse_click(b'{"event_id":"e1","ts":1700000000.0,"user_id":"u1","session_id":"s1",'
...                  b'"type":"view","item_id":"i1","price":9.99}', now=1700000000.0)
>>> ev.type, ev.price, ev.quantity
('view', 9.99, 1)
>>> parse_click(b'{"oops"', now=0.0)
Traceback (most recent call last):
...
streams.schemas.SchemaError: NOT_JSON: payload is not valid JSON
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

EventType = Literal["view", "click", "add_to_cart", "purchase", "review"]
EVENT_TYPES: Final[tuple[str, ...]] = ("view", "click", "add_to_cart", "purchase", "review")
Arm = Literal["control", "uniform", "treatment"]

MAX_PAYLOAD_BYTES: Final = 16_384
MAX_FUTURE_SKEW_S: Final = 300.0
MAX_ID_LEN: Final = 128
# Version of the PriceEvent wire format. Writers always send it; a record without it is version 1
# (written before the field existed). A reader refuses versions newer than it knows (BAD_VALUE):
# with unknown fields rejected, any change to the fields is a new version.
PRICE_SCHEMA_VERSION: Final = 1
# Kafka's own bounds: partitions are int32, offsets int64
MAX_PARTITION: Final = 2**31 - 1
MAX_OFFSET: Final = 2**63 - 1
# Canonical padded base64. `(?![\s\S])` is "end of input" in both ECMA-262 (JSON Schema) and
# Python regexes, where `$` would also match before a final newline.
BASE64_PATTERN: Final = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?(?![\s\S])"
_BASE64: Final = re.compile(BASE64_PATTERN)


class SchemaError(ValueError):
    """A payload that is not a valid record; ``code`` is stable, ``reason`` is for humans."""

    CODES: Final = (
        "NOT_JSON", "NOT_OBJECT", "OVERSIZE", "MISSING_FIELD", "UNKNOWN_FIELD", "WRONG_TYPE",
        "BAD_VALUE", "UNKNOWN_EVENT_TYPE", "BAD_PRICE", "FUTURE_TIMESTAMP",
    )

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ClickEvent:
    """One clickstream event; ``ts`` is event time in epoch seconds; ``price`` the price shown."""

    event_id: str
    ts: float
    user_id: str
    session_id: str
    type: str
    item_id: str
    price: float
    quantity: int = 1
    rating: float | None = None


@dataclass(frozen=True, slots=True)
class CatalogItem:
    """An item's pricing terms, keyed by ``item_id`` on the compacted catalog topic."""

    item_id: str
    category: str
    base_price: float
    unit_cost: float
    min_price: float
    max_price: float
    currency: str = "EUR"


def decision_id(event_id: str, item_id: str) -> str:
    """Stable id of the decision for (event, item), part of the wire contract: a replayed event yields the
    same id, and the catalog service applies each id once.

    >>> decision_id("e1", "i9") == decision_id("e1", "i9") != decision_id("e1", "i8")
    True
    """
    return hashlib.blake2b(f"{event_id}\x1f{item_id}".encode(), digest_size=12).hexdigest()


@dataclass(frozen=True, slots=True)
class PriceEvent:
    """A personalized price for one user and item; ``decision_id`` makes applying it idempotent."""

    decision_id: str
    ts: float
    user_id: str
    item_id: str
    price: float
    base_price: float
    arm: str
    expected_conversion: float | None  # None when the model output was invalid (MODEL_INVALID)
    expected_profit: float | None
    model_version: str
    reasons: tuple[str, ...]
    currency: str = "EUR"
    # how the price was chosen, for estimators that reweight logged prices: with policy "control"
    # (base price) or "greedy" (the decision itself), propensity is the probability 1 of a point
    # mass; with a "dither:<w>" policy it is the density of log(price) of the draw (pricing.explore)
    propensity: float = 1.0
    policy: str = "greedy"
    schema_version: int = PRICE_SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected record: the original bytes (base64 on the wire), where it came from, and why.

    ``original_size`` is set when ``original`` holds only the first bytes of a record too large to
    carry whole (:data:`DEAD_LETTER_MAX_ORIGINAL`): the whole record stays in its source topic at
    ``topic``/``partition``/``offset``.
    """

    original: bytes
    topic: str
    partition: int
    offset: int
    error_code: str
    message: str
    ts: float
    original_size: int | None = None


# The most original bytes a dead letter carries: base64 makes them 4/3 as large, and a dead letter must
# stay well under Kafka's default message limit (1 MiB), or the broker refuses it and the batch that
# produced it can never be committed. A larger original is cut to its first bytes; its full size and
# its position in the source topic are in the letter.
DEAD_LETTER_MAX_ORIGINAL: Final[int] = 256 * 1024


# field name -> (accepted python types, required)
_STR = (str,)
_NUM = (int, float)
_CLICK: Final[dict[str, tuple[tuple[type, ...], bool]]] = {
    "event_id": (_STR, True), "ts": (_NUM, True), "user_id": (_STR, True),
    "session_id": (_STR, True), "type": (_STR, True), "item_id": (_STR, True),
    "price": (_NUM, True), "quantity": ((int,), False), "rating": (_NUM + (type(None),), False),
}
_CATALOG: Final[dict[str, tuple[tuple[type, ...], bool]]] = {
    "item_id": (_STR, True), "category": (_STR, True), "base_price": (_NUM, True),
    "unit_cost": (_NUM, True), "min_price": (_NUM, True), "max_price": (_NUM, True),
    "currency": (_STR, False),
}
_PRICE: Final[dict[str, tuple[tuple[type, ...], bool]]] = {
    "decision_id": (_STR, True), "ts": (_NUM, True), "user_id": (_STR, True), "item_id": (_STR, True),
    "price": (_NUM, True), "base_price": (_NUM, True), "arm": (_STR, True),
    "expected_conversion": (_NUM + (type(None),), True), "expected_profit": (_NUM + (type(None),), True),
    "model_version": (_STR, True), "reasons": ((list,), True), "currency": (_STR, False),
    "propensity": (_NUM, False), "policy": (_STR, False),
    "schema_version": ((int,), False),
}
_DEAD: Final[dict[str, tuple[tuple[type, ...], bool]]] = {
    "original_b64": (_STR, True), "topic": (_STR, True), "partition": ((int,), True), "offset": ((int,), True),
    "error_code": (_STR, True), "message": (_STR, True), "ts": (_NUM, True), "original_size": ((int,), False),
}


OnUnknown = Callable[[list[str]], object]


def _load_object(data: bytes, spec: dict[str, tuple[tuple[type, ...], bool]], max_bytes: int,
                 on_unknown: OnUnknown | None = None) -> dict[str, Any]:
    """Bytes -> dict whose keys and value types match ``spec``; raises SchemaError only.

    Fields not in ``spec`` raise ``UNKNOWN_FIELD``, or, with ``on_unknown``, are passed to it by name
    and otherwise ignored (only the fields in ``spec`` are ever read).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SchemaError("WRONG_TYPE", f"payload must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise SchemaError("OVERSIZE", f"payload is {len(data)} bytes, limit {max_bytes}")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise SchemaError("NOT_JSON", "payload is not valid JSON") from None
    if not isinstance(obj, dict):
        raise SchemaError("NOT_OBJECT", f"payload is a JSON {type(obj).__name__}, not an object")
    if unknown := sorted(set(obj) - set(spec)):
        if on_unknown is None:
            raise SchemaError("UNKNOWN_FIELD", f"unknown fields {unknown[:5]}")
        on_unknown(unknown)
    for name, (types, required) in spec.items():
        if name not in obj:
            if required:
                raise SchemaError("MISSING_FIELD", f"missing field {name!r}")
            continue
        value = obj[name]
        # bool is an int subclass in Python; a JSON true is never a valid number here
        if isinstance(value, bool) or not isinstance(value, types):
            raise SchemaError("WRONG_TYPE", f"field {name!r} has type {type(value).__name__}")
        if isinstance(value, str) and name.endswith("_id") and not 0 < len(value) <= MAX_ID_LEN:
            raise SchemaError("BAD_VALUE", f"field {name!r} must be 1..{MAX_ID_LEN} characters")
    return obj


def _finite(name: str, value: float, *, code: str = "BAD_VALUE", positive: bool = False) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        kind = "positive" if positive else "non-negative"
        raise SchemaError(code, f"field {name!r} must be a finite {kind} number, got {value!r}")
    return v


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def parse_click(data: bytes, *, now: float, max_bytes: int = MAX_PAYLOAD_BYTES,
                max_future_skew_s: float = MAX_FUTURE_SKEW_S, on_unknown: OnUnknown | None = None) -> ClickEvent:
    """Validate one clickstream payload; ``now`` (wall time) bounds how far ahead ``ts`` may be;
    unknown fields are rejected unless ``on_unknown`` takes them (see the module doc)."""
    obj = _load_object(data, _CLICK, max_bytes, on_unknown)
    if obj["type"] not in EVENT_TYPES:
        raise SchemaError("UNKNOWN_EVENT_TYPE", f"event type {obj['type'][:40]!r} not in {EVENT_TYPES}")
    ts = _finite("ts", obj["ts"])
    if ts > now + max_future_skew_s:
        raise SchemaError("FUTURE_TIMESTAMP", f"ts {ts:.0f} is {ts - now:.0f} s ahead of now")
    price = _finite("price", obj["price"], code="BAD_PRICE")
    quantity = obj.get("quantity", 1)
    if not 1 <= quantity <= 10_000:
        raise SchemaError("BAD_VALUE", f"quantity must be 1..10000, got {quantity}")
    rating = obj.get("rating")
    if rating is not None and not (math.isfinite(rating) and 0 <= rating <= 5):
        raise SchemaError("BAD_VALUE", f"rating must be within 0..5, got {rating!r}")
    return ClickEvent(obj["event_id"], ts, obj["user_id"], obj["session_id"], obj["type"],
                      obj["item_id"], price, quantity, None if rating is None else float(rating))


def parse_catalog(data: bytes, *, max_bytes: int = MAX_PAYLOAD_BYTES, on_unknown: OnUnknown | None = None
                  ) -> CatalogItem:
    """Validate one catalog record; bounds must be ordered min <= base <= max and cost >= 0."""
    obj = _load_object(data, _CATALOG, max_bytes, on_unknown)
    base = _finite("base_price", obj["base_price"], code="BAD_PRICE", positive=True)
    cost = _finite("unit_cost", obj["unit_cost"], code="BAD_PRICE")
    lo = _finite("min_price", obj["min_price"], code="BAD_PRICE", positive=True)
    hi = _finite("max_price", obj["max_price"], code="BAD_PRICE", positive=True)
    if not lo <= base <= hi:
        raise SchemaError("BAD_PRICE", f"need min_price <= base_price <= max_price, got {lo}, {base}, {hi}")
    return CatalogItem(obj["item_id"], obj["category"], base, cost, lo, hi, obj.get("currency", "EUR"))


def parse_price(data: bytes, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> PriceEvent:
    """Validate one PriceEvent payload (the catalog-side consumer uses this)."""
    obj = _load_object(data, _PRICE, max_bytes)
    if obj["arm"] not in ("control", "uniform", "treatment"):
        raise SchemaError("BAD_VALUE", f"arm must be control, uniform or treatment, got {obj['arm'][:40]!r}")
    if not all(isinstance(r, str) for r in obj["reasons"]):
        raise SchemaError("WRONG_TYPE", "reasons must be a list of strings")
    version = obj.get("schema_version", 1)
    if not 1 <= version <= PRICE_SCHEMA_VERSION:
        raise SchemaError("BAD_VALUE", f"schema_version {version} is not one this reader knows "
                                       f"(1..{PRICE_SCHEMA_VERSION})")
    return PriceEvent(obj["decision_id"], _finite("ts", obj["ts"]), obj["user_id"], obj["item_id"],
                      _finite("price", obj["price"], code="BAD_PRICE", positive=True),
                      _finite("base_price", obj["base_price"], code="BAD_PRICE", positive=True),
                      obj["arm"], _optional_float(obj["expected_conversion"]),
                      _optional_float(obj["expected_profit"]), obj["model_version"], tuple(obj["reasons"]),
                      obj.get("currency", "EUR"),
                      _finite("propensity", obj.get("propensity", 1.0), positive=True), obj.get("policy", "greedy"),
                      version)


def dumps(record: ClickEvent | CatalogItem | PriceEvent) -> bytes:
    """Serialize a record to its wire bytes (optional fields at their default are kept).

    orjson serialises slotted dataclasses natively, field by field in declaration order: the
    same bytes as ``orjson.dumps(asdict(record))`` without building the dict (a hot path).
    """
    return orjson.dumps(record)


def dead_letter_bytes(letter: DeadLetter, max_original: int = DEAD_LETTER_MAX_ORIGINAL) -> bytes:
    """Serialize a dead letter; the original bytes travel base64-encoded (``original_b64``). An original
    longer than ``max_original`` bytes travels cut to its first ``max_original``, with its full size in
    ``original_size``.

    >>> d = parse_dead_letter(dead_letter_bytes(DeadLetter(b"x" * 10, "t", 0, 7, "OVERSIZE", "m", 1.0), 4))
    >>> d.original, d.original_size
    (b'xxxx', 10)
    """
    import base64

    original = bytes(letter.original)
    size = letter.original_size if letter.original_size is not None else len(original)
    cut = len(original) > max_original
    body: dict[str, object] = {
        "original_b64": base64.b64encode(original[:max_original] if cut else original).decode("ascii"),
        "topic": letter.topic, "partition": letter.partition, "offset": letter.offset,
        "error_code": letter.error_code, "message": letter.message, "ts": letter.ts,
    }
    if cut or letter.original_size is not None:
        body["original_size"] = size
    return orjson.dumps(body)


def parse_dead_letter(data: bytes, *, max_bytes: int = 2**31) -> DeadLetter:
    """Inverse of :func:`dead_letter_bytes` (for tools and tests reading the dead-letter topic).

    Validated like the other records (raises :class:`SchemaError` only). No size limit by default:
    an oversize original is exactly what a dead letter may carry.
    """
    import base64

    obj = _load_object(data, _DEAD, max_bytes)
    if not _BASE64.match(obj["original_b64"]):
        raise SchemaError("BAD_VALUE", "original_b64 is not canonical padded base64")
    for name, hi in (("partition", MAX_PARTITION), ("offset", MAX_OFFSET)):
        if not 0 <= obj[name] <= hi:
            raise SchemaError("BAD_VALUE", f"{name} must be within 0..{hi}, got {obj[name]}")
    size = obj.get("original_size")
    if size is not None and not 0 <= size <= MAX_OFFSET:
        raise SchemaError("BAD_VALUE", f"original_size must be within 0..{MAX_OFFSET}, got {size}")
    return DeadLetter(base64.b64decode(obj["original_b64"]), obj["topic"], obj["partition"],
                      obj["offset"], obj["error_code"], obj["message"], _finite("ts", obj["ts"]), size)
