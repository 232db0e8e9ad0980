"""Helpers shared by the benchmarks: the cached model bundle, catalog, event generator, topics, tables.

Nothing here asserts anything about time; it only builds inputs and prints.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from streams.schemas import CatalogItem, ClickEvent, dumps  # noqa: E402
from streams.settings import Settings, load_settings  # noqa: E402

CACHE = ROOT / "var" / "bench"
# share of each event type, close to the default simulated market's clickstream
# (view 55%, click 23%, add_to_cart 12%, purchase 7%, review 2%): ~90% are pricing triggers
TYPE_MIX: dict[str, float] = {"view": 0.55, "click": 0.23, "add_to_cart": 0.125, "purchase": 0.075,
                              "review": 0.02}


def ensure_bundle(cache: Path = CACHE, log=print) -> Path:
    """A really trained (``models.train --small``) and exported bundle, built once under ``cache``
    and built again when the cached one no longer fits the code's contract (features changed)."""
    from export.bundle import BundleError, load_bundle

    model_dir = cache / "models"
    if (model_dir / "CURRENT").exists():
        try:
            load_bundle(model_dir)
            return model_dir
        except BundleError as exc:
            log(f"cached bundle in {model_dir} does not fit this version ({exc}); rebuilding it")
            shutil.rmtree(cache / "train", ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    log(f"training a --small model and exporting it into {model_dir} (once; cached)")
    for cmd in (["-m", "models.train", "--small", "--out", str(cache / "train"), "--no-plots", "--quiet"],
                ["-m", "export", "--train-dir", str(cache / "train"), "--model-dir", str(model_dir),
                 "--no-progress"]):
        done = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return model_dir


def make_catalog(n_items: int, seed: int = 0) -> list[CatalogItem]:
    """The simulated market's catalog (real price levels, costs and bands) with ``n_items`` items."""
    from models.lab.simulator import Market, MarketConfig

    return Market(MarketConfig(n_users=50, n_items=n_items, seed=seed)).catalog()


class EventMaker:
    """Valid clickstream events: users uniform over ``n_users``, items uniform over the catalog,
    types drawn from :data:`TYPE_MIX`, shown price within +-10% of base, sessions of 30 min."""

    def __init__(self, catalog: Sequence[CatalogItem], n_users: int, seed: int = 1, prefix: str = "e") -> None:
        self.rng = np.random.default_rng(seed)
        self.items = [c.item_id for c in catalog]
        self.base = np.array([c.base_price for c in catalog])
        self.types = list(TYPE_MIX)
        self.p = np.array(list(TYPE_MIX.values()))
        self.p /= self.p.sum()
        self.n_users, self.prefix, self.n = n_users, prefix, 0

    def events(self, ts: np.ndarray) -> list[ClickEvent]:
        """One event per timestamp in ``ts`` (keep ``ts`` non-decreasing: in-order per user)."""
        n = len(ts)
        users = self.rng.integers(0, self.n_users, n)
        items = self.rng.integers(0, len(self.items), n)
        kinds = self.rng.choice(len(self.types), n, p=self.p)
        ratio = self.rng.uniform(0.9, 1.1, n)
        rating = self.rng.integers(1, 6, n)
        out = []
        for k in range(n):
            typ = self.types[kinds[k]]
            out.append(ClickEvent(f"{self.prefix}{self.n + k}", float(ts[k]), f"u{users[k]:06d}",
                                  f"s{users[k]}-{int(ts[k] // 1800)}", typ, self.items[items[k]],
                                  round(float(self.base[items[k]] * ratio[k]), 2), 1,
                                  float(rating[k]) if typ == "review" else None))
        self.n += n
        return out


def records(evs: Iterable[ClickEvent]) -> list[tuple[bytes, bytes]]:
    """(key, value) wire records, keyed by user id as the worker requires."""
    return [(e.user_id.encode(), dumps(e)) for e in evs]


def bench_env(tag: str, model_dir: Path, data_dir: Path, **overrides: object) -> dict[str, str]:
    """PRICING_* variables of a benchmark deployment: unique app id and topics under ``tag``."""
    env = {
        "KAFKA_BOOTSTRAP": os.environ.get("PRICING_KAFKA_BOOTSTRAP", "127.0.0.1:19092"),
        "APP_ID": f"bench-{tag}", "TOPIC_CLICKSTREAM": f"bench-{tag}-clicks",
        "TOPIC_CATALOG": f"bench-{tag}-catalog", "TOPIC_PRICES": f"bench-{tag}-prices",
        "TOPIC_DEAD_LETTER": f"bench-{tag}-dlq", "PARTITIONS": "4", "MODEL_DIR": str(model_dir),
        "DATA_DIR": str(data_dir), "USER_HASH_KEY": "bench-secret",
    }
    env |= {k.upper(): str(v) for k, v in overrides.items()}
    return {f"PRICING_{k}": v for k, v in env.items()}


def settings_from(env: dict[str, str]) -> Settings:
    return load_settings(env)


def create_topics(s: Settings, extra: Sequence[str] = ()) -> None:
    """The deployment's topics; prices (and ``extra``) stamped with LogAppendTime (the broker's
    clock when the record was appended: "the price is in Kafka")."""
    from streams.topics import TopicSpec, ensure_topics, topic_specs

    specs = []
    for sp in topic_specs(s):
        cfg = dict(sp.configs)
        if sp.name == s.topic_prices:
            cfg["message.timestamp.type"] = "LogAppendTime"
        specs.append(TopicSpec(sp.name, sp.partitions, cfg))
    specs += [TopicSpec(name, s.partitions, {"message.timestamp.type": "LogAppendTime"}) for name in extra]
    ensure_topics(s, specs)


def delete_topics(bootstrap: str, containing: str) -> int:
    """Delete every topic whose name contains ``containing`` (the run's own and Faust's internal ones)."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-cleanup", request_timeout_ms=30_000)
    try:
        names = [t for t in admin.list_topics() if containing in t]
        if names:
            admin.delete_topics(names, timeout_ms=30_000)
        return len(names)
    finally:
        admin.close()


def percentile(values: Sequence[float], q: float) -> float:
    if not len(values):
        return math.nan
    return float(np.percentile(np.asarray(values, np.float64), q))


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_str() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], title: str = "") -> str:
    """A plain aligned text table (floats with 4 significant figures)."""
    def cell(v: object) -> str:
        if isinstance(v, float):
            if math.isnan(v):
                return "-"
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
        return str(v)

    body = [[cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    out = ([title] if title else []) + [line, "-" * len(line)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(out)


def now() -> float:
    return time.time()
