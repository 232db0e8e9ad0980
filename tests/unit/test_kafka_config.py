"""streams/kafka_config.py and the security settings: one config per protocol, errors that name the setting."""

from __future__ import annotations

import importlib.util
import ssl
import sys
from pathlib import Path

import pytest

from streams.kafka_config import aiokafka_config, faust_credentials, kafka_python_config, ssl_context
from streams.settings import SettingsError, load_settings

_SEC = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "kafka_security.py"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    """The broker script's throwaway CA and client certificate (needs `cryptography`)."""
    spec = importlib.util.spec_from_file_location("pricing_kafka_security", _SEC)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod.ensure_material(tmp_path_factory.mktemp("pki"))


def test_plaintext_has_no_tls_and_no_sasl() -> None:
    s = load_settings({"PRICING_KAFKA_BOOTSTRAP": "a:1,b:2"})
    assert kafka_python_config(s) == {"bootstrap_servers": ["a:1", "b:2"], "security_protocol": "PLAINTEXT"}
    assert aiokafka_config(s) == {"bootstrap_servers": "a:1,b:2", "security_protocol": "PLAINTEXT"}
    assert ssl_context(s) is None and faust_credentials(s) is None


def test_ssl_with_ca_gives_every_client_the_same_verifying_context(pki) -> None:
    s = load_settings({"PRICING_KAFKA_SECURITY_PROTOCOL": "SSL", "PRICING_KAFKA_SSL_CAFILE": str(pki.ca)})
    ctx = ssl_context(s)
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert any(c["subject"][0][0][1] == "pricing-streams local test CA" for c in ctx.get_ca_certs())
    assert isinstance(aiokafka_config(s)["ssl_context"], ssl.SSLContext)
    assert kafka_python_config(s)["security_protocol"] == "SSL"
    creds = faust_credentials(s)
    assert type(creds).__name__ == "SSLCredentials" and creds.protocol.value == "SSL"


def test_mtls_loads_the_encrypted_client_key_and_a_wrong_password_names_the_setting(pki) -> None:
    env = {"PRICING_KAFKA_SECURITY_PROTOCOL": "SSL", "PRICING_KAFKA_SSL_CAFILE": str(pki.ca),
           "PRICING_KAFKA_SSL_CERTFILE": str(pki.client_cert), "PRICING_KAFKA_SSL_KEYFILE": str(pki.client_key),
           "PRICING_KAFKA_SSL_KEY_PASSWORD": pki.client_key_password, "PRICING_KAFKA_SSL_CHECK_HOSTNAME": "false"}
    ctx = ssl_context(load_settings(env))
    assert ctx is not None and not ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(SettingsError, match="PRICING_KAFKA_SSL_KEY_PASSWORD"):
        ssl_context(load_settings(env | {"PRICING_KAFKA_SSL_KEY_PASSWORD": "wrong"}))


def test_sasl_ssl_faust_credentials_carry_the_tls_context(pki) -> None:
    """The defect of issue 16: SASLCredentials without a context made Faust connect as SASL_PLAINTEXT."""
    s = load_settings({"PRICING_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "PRICING_KAFKA_SSL_CAFILE": str(pki.ca),
                       "PRICING_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "PRICING_KAFKA_SASL_USERNAME": "u",
                       "PRICING_KAFKA_SASL_PASSWORD": "p"})
    creds = faust_credentials(s)
    assert creds.protocol.value == "SASL_SSL" and creds.mechanism.value == "SCRAM-SHA-512"
    assert isinstance(creds.ssl_context, ssl.SSLContext)
    cfg = aiokafka_config(s)
    assert (cfg["sasl_mechanism"], cfg["sasl_plain_username"], cfg["sasl_plain_password"]) == ("SCRAM-SHA-512", "u", "p")
    assert isinstance(cfg["ssl_context"], ssl.SSLContext)


def test_sasl_plaintext_has_no_tls() -> None:
    s = load_settings({"PRICING_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "PRICING_KAFKA_SASL_MECHANISM": "PLAIN",
                       "PRICING_KAFKA_SASL_USERNAME": "u", "PRICING_KAFKA_SASL_PASSWORD": "p"})
    assert "ssl_context" not in aiokafka_config(s)
    assert faust_credentials(s).protocol.value == "SASL_PLAINTEXT"


@pytest.mark.parametrize(("env", "named"), [
    ({"PRICING_KAFKA_SECURITY_PROTOCOL": "SSL", "PRICING_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"},
     "PRICING_KAFKA_SSL_CAFILE"),
    ({"PRICING_KAFKA_SECURITY_PROTOCOL": "SSL", "PRICING_KAFKA_SSL_CERTFILE": "{cert}"}, "PRICING_KAFKA_SSL_KEYFILE"),
    ({"PRICING_KAFKA_SECURITY_PROTOCOL": "SSL", "PRICING_KAFKA_SSL_KEYFILE": "{key}"}, "PRICING_KAFKA_SSL_CERTFILE"),
    ({"PRICING_KAFKA_SECURITY_PROTOCOL": "SSL", "PRICING_KAFKA_SSL_KEY_PASSWORD": "x"}, "PRICING_KAFKA_SSL_KEYFILE"),
    ({"PRICING_KAFKA_SSL_CAFILE": "{ca}"}, "PRICING_KAFKA_SECURITY_PROTOCOL"),
    ({"PRICING_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "PRICING_KAFKA_SASL_MECHANISM": "PLAIN",
      "PRICING_KAFKA_SASL_USERNAME": "u"}, "PRICING_KAFKA_SASL_PASSWORD"),
    ({"PRICING_REPLICATION_FACTOR": "1", "PRICING_MIN_INSYNC_REPLICAS": "2"}, "PRICING_MIN_INSYNC_REPLICAS"),
])
def test_bad_security_settings_are_refused_naming_the_setting(pki, env: dict[str, str], named: str) -> None:
    files = {"cert": str(pki.client_cert), "key": str(pki.client_key), "ca": str(pki.ca)}
    with pytest.raises(SettingsError, match=named):
        load_settings({k: v.format(**files) for k, v in env.items()})
