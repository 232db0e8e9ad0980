"""``PRICING_LOG_FORMAT=json``: one JSON object per log line, for log shippers.

Fields: ``ts`` (ISO 8601, UTC), ``level``, ``logger``, ``message`` (formatted), ``exc`` (traceback,
when there is one) and every ``extra={...}`` field of the call.

>>> import logging
>>> rec = logging.LogRecord("pricing.worker", logging.INFO, __file__, 1, "catalog loaded: %d items", (8,), None)
>>> rec.partition = 3
>>> line = orjson.loads(JsonFormatter().format(rec))
>>> line["level"], line["logger"], line["message"], line["partition"]
('INFO', 'pricing.worker', 'catalog loaded: 8 items', 3)
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import orjson

# attributes every LogRecord has: anything else on a record came from ``extra=``
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON; values JSON cannot hold are written with ``str``."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON object on one line."""
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        return orjson.dumps(out, default=str).decode()


def faust_logging_config(fmt: str) -> dict[str, Any] | None:
    """Faust's ``logging_config`` for ``fmt`` (``text``: None, Faust's own colored lines)."""
    if fmt == "text":
        return None
    factory = {"()": f"{__name__}.JsonFormatter"}
    # merged into Faust's own config: its handlers keep their names, only the formatters change
    return {"merge": True, "version": 1, "formatters": {"default": factory, "colored": factory}}
