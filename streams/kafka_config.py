"""Every Kafka client's connection config, built from the settings in one place.

Three client libraries talk to Kafka here: kafka-python (tools, topics), aiokafka (the catalog
follower, the live market) and Faust (the worker, on aiokafka). Each gets its bootstrap and
security options from this module, so PLAINTEXT, SSL (CA, optional client certificate for mTLS,
hostname check), SASL_PLAINTEXT and SASL_SSL (PLAIN, SCRAM-SHA-256/512) behave the same in all.

``check_connection(s)`` opens one connection the way the clients will and turns the usual
security failures (untrusted CA, wrong password, missing client certificate) into a
:class:`KafkaSecurityError` that names the setting to fix, within a bounded time: the clients
themselves retry such failures silently, forever or until a generic timeout.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
import time
from typing import Any

from .settings import Settings, SettingsError


class KafkaConnectError(RuntimeError):
    """The brokers could not be reached or refused us; the message says which setting to check."""


class KafkaSecurityError(KafkaConnectError):
    """TLS or SASL failed (untrusted CA, bad client certificate, wrong credentials)."""


def bootstrap_servers(s: Settings) -> list[str]:
    """``PRICING_KAFKA_BOOTSTRAP`` split into host:port strings."""
    return [h.strip() for h in s.kafka_bootstrap.split(",") if h.strip()]


def ssl_context(s: Settings) -> ssl.SSLContext | None:
    """The TLS context for SSL and SASL_SSL (None otherwise); file problems name the setting."""
    if not s.kafka_security_protocol.endswith("SSL"):
        return None
    try:
        ctx = ssl.create_default_context(cafile=str(s.kafka_ssl_cafile) if s.kafka_ssl_cafile else None)
    except (ssl.SSLError, OSError) as exc:
        raise SettingsError(f"PRICING_KAFKA_SSL_CAFILE={s.kafka_ssl_cafile}: not a PEM CA bundle ({exc})") from None
    ctx.check_hostname = s.kafka_ssl_check_hostname  # verify_mode stays CERT_REQUIRED either way
    if s.kafka_ssl_certfile is not None:
        password = s.kafka_ssl_key_password.get_secret_value() if s.kafka_ssl_key_password else None
        try:
            ctx.load_cert_chain(str(s.kafka_ssl_certfile), str(s.kafka_ssl_keyfile), password=password)
        except (ssl.SSLError, OSError) as exc:
            hint = ("wrong PRICING_KAFKA_SSL_KEY_PASSWORD, or " if password or "encrypt" in str(exc).lower()
                    else "")
            raise SettingsError(f"PRICING_KAFKA_SSL_CERTFILE={s.kafka_ssl_certfile} / PRICING_KAFKA_SSL_KEYFILE="
                                f"{s.kafka_ssl_keyfile}: cannot load ({hint}key does not match the "
                                f"certificate, or not PEM): {exc}") from None
    return ctx


def _sasl(s: Settings) -> dict[str, Any]:
    if not s.kafka_security_protocol.startswith("SASL"):
        return {}
    return {"sasl_mechanism": s.kafka_sasl_mechanism, "sasl_plain_username": s.kafka_sasl_username,
            "sasl_plain_password": s.kafka_sasl_password.get_secret_value() if s.kafka_sasl_password else None}


def kafka_python_config(s: Settings) -> dict[str, Any]:
    """Keyword arguments for kafka-python's KafkaProducer/KafkaConsumer/KafkaAdminClient."""
    cfg: dict[str, Any] = {"bootstrap_servers": bootstrap_servers(s),
                           "security_protocol": s.kafka_security_protocol, **_sasl(s)}
    if (ctx := ssl_context(s)) is not None:
        cfg["ssl_context"] = ctx
        cfg["ssl_check_hostname"] = s.kafka_ssl_check_hostname
    return cfg


def aiokafka_config(s: Settings) -> dict[str, Any]:
    """Keyword arguments for aiokafka's AIOKafkaProducer/AIOKafkaConsumer (an ``ssl.SSLContext``)."""
    cfg: dict[str, Any] = {"bootstrap_servers": ",".join(bootstrap_servers(s)),
                           "security_protocol": s.kafka_security_protocol, **_sasl(s)}
    if (ctx := ssl_context(s)) is not None:
        cfg["ssl_context"] = ctx
    return cfg


def faust_broker(s: Settings) -> list[str]:
    """Faust's ``broker`` argument."""
    return [f"kafka://{h}" for h in bootstrap_servers(s)]


def faust_credentials(s: Settings) -> Any:
    """Faust's ``broker_credentials``: SASL with the TLS context for SASL_SSL, SSL, or None."""
    import faust

    ctx = ssl_context(s)
    if s.kafka_security_protocol.startswith("SASL"):
        # with ssl_context Faust switches the protocol to SASL_SSL; without it, SASL_PLAINTEXT
        return faust.SASLCredentials(username=s.kafka_sasl_username, password=_sasl(s)["sasl_plain_password"],
                                     mechanism=s.kafka_sasl_mechanism, ssl_context=ctx)
    if ctx is not None:
        return faust.SSLCredentials(ctx)
    return None


def _explain(s: Settings, exc: BaseException, host: str) -> KafkaConnectError:
    """Map a client-side failure to an error that names the setting to check."""
    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    proto = s.kafka_security_protocol
    if isinstance(exc, ssl.SSLCertVerificationError) or "certificate verify failed" in low:
        what = ("the broker's certificate does not name this host (PRICING_KAFKA_SSL_CHECK_HOSTNAME=false "
                "to skip that check)" if "hostname" in low or "ip address mismatch" in low
                else f"the broker's certificate is not signed by a CA in PRICING_KAFKA_SSL_CAFILE="
                     f"{s.kafka_ssl_cafile or '(system CAs)'}")
        return KafkaSecurityError(f"TLS to {host} failed: {what} ({text})")
    if "authentication" in low or "sasl" in low or "scram" in low:
        return KafkaSecurityError(
            f"SASL {s.kafka_sasl_mechanism} login of PRICING_KAFKA_SASL_USERNAME={s.kafka_sasl_username!r} at "
            f"{host} was refused: check PRICING_KAFKA_SASL_PASSWORD and PRICING_KAFKA_SASL_MECHANISM ({text})")
    if isinstance(exc, ssl.SSLError) or "ssl" in low or "tls" in low:
        hint = ("the listener may require a client certificate (PRICING_KAFKA_SSL_CERTFILE/KEYFILE), "
                "or may not speak TLS (PRICING_KAFKA_SECURITY_PROTOCOL)")
        return KafkaSecurityError(f"TLS to {host} failed with PRICING_KAFKA_SECURITY_PROTOCOL={proto}: {hint} "
                                  f"({text})")
    return KafkaConnectError(f"no answer from PRICING_KAFKA_BOOTSTRAP={s.kafka_bootstrap} with "
                             f"PRICING_KAFKA_SECURITY_PROTOCOL={proto} ({text})")


def _tls_probe(s: Settings, host: str, timeout_s: float) -> None:
    """A bare TLS handshake: certificate errors surface here, typed, instead of as client retries."""
    import socket

    ctx = ssl_context(s)
    if ctx is None:
        return
    name, _, port = host.rpartition(":")
    with socket.create_connection((name, int(port)), timeout=timeout_s) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            # TLS 1.3 sends the server's verdict on our certificate after the handshake: read
            # once so a refused client certificate shows up here too (a timeout means accepted)
            tls.settimeout(0.5)
            try:
                tls.recv(1)
            except TimeoutError:
                pass


async def _sasl_probe(s: Settings, host: str, timeout_s: float) -> None:
    # one aiokafka connection does the TLS handshake and the SASL login and raises their error;
    # the clients' bootstrap would log it and retry until a generic "unable to bootstrap"
    from aiokafka.conn import create_conn

    name, _, port = host.rpartition(":")
    cfg = aiokafka_config(s)
    del cfg["bootstrap_servers"]
    conn = await asyncio.wait_for(create_conn(name, int(port), client_id="pricing-connect-check",
                                              request_timeout_ms=int(timeout_s * 1000), **cfg), timeout_s)
    conn.close()


def check_connection(s: Settings, timeout_s: float = 20.0) -> None:
    """Connect once as the clients will: TLS handshake, SASL login, then a metadata request.

    Raises :class:`KafkaSecurityError` or :class:`KafkaConnectError` naming the setting to check,
    within about ``timeout_s`` (the clients themselves would retry a refused login for ever).
    """
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    host = bootstrap_servers(s)[0]
    try:
        _tls_probe(s, host, timeout_s)
        if s.kafka_security_protocol.startswith("SASL"):
            asyncio.run(_sasl_probe(s, host, timeout_s))
    except (ssl.SSLError, OSError, TimeoutError) as exc:
        raise _explain(s, exc, host) from None
    except Exception as exc:  # noqa: BLE001 - aiokafka's errors share no base we could name more narrowly
        raise _explain(s, exc, host) from None
    # kafka-python logs every failed attempt at ERROR before it gives up: quiet while probing
    klog = logging.getLogger("kafka")
    level = klog.level
    klog.setLevel(logging.CRITICAL)
    start = time.monotonic()
    try:
        admin = KafkaAdminClient(client_id="pricing-connect-check", request_timeout_ms=int(timeout_s * 1000),
                                 **kafka_python_config(s))
        try:
            admin.list_topics()
        finally:
            admin.close()
    except (KafkaError, ssl.SSLError, OSError, ValueError) as exc:
        raise _explain(s, exc, host) from None
    finally:
        klog.setLevel(level)
    logging.getLogger("pricing.kafka").debug("connection check to %s took %.2f s", host, time.monotonic() - start)


EXIT_KAFKA = 3  # console scripts: Kafka unreachable, or it refused our TLS/SASL credentials


def cli_check_connection(s: Settings, prog: str, timeout_s: float = 20.0) -> None:
    """``check_connection`` for console scripts: on failure print why and exit ``EXIT_KAFKA``."""
    try:
        check_connection(s, timeout_s)
    except KafkaConnectError as exc:
        print(f"{prog}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_KAFKA) from None
    except SettingsError as exc:  # a certificate or key that does not load
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
