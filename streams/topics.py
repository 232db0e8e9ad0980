"""Create the project's topics, idempotently, with kafka-python's admin client.

``pricing-topics`` (or ``python -m streams.topics``) creates what is missing, leaves what
exists alone (and warns when an existing topic has fewer partitions than configured), then
lists the topics. It also creates the worker's table changelog (``<app id>-users-changelog``), the
topic Faust would otherwise create itself when the first worker starts: created that late, the
consumer group's metadata could still show it without partitions when the worker joined, and the
worker could not write its table (Faust's ``PartitionsMismatch``, seen on a fresh 3-broker cluster).
Created here, it also gets ``min.insync.replicas`` like the other topics.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass

from .kafka_config import cli_check_connection, kafka_python_config
from .settings import Settings, cli_settings
from .version import add_version

log = logging.getLogger("pricing.topics")


@dataclass(frozen=True)
class TopicSpec:
    """One topic: name, partitions and its configs."""

    name: str
    partitions: int
    configs: dict[str, str]


USERS_TABLE = "users"  # the worker's Faust table of per-user state


def changelog_topic(s: Settings, table: str = USERS_TABLE) -> str:
    """The name Faust gives a table's changelog topic: ``<app id>-<table>-changelog``.

    >>> from streams.settings import load_settings
    >>> changelog_topic(load_settings({}, app_id="shop"))
    'shop-users-changelog'
    """
    return f"{s.app_id}-{table}-changelog"


def topic_specs(s: Settings) -> list[TopicSpec]:
    """The topics this project needs, from the settings."""
    week = str(7 * 24 * 3600 * 1000)
    # with replication factor 3 and min ISR 2, an acks=all write survives one broker down
    isr = {"min.insync.replicas": str(s.min_insync_replicas)}
    return [
        TopicSpec(s.topic_clickstream, s.partitions, {"cleanup.policy": "delete", "retention.ms": week, **isr}),
        # catalog is keyed by item: compaction keeps the latest terms of every item forever
        TopicSpec(s.topic_catalog, 1, {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", **isr}),
        TopicSpec(s.topic_prices, s.partitions, {"cleanup.policy": "delete", "retention.ms": week, **isr}),
        TopicSpec(s.topic_dead_letter, 1,
                  {"cleanup.policy": "delete", "retention.ms": str(s.dead_letter_retention_ms), **isr}),
        # the table's changelog, as Faust makes it (compacted, one partition per clickstream partition)
        TopicSpec(changelog_topic(s), s.partitions, {"cleanup.policy": "compact", **isr}),
    ]


# kept for callers of the old name: one builder for every client lives in streams/kafka_config.py
kafka_client_config = kafka_python_config


def ensure_topics(s: Settings, specs: list[TopicSpec] | None = None, *, settle_s: float = 30.0) -> dict[str, str]:
    """Create missing topics; returns ``{name: "created" | "exists"}``.

    A cluster that is still settling (a broker not yet in the metadata, a controller moving) answers
    with transient errors: they are retried, with a fresh admin client, for up to ``settle_s`` seconds.
    """
    from kafka.errors import KafkaError, UnknownBrokerIdError

    deadline = time.monotonic() + settle_s
    while True:
        try:
            return _ensure_topics(s, topic_specs(s) if specs is None else specs)
        except KafkaError as exc:
            # UnknownBrokerIdError is not marked retriable, but here it only means the metadata is behind
            transient = getattr(exc, "retriable", False) or isinstance(exc, UnknownBrokerIdError)
            if not transient or time.monotonic() > deadline:
                raise
            log.warning("setting up topics: %r while the cluster settles; retrying", exc)
            time.sleep(1.0)


def _ensure_topics(s: Settings, specs: list[TopicSpec]) -> dict[str, str]:
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(client_id="pricing-topics", request_timeout_ms=30_000, **kafka_python_config(s))
    try:
        existing = set(admin.list_topics())
        result: dict[str, str] = {}
        for spec in specs:
            if spec.name in existing:
                result[spec.name] = "exists"
                continue
            try:
                admin.create_topics([NewTopic(spec.name, spec.partitions, s.replication_factor,
                                              topic_configs=spec.configs)])
                result[spec.name] = "created"
            except TopicAlreadyExistsError:  # another process won the race: fine
                result[spec.name] = "exists"
        for meta in admin.describe_topics([n for n, how in result.items() if how == "exists"]):
            name = meta.get("name") or meta.get("topic")
            want = next(sp.partitions for sp in specs if sp.name == name)
            if len(meta["partitions"]) < want:
                log.warning("topic %s has %d partitions, settings ask for %d (not changed)",
                            name, len(meta["partitions"]), want)
        return result
    finally:
        admin.close()


def main(argv: list[str] | None = None) -> int:
    """``pricing-topics``: create the project's topics if missing, then list them."""
    parser = argparse.ArgumentParser(prog="pricing-topics", description=main.__doc__)
    add_version(parser)
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO lines are connection chatter
    s = cli_settings()
    cli_check_connection(s, "pricing-topics")
    try:
        result = ensure_topics(s)
    except Exception as exc:  # noqa: BLE001 - a CLI reports any broker failure plainly
        print(f"error: could not set up topics on {s.kafka_bootstrap}: {exc!r}", file=sys.stderr)
        return 1
    for spec in topic_specs(s):
        print(f"{spec.name:<24} {result[spec.name]:<8} partitions={spec.partitions} {spec.configs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
