"""``pricing-replay``: push a recorded clickstream (our JSONL, or the public CSV layout) to Kafka.

Records are keyed by ``user_id``, paced by event time (``--speed``) or a fixed ``--rate``, and
optionally shifted to now. Bad rows are still sent, so the worker dead-letters them with its
reason; ``remove_from_cart`` rows are skipped and counted (our schema has no such event).

``--shift-to-now`` keeps the gaps between events and picks which event lands at now
(``--shift-anchor``). By default (``auto``) that is the *last* event, so the whole file is in the
past and the worker accepts it however fast it is sent, except with ``--speed`` at most 1, where
the *first* event lands at now and each later one is sent no earlier than its shifted time (a live
stream). ``--shift-anchor first`` with any faster sending is refused: events would carry
timestamps ahead of wall time and the worker would dead-letter them (``FUTURE_TIMESTAMP``).

    pricing-replay data.csv --speed 1 --shift-to-now --emit-catalog
    pricing-replay events.jsonl.gz --rate 500 --skip 120000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from streams.kafka_config import cli_check_connection, kafka_python_config
from streams.pipeline import HISTORY_HEADER
from streams.schemas import dumps
from streams.settings import Settings, cli_settings
from streams.version import add_version

from .source import Record, count_lines, csv_records, derive_catalog, jsonl_records, publish

MAX_FUTURE_SKEW_S = 300.0


class Schedule:
    """When each record is due, in wall seconds after the start (pure: no clock inside).

    >>> s = Schedule(speed=60)
    >>> [s.due(t) for t in (1000.0, 1060.0, None, 1030.0, 1180.0)]  # out-of-order never goes back
    [0.0, 1.0, 1.0, 1.0, 3.0]
    >>> r = Schedule(rate=4)
    >>> [r.due(t) for t in (5.0, 1.0, None)]
    [0.0, 0.25, 0.5]
    """

    def __init__(self, speed: float = 0.0, rate: float | None = None) -> None:
        self.speed, self.rate = speed, rate
        self.first: float | None = None
        self.n = 0
        self.last = 0.0

    def due(self, ts: float | None) -> float:
        """Offset of the next record: i / rate, else (ts - first ts) / speed, never decreasing."""
        if self.rate:
            self.last = self.n / self.rate
        elif self.speed > 0 and ts is not None:
            self.first = ts if self.first is None else self.first
            self.last = max(self.last, (ts - self.first) / self.speed)
        self.n += 1
        return self.last


@dataclass
class Summary:
    """What a replay did."""

    read: int = 0
    sent: int = 0
    failed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    bad: Counter[str] = field(default_factory=Counter)  # sent; the worker dead-letters them
    ahead_of_now: int = 0  # shifted ts past wall time + 300 s: the worker refuses those
    catalog_items: int = 0
    first_error: str | None = None
    elapsed_s: float = 0.0
    next_skip: int = 0

    def text(self) -> str:
        """One human-readable paragraph."""
        def by(c: Counter[str]) -> str:
            return f" ({', '.join(f'{k} {v}' for k, v in sorted(c.items()))})" if c else ""
        rate = self.read / self.elapsed_s if self.elapsed_s > 0 else 0.0
        lines = [f"replay: read {self.read}, sent {self.sent}, failed {self.failed}, "
                 f"skipped {sum(self.skipped.values())}{by(self.skipped)}, "
                 f"bad rows sent for dead-lettering {sum(self.bad.values())}{by(self.bad)}",
                 f"replay: {self.elapsed_s:.1f} s, {rate:.0f} records/s; resume with --skip {self.next_skip}"]
        if self.catalog_items:
            lines.insert(0, f"replay: catalog items published {self.catalog_items}")
        if self.ahead_of_now:
            lines.append(f"replay: warning: {self.ahead_of_now} shifted events more than {MAX_FUTURE_SKEW_S:.0f} s "
                         "ahead of wall time (FUTURE_TIMESTAMP); use --speed 1 or --shift-anchor last")
        if self.first_error:
            lines.append(f"replay: first delivery error: {self.first_error}")
        return "\n".join(lines)


def is_csv(path: str | Path) -> bool:
    """CSV input is recognised by its suffix (``.csv`` or ``.csv.gz``); anything else is JSONL."""
    return str(path).removesuffix(".gz").endswith(".csv")


def read_records(path: str | Path, skip: int = 0) -> Iterator[Record]:
    """The records of either input format, after the first ``skip``."""
    return csv_records(path, skip) if is_csv(path) else jsonl_records(path, skip)


def shifted(rec: Record, delta: float) -> Record:
    """``rec`` with its ``ts`` moved by ``delta`` seconds (raw and ts-less records are unchanged)."""
    if delta and rec.ts is not None and isinstance(rec.value, dict):
        rec.value = rec.value | {"ts": rec.ts + delta}
    return rec


def replay(records: Iterable[Record], send: Callable[[Iterable[tuple[bytes | None, bytes]]], Any],
           summary: Summary, schedule: Schedule, shift: str | None = None, last_ts: float | None = None,
           clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
           progress: Callable[[int], object] = lambda n: None) -> None:
    """Pace, shift and hand records to ``send`` (e.g. a bound :func:`publish`), counting in ``summary``.

    ``shift``: None keeps ts; ``first`` maps the first sent ts to now; ``last`` maps ``last_ts``
    to now. Gaps are preserved either way.
    """
    start = clock()

    def stream() -> Iterator[tuple[bytes | None, bytes]]:
        delta: float | None = None if shift else 0.0
        for rec in records:
            summary.read += 1
            progress(1)
            if rec.skip:
                summary.skipped[rec.skip] += 1
                continue
            if rec.invalid:
                summary.bad[rec.invalid] += 1
            wait = start + schedule.due(rec.ts) - clock()
            if wait > 0:
                sleep(wait)
            if delta is None and rec.ts is not None:  # the anchor: first ts, or the file's last
                delta = start - (last_ts if shift == "last" and last_ts is not None else rec.ts)
            rec = shifted(rec, delta or 0.0)
            if isinstance(rec.value, dict) and (ts := rec.value.get("ts")) is not None and rec.ts is not None \
                    and ts > clock() + MAX_FUTURE_SKEW_S:
                summary.ahead_of_now += 1
            yield rec.key, rec.payload()

    delivery = send(stream())
    summary.sent += delivery.sent
    summary.failed += delivery.failed
    summary.first_error = summary.first_error or delivery.first_error
    summary.elapsed_s = clock() - start


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; argparse exits 2 on bad arguments."""
    p = argparse.ArgumentParser(prog="pricing-replay", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_version(p)
    p.add_argument("path", type=Path, help="events: our JSONL (.jsonl[.gz]) or the public CSV layout (.csv[.gz])")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=0.0, help="event-time seconds per wall second; 0 = no pacing")
    pace.add_argument("--rate", type=float, help="fixed events per second instead of event-time pacing")
    p.add_argument("--shift-to-now", action="store_true", help="shift timestamps to now, keeping the gaps")
    p.add_argument("--shift-anchor", choices=("auto", "first", "last"), default="auto",
                   help="which event lands at now with --shift-to-now; auto: first with 0 < --speed <= 1, "
                        "else last (every ts in the past)")
    p.add_argument("--skip", type=int, default=0, help="skip the first N records (resume)")
    p.add_argument("--limit", type=int, help="send at most N records after the skipped ones")
    p.add_argument("--history", action="store_true",
                   help="mark every event as history (Kafka header pricing-history: 1): the worker folds it into "
                        "the user's state but does not price it, e.g. to warm a new deployment with past traffic")
    p.add_argument("--emit-catalog", action="store_true", help="CSV only: publish a catalog derived from the file")
    p.add_argument("--cost-ratio", type=float, default=0.6, help="catalog unit_cost = base_price * this")
    p.add_argument("--band", type=float, default=0.3, help="catalog min/max = base_price * (1 -/+ band)")
    p.add_argument("--bootstrap", help="override PRICING_KAFKA_BOOTSTRAP")
    p.add_argument("--topic", help="override PRICING_TOPIC_CLICKSTREAM")
    p.add_argument("--catalog-topic", help="override PRICING_TOPIC_CATALOG")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    args = p.parse_args(argv)
    if args.speed < 0 or (args.rate is not None and args.rate <= 0) or args.skip < 0 \
            or (args.limit is not None and args.limit < 0):
        p.error("--speed must be >= 0, --rate > 0, --skip and --limit >= 0")
    if not 0 <= args.band < 1 or args.cost_ratio < 0:
        p.error("--band must be in [0, 1) and --cost-ratio >= 0")
    if args.emit_catalog and not is_csv(args.path):
        p.error("--emit-catalog needs a CSV in the public layout")
    if not args.path.is_file():
        p.error(f"no such file: {args.path}")
    live = args.rate is None and 0 < args.speed <= 1  # no event is sent before its shifted time
    if args.shift_anchor == "auto":
        args.shift_anchor = "first" if live else "last"
    elif args.shift_to_now and args.shift_anchor == "first" and not live:
        p.error("--shift-anchor first puts later events ahead of wall time unless --speed is in (0, 1]; the "
                "worker would dead-letter them as FUTURE_TIMESTAMP. Use --shift-anchor last (the default "
                "without such pacing) or --speed 1")
    return args


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {"kafka_bootstrap": args.bootstrap, "topic_clickstream": args.topic,
                 "topic_catalog": args.catalog_topic}
    return cli_settings(**{k: v for k, v in overrides.items() if v})


def _prepare(args: argparse.Namespace) -> tuple[int, float | None, list[Any]]:
    """Passes over the file before sending: progress total, last ts (anchor last), catalog."""
    csv = is_csv(args.path)
    next(iter(read_records(args.path)), None)  # a CSV that is not the public layout fails here
    total = max(0, count_lines(args.path) - csv - args.skip)
    total = total if args.limit is None else min(total, args.limit)
    last_ts = None
    if args.shift_to_now and args.shift_anchor == "last":
        last_ts = max((r.ts for r in read_records(args.path, args.skip) if r.ts is not None), default=None)
    items = derive_catalog(args.path, args.cost_ratio, args.band) if args.emit_catalog else []
    return total, last_ts, items


def main(argv: list[str] | None = None) -> int:
    """``pricing-replay``: exit 0 when everything was delivered, 1 on delivery failures, 2 on bad input,
    3 when Kafka is unreachable or refuses the TLS/SASL settings."""
    import logging
    from itertools import islice

    from kafka import KafkaProducer
    from kafka.errors import KafkaError
    from tqdm import tqdm

    args = parse_args(argv)
    s = _settings(args)
    logging.getLogger("kafka").setLevel(logging.ERROR)  # its INFO lines are connection chatter
    try:
        total, last_ts, items = _prepare(args)
    except (OSError, ValueError, EOFError) as exc:
        print(f"error: cannot read {args.path}: {exc}", file=sys.stderr)
        return 2
    cli_check_connection(s, "pricing-replay")
    try:
        producer = KafkaProducer(client_id="pricing-replay", linger_ms=5, max_block_ms=30_000,
                                 **kafka_python_config(s))
    except KafkaError as exc:
        print(f"error: cannot reach Kafka at {s.kafka_bootstrap}: {exc!r}", file=sys.stderr)
        return 1
    summary = Summary()
    try:
        if items:  # the catalog first, so the worker knows the items when their events arrive
            done = publish(producer, s.topic_catalog, ((i.item_id.encode(), dumps(i)) for i in items))
            summary.catalog_items, summary.failed = done.sent, done.failed
            summary.first_error = done.first_error
            if done.failed:  # no point sending events for items the worker will not know
                print(summary.text(), file=sys.stderr)
                return 1
        records = islice(read_records(args.path, args.skip), args.limit)
        with tqdm(total=total, unit="ev", disable=True if args.no_progress else None, file=sys.stderr,
                  smoothing=0.1) as bar:
            mark = [(HISTORY_HEADER, b"1")] if args.history else None
            replay(records, lambda recs: publish(producer, s.topic_clickstream, recs, headers=mark), summary,
                   Schedule(args.speed, args.rate), args.shift_anchor if args.shift_to_now else None,
                   last_ts, progress=bar.update)
    except KeyboardInterrupt:
        producer.flush(timeout=10)
        print(f"\nreplay: interrupted after reading {summary.read} records; resume with --skip "
              f"{args.skip + summary.read}", file=sys.stderr)
        return 130
    finally:
        producer.close(timeout=10)
    summary.next_skip = args.skip + summary.read
    if args.json:
        print(orjson.dumps(summary).decode())
    else:
        print(summary.text(), file=sys.stderr)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
