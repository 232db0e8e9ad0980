"""The public e-commerce behaviour CSV layout, parsed: shared by ``pricing-replay`` and ``pricing-train``.

``event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session``
(gzip or not). Each data line becomes a :class:`Record`: a ClickEvent-shaped object, with the
SchemaError code the worker would refuse it with (``invalid``) or the reason it is deliberately
left out (``skip``). :func:`derive_catalog` makes the catalog such an export lacks. Pure parsing:
no Kafka, no files written, so the training code may read shops' exports with the same rules the
replay tool sends them by.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Final, cast

import orjson

from streams.schemas import CatalogItem, SchemaError, dumps, parse_catalog, parse_click


def open_binary(path: str | Path) -> BinaryIO:
    """Open a file for reading bytes, decompressing ``.gz``."""
    if str(path).endswith(".gz"):
        return cast(BinaryIO, gzip.open(path, "rb"))
    return open(path, "rb")  # noqa: SIM115


@dataclass(slots=True)
class Record:
    """One input record on its way to the clickstream.

    ``value`` is a JSON object (so ``ts`` can still be shifted) or raw bytes sent unchanged;
    ``ts`` is the event time used for pacing (None when unreadable); ``skip`` names why the
    record is deliberately not sent; ``invalid`` is the SchemaError code the worker will
    dead-letter it with (None when valid), known before sending.
    """

    key: bytes | None
    value: dict[str, Any] | bytes
    ts: float | None = None
    skip: str | None = None
    invalid: str | None = None

    def payload(self) -> bytes:
        """The wire bytes."""
        return self.value if isinstance(self.value, bytes) else orjson.dumps(self.value)


def classify(obj: dict[str, Any] | bytes) -> str | None:
    """The SchemaError code a value fails with (future skew aside), or None when it is valid."""
    try:
        parse_click(obj if isinstance(obj, bytes) else orjson.dumps(obj), now=float("inf"))
    except SchemaError as exc:
        return exc.code
    return None


# event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session
PUBLIC_REQUIRED: Final = ("event_time", "event_type", "product_id", "price", "user_id", "user_session")
EVENT_TYPE_MAP: Final = {"view": "view", "cart": "add_to_cart", "purchase": "purchase"}
# known types our schema has no equivalent for: not sent, counted as skipped by type
SKIPPED_TYPES: Final = frozenset({"remove_from_cart"})


def parse_event_time(text: str) -> float | None:
    """``2019-10-01 00:00:00 UTC`` (or ISO 8601; naive means UTC) -> epoch seconds, None if unreadable.

    >>> parse_event_time("2019-10-01 00:00:00 UTC"), parse_event_time("yesterday")
    (1569888000.0, None)
    """
    s = text.strip()
    if s.endswith(" UTC"):
        s = s[:-4] + "+00:00"
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def row_event_id(source: str, line_no: int) -> str:
    """Stable event id of a CSV row: a hash of the file's name and the row's line number."""
    return "csv-" + hashlib.blake2b(f"{source}:{line_no}".encode(), digest_size=8).hexdigest()


def map_public_row(row: dict[str, str], event_id: str) -> Record:
    """One CSV row -> a ClickEvent-shaped record; a bad cell is kept as found so the worker says why.

    Empty cells leave their field out (MISSING_FIELD); an unreadable time or price stays a string
    (WRONG_TYPE); a negative price stays negative (BAD_PRICE); an unknown type stays as is
    (UNKNOWN_EVENT_TYPE). ``remove_from_cart`` is skipped (our schema has no such event).
    """
    cell = {name: (row.get(name) or "").strip() for name in PUBLIC_REQUIRED}
    if cell["event_type"] in SKIPPED_TYPES:
        return Record(None, {}, skip=cell["event_type"])
    ts = parse_event_time(cell["event_time"])
    try:
        number = float(cell["price"])
    except ValueError:
        number = math.nan
    price: float | str = number if math.isfinite(number) else cell["price"]  # nan/inf/text stay text
    fields: dict[str, Any] = {
        "ts": cell["event_time"] if ts is None else ts, "user_id": cell["user_id"],
        "session_id": cell["user_session"], "type": EVENT_TYPE_MAP.get(cell["event_type"], cell["event_type"]),
        "item_id": cell["product_id"], "price": price,
    }
    obj = {"event_id": event_id} | {k: v for k, v in fields.items() if v != ""}
    key = cell["user_id"].encode() if cell["user_id"] else None
    return Record(key, obj, ts, invalid=classify(obj))


def csv_rows(path: str | Path, skip: int = 0, *,
             blank: bool = False) -> Iterator[tuple[int, bytes, dict[str, str] | None]]:
    """``(line number, raw line, cells by column)`` per data line after the first ``skip``.

    Cells are None when the line is broken (undecodable, or the wrong number of columns). Blank
    lines are passed over, or with ``blank`` yielded as ``(line number, b"", None)`` so that a
    reader can count them.
    """
    with open_binary(path) as fh:
        names = [n.strip() for n in next(csv.reader([fh.readline().decode("utf-8", "replace")]), [])]
        if missing := [c for c in PUBLIC_REQUIRED if c not in names]:
            raise ValueError(f"{path}: not the public e-commerce CSV layout, missing columns {missing}")
        for line_no, line in enumerate(fh, start=2):
            if not line.strip():
                if blank:
                    yield line_no, b"", None
                continue
            if skip > 0:  # resuming: skipped lines are not even parsed
                skip -= 1
                continue
            try:
                cells = next(csv.reader([line.decode("utf-8")]))
            except (UnicodeDecodeError, csv.Error, StopIteration):
                cells = []
            yield line_no, line.rstrip(b"\r\n"), dict(zip(names, cells, strict=True)) \
                if len(cells) == len(names) else None


def header_is_public(path: str | Path) -> bool:
    """Whether the file's first line names every column the public layout needs (unreadable: False)."""
    try:
        with open_binary(path) as fh:
            first = fh.readline(65536).decode("utf-8", "replace")
    except (OSError, EOFError):
        return False
    names = {n.strip() for n in next(csv.reader([first]), [])}
    return all(c in names for c in PUBLIC_REQUIRED)


def csv_records(path: str | Path, skip: int = 0) -> Iterator[Record]:
    """Records of a public-layout CSV after the first ``skip``; a broken line stays raw bytes (NOT_JSON)."""
    source = Path(path).name.removesuffix(".gz")
    for line_no, line, row in csv_rows(path, skip):
        if row is None:
            yield Record(None, line, invalid=classify(line))
        else:
            yield map_public_row(row, row_event_id(source, line_no))


def derive_catalog(path: str | Path, cost_ratio: float = 0.6, band: float = 0.3) -> list[CatalogItem]:
    """One CatalogItem per product of a public-layout CSV, from its valid rows with a positive price.

    base = median observed price, unit_cost = base * cost_ratio, min/max = base * (1 -/+ band);
    category = category_code, else category_id, else ``unknown``.
    """
    prices: dict[str, Counter[float]] = {}
    category: dict[str, str] = {}
    for _, _, row in csv_rows(path):
        rec = None if row is None else map_public_row(row, "x")
        if rec is None or rec.skip or rec.invalid or not isinstance(rec.value, dict) or rec.value["price"] <= 0:
            continue
        item = rec.value["item_id"]
        prices.setdefault(item, Counter())[rec.value["price"]] += 1
        if item not in category:
            category[item] = (row.get("category_code") or row.get("category_id") or "").strip()  # type: ignore[union-attr]
    items = []
    for item, counts in prices.items():
        base = round(_median(counts), 2)
        terms = CatalogItem(item, category[item] or "unknown", base, round(base * cost_ratio, 2),
                            max(0.01, round(base * (1 - band), 2)), round(base * (1 + band), 2))
        try:
            items.append(parse_catalog(dumps(terms)))  # the worker's own check: skip what it would refuse
        except SchemaError:
            continue
    return items


def _median(counts: Counter[float]) -> float:
    """Median of a multiset given as value -> count.

    >>> _median(Counter({1.0: 1, 2.0: 1, 10.0: 2}))
    6.0
    """
    values, n = sorted(counts), sum(counts.values())
    seen, lower = 0, None
    for v in values:
        seen += counts[v]
        if lower is None and seen >= (n + 1) // 2:
            lower = v
        if seen >= n // 2 + 1:
            return v if n % 2 else (lower + v) / 2  # type: ignore[operator]
    raise ValueError("median of an empty multiset")
