"""Memory per user of the feature state: encoded record bytes, Python objects, and a rocksdb store.

    .venv/bin/python bench/bench_memory.py
    .venv/bin/python bench/bench_memory.py --users 100000 --history-users 100 --events 1000

1. **Encoded record** (``streams.state.encode_record``: what the Faust table stores in rocksdb and
   its changelog topic, one per user) after 1, 10, 100 and 1,000 events per user. The events go
   through the real ``Pipeline.process`` (deterministic scorer, top_k from the settings), so the
   records remember the prices that pricing decided (bounded to ``MAX_REMEMBERED_PRICES``).
2. **Python objects**: tracemalloc of ``--users`` decoded ``UserRecord`` objects in a dict keyed by
   the user key (the worker only holds one batch's users at a time; this is the cost per user if
   all were held in memory).
3. **rocksdb**: the same ``--users`` records written to a rocksdict store (as Faust's rocksdb
   store does), flushed and compacted: bytes on disk per user.

Asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import EventMaker, make_catalog, records, table  # noqa: E402

from streams.catalog import Catalog  # noqa: E402
from streams.features import FeatureSpec, encode_state  # noqa: E402
from streams.pipeline import Pipeline, RawRecord  # noqa: E402
from streams.scoring import DeterministicScorer  # noqa: E402
from streams.settings import load_settings  # noqa: E402
from streams.state import MAX_REMEMBERED_PRICES, decode_record, encode_record, new_record  # noqa: E402

CHECKPOINTS = (1, 10, 100, 1000)


def histories(n_users: int, n_events: int, n_items: int, top_k: int) -> dict[int, list[tuple[str, bytes]]]:
    """Records of ``n_users`` users at each checkpoint of their event count, via Pipeline.process."""
    items = make_catalog(n_items)
    catalog = Catalog()
    for c in items:
        catalog.put(c)
    s = load_settings({}, user_hash_key="bench-secret", top_k=top_k)
    scorer = DeterministicScorer()
    p = Pipeline(s, catalog, lambda: scorer, time.time)
    maker = EventMaker(items, n_users, seed=3, prefix="m")
    t_end = time.time() - 60
    table_: dict[str, bytes] = {}
    snaps: dict[int, list[tuple[str, bytes]]] = {}
    offset, done = 0, 0
    users = [f"u{u:06d}" for u in range(n_users)]
    for cp in (c for c in CHECKPOINTS if c <= n_events):
        # each user gets (cp - done) more events; event times spread over the 6 days before now
        k = cp - done
        ts = np.linspace(t_end - 6 * 86400 * (1 - done / n_events), t_end - 6 * 86400 * (1 - cp / n_events),
                         k * n_users)
        evs = maker.events(ts)
        # round-robin users so that every user gets exactly k more events
        evs = [dataclasses.replace(e, user_id=users[j % n_users], session_id=f"s{j % n_users}-{int(e.ts // 1800)}")
               for j, e in enumerate(evs)]
        raws = [RawRecord(key, val, "mem", 0, offset + i) for i, (key, val) in enumerate(records(evs))]
        offset += len(raws)
        for i in range(0, len(raws), 256):
            out = p.process(raws[i:i + 256], table_.get)
            for key, (blob, _) in out.records.items():
                table_[key] = blob
        done = cp
        snaps[cp] = sorted(table_.items())
    return snaps


def python_bytes(blobs: list[bytes], n_users: int) -> float:
    """tracemalloc bytes per user of ``n_users`` decoded records in a dict keyed by 32-hex user keys."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    held = {f"{u:032x}": decode_record(blobs[u % len(blobs)]) for u in range(n_users)}
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del held
    return (after - before) / n_users


def rocksdb_bytes(blobs: list[bytes], n_users: int) -> float:
    """Bytes on disk per user of ``n_users`` records in a rocksdict store, flushed and compacted."""
    from rocksdict import Rdict

    d = Path(tempfile.mkdtemp(prefix="bench-mem-"))
    try:
        db = Rdict(str(d / "db"))
        for u in range(n_users):
            db[f"{u:032x}".encode()] = blobs[u % len(blobs)]
        db.flush()
        db.compact_range(None, None)
        db.close()
        return sum(f.stat().st_size for f in (d / "db").glob("*.sst")) / n_users
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000, help="records held in memory / written to rocksdb")
    parser.add_argument("--history-users", type=int, default=100, help="users whose history is simulated")
    parser.add_argument("--events", type=int, default=1000, help="events per simulated user (checkpoints "
                        f"{', '.join(map(str, CHECKPOINTS))} up to this)")
    parser.add_argument("--items", type=int, default=400, help="catalog items")
    parser.add_argument("--top-k", type=int, default=3, help="PRICING_TOP_K (prices remembered per trigger)")
    parser.add_argument("--skip-rocksdb", action="store_true")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    snaps = histories(args.history_users, args.events, args.items, args.top_k)
    print(f"simulated {args.history_users} users x {args.events} events through Pipeline.process "
          f"(deterministic scorer, top_k={args.top_k}, {args.items} items) in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    rows = []
    empty = encode_record(new_record(FeatureSpec()))
    for label, blobs in [("empty record", [empty])] + [
            (f"after {cp} events", [b for _, b in snaps[cp]]) for cp in snaps]:
        decoded = [decode_record(b) for b in blobs]
        sizes = np.array([len(b) for b in blobs])
        feat = np.array([len(encode_state(r.features)) for r in decoded])
        n_prices = np.array([len(r.prices) for r in decoded])
        py = python_bytes(blobs, args.users)
        disk = float("nan") if args.skip_rocksdb else rocksdb_bytes(blobs, args.users)
        rows.append([label, float(n_prices.mean()), float(sizes.mean()), float(sizes.max()), float(feat.mean()),
                     float((sizes - feat).mean()), py, disk])
    print(table(["state", "prices kept", "encoded B mean", "encoded B max", "features B", "offset+prices B",
                 f"python B/user ({args.users:,} in a dict)", "rocksdb B/user"], rows,
                f"Memory per user (key: 32 hex chars = 32 B more per record; prices kept <= {MAX_REMEMBERED_PRICES})"))
    print("\nencoded = streams.state.encode_record (table value and changelog record); python = tracemalloc of "
          "decoded UserRecords incl. the dict and its keys; rocksdb = .sst bytes after flush + compaction "
          "(snappy-compressed by default) incl. keys")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
