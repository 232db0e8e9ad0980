"""Cost of the worker's metrics per record: ``WorkerMetrics.on_batch`` and the pipeline's reason count.

Both run once per batch (never per event); this prints their cost per batch and per record at the
default batch size, beside the cost of ``Pipeline.process`` per event that ``bench_pipeline.py
--skip-kafka`` reports (hundreds of us), so the ratio is what to read. Nothing asserted.

    .venv/bin/python bench/bench_metrics.py [--batch 64] [--repeat 20000]
"""

from __future__ import annotations

import argparse
import os
import time
import timeit
from collections import Counter

import numpy as np
from prometheus_client import generate_latest

from streams.metrics import WorkerMetrics
from streams.pipeline import BatchOutput, Pipeline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64, help="records per batch (the default PRICING_BATCH_SIZE)")
    p.add_argument("--repeat", type=int, default=20_000)
    args = p.parse_args()
    n, b = args.repeat, args.batch
    print(f"machine: {os.cpu_count()} cores, loadavg {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    m = WorkerMetrics()
    # a batch's counts as the pipeline makes them: 5 event types, 2 arms, 3 reasons (top_k=2: 3 prices a trigger)
    counts = Counter({"event.view": b // 2, "event.click": b // 4, "event.add_to_cart": b // 8, "event.purchase": 4,
                      "event.review": 2, "price.control": b, "price.treatment": b, "reason.CONTROL": b,
                      "reason.OPTIMAL": b // 2, "reason.CLIP_MAX_DEVIATION": b // 2})
    ts = [time.time() - 0.05] * b
    rows: list[tuple[str, float]] = []
    t = min(timeit.repeat(lambda: m.on_batch(counts, records=b, seconds=0.01, record_ts=ts, done_at=time.time()),
                          number=n, repeat=3)) / n
    rows.append(("WorkerMetrics.on_batch", t))
    flags = np.random.default_rng(0).choice([1, 9, 17, 33], 3 * b)
    treated = np.random.default_rng(1).random(3 * b) < 0.5
    out = BatchOutput()
    t = min(timeit.repeat(lambda: Pipeline._count_reasons(treated, flags, out), number=n, repeat=3)) / n
    rows.append(("Pipeline._count_reasons", t))
    print(f"{'per batch of ' + str(b):>40} {'us/batch':>10} {'us/record':>10}")
    for name, sec in rows:
        print(f"{name:>40} {sec * 1e6:>10.1f} {sec * 1e6 / b:>10.2f}")
    t = min(timeit.repeat(lambda: generate_latest(m.registry), number=100, repeat=3)) / 100
    print(f"{'a scrape of /metrics (HTTP thread)':>40} {t * 1e3:>10.2f} ms")


if __name__ == "__main__":
    main()
