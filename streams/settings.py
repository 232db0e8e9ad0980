"""One settings object for every process: environment variables prefixed ``PRICING_``.

Built once (``load_settings()``) and handed to whatever needs it; no module reads the
environment on its own. Unknown ``PRICING_*`` variables are refused, so a typo such as
``PRICING_KAFKA_BOOTSTRAPS`` fails loudly instead of silently using the default; the variables
Kubernetes injects for a Service named ``pricing`` (``PRICING_SERVICE_HOST``, ``PRICING_PORT_80_TCP``,
...) are let through (:func:`is_kubernetes_service_variable`). List-valued settings take either a
comma separated list (``view,click``) or a JSON array (``["view","click"]``). The full table with
formats is ``docs/settings.md``.

>>> s = Settings(kafka_bootstrap="127.0.0.1:19092")
>>> s.topic_clickstream, s.max_deviation
('clickstream', 0.2)
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "PRICING_"
PLACEHOLDER_HASH_KEY = "change-me-in-production"  # the default of PRICING_USER_HASH_KEY: public, so not a secret


class SettingsError(ValueError):
    """The environment does not describe a valid configuration."""


class Settings(BaseSettings):
    """Every knob of the pipeline, validated; secrets are ``SecretStr``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the values given: :func:`load_settings` is the one reader of the environment.

        pydantic-settings would otherwise read ``os.environ`` as well, even when ``load_settings``
        is handed another mapping, and JSON-decode list fields (so ``view,click`` failed).
        """
        return (init_settings,)

    # --- broker and security
    kafka_bootstrap: str = Field("127.0.0.1:19092", description="Kafka bootstrap servers, comma separated")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = Field(None, description="PEM CA bundle that signed the brokers' certificates")
    kafka_ssl_certfile: Path | None = Field(None, description="PEM client certificate (mTLS); needs the key file")
    kafka_ssl_keyfile: Path | None = Field(None, description="PEM private key of the client certificate")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="password of an encrypted key file")
    kafka_ssl_check_hostname: bool = Field(True, description="check the broker certificate names its host")

    # --- topics
    topic_clickstream: str = "clickstream"
    topic_catalog: str = "catalog"
    topic_prices: str = "prices"
    topic_dead_letter: str = "clickstream-dlq"
    partitions: int = Field(4, ge=1, le=1024, description="partitions of clickstream and prices")
    replication_factor: int = Field(1, ge=1, le=16)
    min_insync_replicas: int = Field(1, ge=1, le=16, description="min.insync.replicas of the topics we create")
    dead_letter_retention_ms: int = Field(30 * 24 * 3600 * 1000, ge=3600 * 1000)

    # --- worker
    app_id: str = "pricing"
    store: str = Field("rocksdb://", description="Faust table store: rocksdb:// or memory://")
    data_dir: Path = Path("var/worker")
    model_dir: Path = Field(Path("var/models"), description="directory of model bundles; newest wins")
    model_reload_s: float = Field(10.0, gt=0, description="how often to look for a newer bundle")
    batch_size: int = Field(64, ge=1, le=10_000)
    batch_within_s: float = Field(0.01, gt=0, le=5, description="longest wait to fill a scoring batch")
    onnx_threads: int = Field(1, ge=1, le=64)
    producer_linger_ms: int = Field(5, ge=0, le=1000,
                                    description="how long the producer waits to fill a batch of records (1 before "
                                                "issue 15: 5 cost a third less worker CPU per event, bench/README.md)")
    producer_compression: Literal["none", "gzip", "lz4", "zstd", "snappy"] = Field(
        "none", description="compression of produced batches (lz4/zstd/snappy need the cramjam package)")
    fetch_max_wait_ms: int = Field(20, ge=1, le=5000,
                                   description="longest a consumer fetch waits at the broker for new records")
    web_port: int | None = Field(None, ge=1, le=65535, description="Faust's web/stats server; off when unset")
    session_timeout_s: float = Field(30.0, ge=6, le=300,
                                     description="a dead worker's partitions move after this long")
    triggers: tuple[str, ...] = ("view", "click", "add_to_cart")
    top_k: int = Field(3, ge=0, le=50, description="recommended items priced besides the event's item")
    shortlist: int = Field(48, ge=0, le=100_000,
                           description="items per trigger the recommend model ranks, picked from the whole "
                                       "catalog by the bundle's first stage; 0 = rank the whole catalog")
    resend_unchanged_s: float = Field(
        3600.0, ge=0, description="a recommended item's price equal to the one sent to this user for that item "
                                  "less than this long ago (event time) is not sent again (consumers keep the newest "
                                  "price per user and item); the viewed item's price is always sent; 0 = send all")
    max_event_bytes: int = Field(16_384, ge=256)
    max_future_skew_s: float = Field(300.0, ge=0, description="reject events this far ahead of wall time")
    unknown_fields: Literal["reject", "ignore"] = Field(
        "ignore", description="clickstream and catalog records with fields this version does not know")
    max_price_ratio: float = Field(20.0, gt=1, description="a shown price above base_price times this is BAD_PRICE")
    shutdown_timeout_s: float = Field(20.0, gt=0, le=3600,
                                      description="SIGTERM to exit, at most; then the worker force-exits")

    # --- operations (docs/operations.md)
    metrics_port: int = Field(9400, ge=0, le=65535, description="worker's /metrics, /healthz, /ready; 0 disables")
    metrics_host: str = Field("0.0.0.0", description="address the metrics endpoints listen on")
    metrics_stall_s: float = Field(10.0, gt=0, description="/healthz fails once the event loop is silent this long")
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per log line")

    # --- features
    feature_windows_s: tuple[float, ...] = (3600.0, 86400.0, 604800.0)
    max_lateness_s: float = Field(86400.0, ge=0, description="older events are dead-lettered as late")

    # --- guardrails
    max_deviation: float = Field(0.2, ge=0, le=1, description="largest |price/base - 1|")
    margin_floor: float = Field(0.05, ge=0, le=10, description="price >= unit_cost * (1 + margin_floor)")
    max_step: float = Field(0.1, ge=0, le=1, description="largest relative move of one user's price per item")
    max_step_window_s: float = Field(3600.0, ge=0)
    cap_at_uniform: bool = Field(False, description="a treatment price is never above max(base, the item's uniform "
                                                    "price) (reason CLIP_UNIFORM_CAP)")
    uncertainty_scale: float = Field(
        0.0, ge=0, le=100, description="the uncertainty guard: a treatment price is shrunk in log space toward the "
                                       "item's uniform price with weight signal / (signal + scale * noise) from the "
                                       "bundle's price model (an ensemble exported with its spread); 0 = off, 1 = "
                                       "the empirical-Bayes weight as estimated")

    # --- experiment and privacy
    treatment_share: float = Field(0.5, ge=0, le=1)
    # 0 by default: a running experiment keeps its two-arm split (same salt, same users per arm) until
    # the uniform arm is asked for; treatment_share + uniform_share <= 1
    uniform_share: float = Field(0.0, ge=0, le=1, description="share of users shown the uniform arm's one "
                                                              "learnt price per item")
    experiment_salt: str = "exp-1"
    exploration_width: float = Field(0.0, ge=0, le=0.5,
                                     description="treatment prices drawn log-uniformly within +-this log width "
                                                 "of the decision (0.05 ~ +-5 %), inside the guardrails; "
                                                 "0 = the decision itself")
    user_hash_key: SecretStr = SecretStr(PLACEHOLDER_HASH_KEY)

    @field_validator("triggers", "feature_windows_s", mode="before")
    @classmethod
    def _split_list(cls, v: object) -> object:
        # the element types are checked by pydantic afterwards, with its own messages
        return split_list(v) if isinstance(v, str) else v

    @field_validator("triggers")
    @classmethod
    def _known_triggers(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        allowed = {"view", "click", "add_to_cart", "purchase", "review"}
        if bad := set(v) - allowed:
            raise ValueError(f"unknown trigger event types {sorted(bad)}; allowed: {sorted(allowed)}")
        return v

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(f"PRICING_MIN_INSYNC_REPLICAS={self.min_insync_replicas} is above "
                             f"PRICING_REPLICATION_FACTOR={self.replication_factor}: no write could succeed")
        if self.treatment_share + self.uniform_share > 1.0 + 1e-9:
            raise ValueError(f"PRICING_TREATMENT_SHARE={self.treatment_share:g} + PRICING_UNIFORM_SHARE="
                             f"{self.uniform_share:g} is above 1: the control arm would have a negative share")
        self._check_security()
        if self.producer_compression not in ("none", "gzip") and importlib.util.find_spec("cramjam") is None:
            raise ValueError(f"PRICING_PRODUCER_COMPRESSION={self.producer_compression} needs the cramjam package "
                             "(aiokafka's codecs): pip install cramjam, or use gzip or none")
        return self

    def _check_security(self) -> None:
        """Refuse security settings that could only fail at connect time, naming the setting."""
        proto = self.kafka_security_protocol
        if proto.startswith("SASL"):
            for name in ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password"):
                if not getattr(self, name):
                    raise ValueError(f"PRICING_KAFKA_SECURITY_PROTOCOL={proto} needs {ENV_PREFIX}{name.upper()}")
        ssl_names = ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "kafka_ssl_key_password")
        if not proto.endswith("SSL"):
            # a CA file with PLAINTEXT would silently connect unencrypted
            if set_ := [ENV_PREFIX + n.upper() for n in ssl_names if getattr(self, n) is not None]:
                raise ValueError(f"{', '.join(set_)} set but PRICING_KAFKA_SECURITY_PROTOCOL={proto} "
                                 f"does not use TLS (use SSL or SASL_SSL)")
            return
        for name in ssl_names[:3]:
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{ENV_PREFIX}{name.upper()}={path}: no such file")
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ValueError("PRICING_KAFKA_SSL_CERTFILE and PRICING_KAFKA_SSL_KEYFILE go together "
                             "(client certificate and its private key)")
        if self.kafka_ssl_key_password is not None and self.kafka_ssl_keyfile is None:
            raise ValueError("PRICING_KAFKA_SSL_KEY_PASSWORD set without PRICING_KAFKA_SSL_KEYFILE")

    def masked(self) -> dict[str, object]:
        """The effective settings as plain values, secrets shown as ``**********``."""
        out: dict[str, object] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "**********"
            elif isinstance(value, Path):
                value = str(value)
            out[name] = value
        return out


def split_list(text: str) -> list[str]:
    """A list-valued setting's string: a JSON array, or comma separated (the documented form).

    >>> split_list("view, click"), split_list('["view","click"]'), split_list("60,3600")
    (['view', 'click'], ['view', 'click'], ['60', '3600'])
    """
    stripped = text.strip()
    if stripped.startswith("["):
        import json

        try:
            items = json.loads(stripped)
        except ValueError as exc:
            raise ValueError(f"looks like a JSON array but is not valid JSON ({exc})") from None
        if not isinstance(items, list):
            raise ValueError("expected a JSON array")
        return [i.strip() if isinstance(i, str) else i for i in items]
    return [s.strip() for s in stripped.split(",") if s.strip()]


# The variables Kubernetes puts in every pod of a namespace with a Service named "pricing" (docker
# link style service discovery): PRICING_SERVICE_HOST, PRICING_SERVICE_PORT, PRICING_SERVICE_PORT_<NAME>
# per named port, PRICING_PORT, and PRICING_PORT_<n>_<PROTO>[_PROTO|_PORT|_ADDR] per port.
_KUBERNETES_SERVICE = re.compile(
    r"PRICING_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT|PORT_[0-9]+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)")


def is_kubernetes_service_variable(name: str) -> bool:
    """Whether ``name`` is one Kubernetes injects for a Service named ``pricing`` (not a typo).

    >>> [is_kubernetes_service_variable(n) for n in ("PRICING_SERVICE_HOST", "PRICING_PORT_8080_TCP_ADDR",
    ...                                            "PRICING_PORT_TCP", "PRICING_SERVICE_HOSTS")]
    [True, True, False, False]
    """
    return _KUBERNETES_SERVICE.fullmatch(name) is not None


def _explain(exc: ValidationError, values: Mapping[str, object]) -> str:
    """One line per error, naming the environment variable and the value given."""
    lines = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else ""
        name = ENV_PREFIX + field.upper() if field in Settings.model_fields else "settings"
        given = values.get(field)
        shown = "" if given is None or isinstance(given, SecretStr) or "key" in field or "password" in field \
            else f" (got {str(given)[:80]!r})"
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{name}: {msg}{shown}")
    return "; ".join(lines)


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build the settings from ``environ`` (default ``os.environ``) only, refusing unknown keys."""
    env = os.environ if environ is None else environ
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    unknown = sorted(k for k in env if k.upper().startswith(ENV_PREFIX) and k.upper() not in known
                     and not is_kubernetes_service_variable(k.upper()))
    if unknown:
        raise SettingsError(f"unknown settings {unknown}; known: {sorted(known)}")
    values: dict[str, object] = {k[len(ENV_PREFIX):].lower(): v for k, v in env.items() if k.upper() in known}
    values.update(overrides)
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(_explain(exc, values)) from exc


def cli_settings(**overrides: object) -> Settings:
    """``load_settings()`` for console scripts: on a bad configuration print why and exit 2."""
    try:
        return load_settings(None, **overrides)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> int:
    """``pricing-settings``: print the effective settings, secrets masked."""
    import argparse

    import orjson

    from .version import add_version

    parser = argparse.ArgumentParser(prog="pricing-settings", description=main.__doc__)
    add_version(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    values = cli_settings().masked()
    if args.json:
        print(orjson.dumps(values, option=orjson.OPT_INDENT_2).decode())
    else:
        width = max(len(k) for k in values)
        for k, v in values.items():
            print(f"{ENV_PREFIX}{k.upper():<{width}}  {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
