"""Settings: one prefix, unknown keys refused, secrets masked."""

from __future__ import annotations

import subprocess
import sys

import pytest

from streams.settings import SettingsError, load_settings


def test_defaults_and_env_override() -> None:
    s = load_settings({"PRICING_PARTITIONS": "8", "PRICING_TRIGGERS": "view,purchase"})
    assert s.partitions == 8
    assert s.triggers == ("view", "purchase")
    assert s.max_deviation == 0.2


def test_unknown_key_is_refused() -> None:
    with pytest.raises(SettingsError, match="PRICING_KAFKA_BOOTSTRAPS"):
        load_settings({"PRICING_KAFKA_BOOTSTRAPS": "x:1"})


@pytest.mark.parametrize("env", [
    {"PRICING_PARTITIONS": "0"},
    {"PRICING_MAX_DEVIATION": "1.5"},
    {"PRICING_TRIGGERS": "view,hover"},
    {"PRICING_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
])
def test_invalid_values_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        load_settings(env)


def test_secrets_are_masked() -> None:
    s = load_settings({"PRICING_USER_HASH_KEY": "topsecret", "PRICING_KAFKA_SASL_PASSWORD": "pw",
                       "PRICING_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "PRICING_KAFKA_SASL_MECHANISM": "PLAIN",
                       "PRICING_KAFKA_SASL_USERNAME": "u"})
    assert s.user_hash_key.get_secret_value() == "topsecret"
    shown = repr(s.masked()) + repr(s)
    assert "topsecret" not in shown and "'pw'" not in shown


def test_settings_command_prints_masked() -> None:
    out = subprocess.run([sys.executable, "-m", "streams.settings"], capture_output=True, text=True,
                         env={"PRICING_USER_HASH_KEY": "hunter2", "PATH": ""}, check=True).stdout
    assert "PRICING_USER_HASH_KEY" in out and "hunter2" not in out
    bad = subprocess.run([sys.executable, "-m", "streams.settings"], capture_output=True, text=True,
                         env={"PRICING_NOPE": "1", "PATH": ""})
    assert bad.returncode == 2 and "PRICING_NOPE" in bad.stderr
