"""A list or file of events -> a Kafka topic, keyed by user: shared by the replay tool and the tests.

Clickstream records must be keyed by ``user_id``: the worker keeps per-user state in the
partition the key selects, and dead-letters records whose key is not their user id.

Inputs are our JSONL (``.gz`` too) or the public e-commerce behaviour CSV layout
(:func:`streams.public_csv.csv_records`). Either way a file becomes :class:`Record` objects.

>>> list(keyed([b'{"user_id": "u1", "x": 1}', b'not json']))
[(b'u1', b'{"user_id": "u1", "x": 1}'), (None, b'not json')]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import orjson

# the CSV layout's parsing lives in streams.public_csv (training reads it too); re-exported here
from streams.public_csv import (  # noqa: F401
    EVENT_TYPE_MAP,
    PUBLIC_REQUIRED,
    SKIPPED_TYPES,
    Record,
    classify,
    csv_records,
    csv_rows,
    derive_catalog,
    map_public_row,
    open_binary,
    parse_event_time,
    row_event_id,
)


def read_jsonl(path: str | Path) -> Iterator[bytes]:
    """Lines of a JSONL file (``.gz`` too), as raw bytes, blank lines skipped."""
    with open_binary(path) as fh:
        for line in fh:
            if line := line.strip():
                yield line


def count_lines(path: str | Path, chunk: int = 1 << 20) -> int:
    """Number of newline-terminated lines (plus a last unterminated one), for a progress total."""
    n, last = 0, b"\n"
    with open_binary(path) as fh:
        while block := fh.read(chunk):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def keyed(payloads: Iterable[bytes], field: str = "user_id") -> Iterator[tuple[bytes | None, bytes]]:
    """Pair each payload with its key: the ``field`` value, or None when it cannot be read."""
    for value in payloads:
        try:
            key = orjson.loads(value).get(field)
        except (orjson.JSONDecodeError, AttributeError):
            key = None
        yield (key.encode() if isinstance(key, str) else None), value


def event_ts(obj: object) -> float | None:
    """The numeric ``ts`` of a decoded event, or None."""
    ts = obj.get("ts") if isinstance(obj, dict) else None
    return float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else None


def jsonl_records(path: str | Path, skip: int = 0) -> Iterator[Record]:
    """Records of a JSONL file of ClickEvents after the first ``skip``; non-objects stay raw bytes."""
    for line in islice(read_jsonl(path), skip, None):
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            yield Record(None, line, invalid=classify(line))
            continue
        user = obj.get("user_id")
        key = user.encode() if isinstance(user, str) else None
        yield Record(key, obj, event_ts(obj), invalid=classify(obj))


@dataclass
class Delivery:
    """What a publish call did; ``aborted`` when a send raised and publishing stopped early."""

    sent: int = 0
    failed: int = 0
    first_error: str | None = None
    aborted: bool = False


def publish(producer: Any, topic: str, records: Iterable[tuple[bytes | None, bytes]],
            flush_every: int = 10_000, headers: list[tuple[str, bytes]] | None = None) -> Delivery:
    """Send ``(key, value)`` records with a kafka-python producer; count deliveries and failures.
    ``headers`` go on every record (e.g. the worker's history mark, ``streams.pipeline.HISTORY_HEADER``).

    A send that raises (buffer full past ``max_block_ms``, broker unreachable) is counted as
    failed and stops publishing: what was handed over is still flushed and counted.
    """
    result = Delivery()
    futures: list[Any] = []

    def settle() -> None:
        producer.flush()
        for fut in futures:
            if fut.failed():
                result.failed += 1
                result.first_error = result.first_error or repr(fut.exception)
            else:
                result.sent += 1
        futures.clear()

    for key, value in records:
        try:
            futures.append(producer.send(topic, key=key, value=value, headers=headers))
        except Exception as exc:  # noqa: BLE001 - any send error ends the run, reported in the summary
            result.failed += 1
            result.first_error = result.first_error or repr(exc)
            result.aborted = True
            break
        if len(futures) >= flush_every:
            settle()
    try:
        settle()
    except Exception as exc:  # noqa: BLE001 - a flush that cannot finish fails what is pending
        result.failed += len(futures)
        result.first_error = result.first_error or repr(exc)
        result.aborted = True
    return result


