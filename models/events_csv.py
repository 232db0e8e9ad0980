"""A shop's own export in the public e-commerce CSV layout, read for training.

``pricing-train --events export.csv.gz`` reads the layout ``pricing-replay`` sends
(``event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session``),
with the same row mapping (:mod:`streams.public_csv`). A row that cannot be used is never fatal: it
is counted under its reason, with the first few examples (line number and raw text), and the
report is printed and kept in the training summary. Reasons:

* ``empty line``; ``broken line`` (not UTF-8, or the wrong number of columns);
* ``<column>: <problem> (<CODE>)``: the worker's own SchemaError code for the row, naming the
  column, e.g. ``user_id: empty (MISSING_FIELD)``, ``event_time: unreadable (WRONG_TYPE)``,
  ``price: negative or not a number (BAD_PRICE)``, ``event_type: unknown (UNKNOWN_EVENT_TYPE)``;
* ``price: zero``: valid on the wire, but an exposure at price 0 says nothing about demand;
* ``event_type: remove_from_cart (no such event in our schema)``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.public_csv import csv_rows, header_is_public, map_public_row, row_event_id
from streams.schemas import ClickEvent, SchemaError, parse_click

# wire field -> the CSV column it came from (reasons name what the shop can find in its file)
_COLUMN = {"ts": "event_time", "type": "event_type", "item_id": "product_id", "price": "price",
           "user_id": "user_id", "session_id": "user_session"}
_PROBLEM = {"MISSING_FIELD": "empty", "WRONG_TYPE": "unreadable", "BAD_VALUE": "too long or out of range",
            "BAD_PRICE": "negative or not a number", "UNKNOWN_EVENT_TYPE": "unknown"}


@dataclass
class CsvReport:
    """What reading a CSV export kept and left out (per reason, with examples)."""

    path: str
    lines: int = 0                     # data lines after the header, blank ones included
    used: int = 0
    unusable: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, line_no: int, raw: bytes, keep: int = 3) -> None:
        """Count one unusable line under ``reason``; keep the first ``keep`` as examples."""
        self.unusable[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < keep:
            ex.append(f"line {line_no}: {raw[:160].decode('utf-8', 'replace')}")

    def text(self) -> str:
        """Human-readable lines for stderr."""
        left = sum(self.unusable.values())
        lines = [f"csv: {self.path}: {self.lines:,} lines, {self.used:,} events used, {left:,} left out"]
        for reason, n in self.unusable.most_common():
            lines.append(f"csv:   {n:>8,}  {reason}")
            lines += [f"csv:             e.g. {e}" for e in self.examples[reason]]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (for the training summary's knobs)."""
        return {"path": self.path, "lines": self.lines, "used": self.used, "unusable": dict(self.unusable),
                "examples": self.examples}


def reason_of(exc: SchemaError) -> str:
    """A reason naming the CSV column and the worker's code.

    >>> reason_of(SchemaError("MISSING_FIELD", "missing field 'user_id'"))
    'user_id: empty (MISSING_FIELD)'
    >>> reason_of(SchemaError("UNKNOWN_EVENT_TYPE", "event type 'wishlist' not in (...)"))
    'event_type: unknown (UNKNOWN_EVENT_TYPE)'
    """
    m = re.search(r"field '(\w+)'", exc.reason)
    column = _COLUMN.get(m.group(1), m.group(1)) if m else ("event_type" if exc.code == "UNKNOWN_EVENT_TYPE" else "")
    problem = _PROBLEM.get(exc.code, exc.code.lower())
    return f"{column}: {problem} ({exc.code})" if column else f"{problem} ({exc.code})"


def is_public_csv(path: str | Path) -> bool:
    """CSV by suffix (``.csv``, ``.csv.gz``), else by a header naming the layout's columns."""
    return str(path).removesuffix(".gz").endswith(".csv") or header_is_public(path)


def read_public_csv(path: str | Path) -> tuple[list[ClickEvent], CsvReport]:
    """Wire events from a public-layout CSV and the report of the lines left out.

    Raises ValueError only when the file is not the layout at all (its header lacks a column).
    """
    source = Path(path).name.removesuffix(".gz")
    report = CsvReport(str(path))
    events: list[ClickEvent] = []
    for line_no, raw, row in csv_rows(path, blank=True):
        report.lines += 1
        if row is None:
            report.add("empty line" if not raw else "broken line (not UTF-8, or the wrong number of columns)",
                       line_no, raw)
            continue
        rec = map_public_row(row, row_event_id(source, line_no))
        if rec.skip:
            report.add(f"event_type: {rec.skip} (no such event in our schema)", line_no, raw)
            continue
        try:
            ev = parse_click(rec.payload(), now=float("inf"))
        except SchemaError as exc:
            report.add(reason_of(exc), line_no, raw)
            continue
        if ev.price <= 0:
            report.add("price: zero", line_no, raw)
            continue
        events.append(ev)
    report.used = len(events)
    return events, report
