"""A list or file of events -> a Kafka topic, keyed by user: shared by the replay tool and the tests.

Clickstream records must be keyed by ``user_id``: the worker keeps per-user state in the
partition the key selects, and dead-letters records whose key is not their user id.

>>> list(keyed([b'{"user_id": "u1", "x": 1}', b'not json']))
[(b'u1', b'{"user_id": "u1", "x": 1}'), (None, b'not json')]
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson


def read_jsonl(path: str | Path) -> Iterator[bytes]:
    """Lines of a JSONL file (``.gz`` too), as raw bytes, blank lines skipped."""
    opener: Any = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fh:
        for line in fh:
            if line := line.strip():
                yield line


def keyed(payloads: Iterable[bytes], field: str = "user_id") -> Iterator[tuple[bytes | None, bytes]]:
    """Pair each payload with its key: the ``field`` value, or None when it cannot be read."""
    for value in payloads:
        try:
            key = orjson.loads(value).get(field)
        except (orjson.JSONDecodeError, AttributeError):
            key = None
        yield (key.encode() if isinstance(key, str) else None), value


@dataclass
class Delivery:
    """What a publish call did."""

    sent: int = 0
    failed: int = 0
    first_error: str | None = None


def publish(producer: Any, topic: str, records: Iterable[tuple[bytes | None, bytes]],
            flush_every: int = 10_000) -> Delivery:
    """Send ``(key, value)`` records with a kafka-python producer; count deliveries and failures."""
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
        futures.append(producer.send(topic, key=key, value=value))
        if len(futures) >= flush_every:
            settle()
    settle()
    return result
