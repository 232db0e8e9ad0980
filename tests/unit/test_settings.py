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


@pytest.mark.parametrize("text", ["view,click,add_to_cart,purchase", " view , click,add_to_cart,purchase ",
                                  '["view","click","add_to_cart","purchase"]'])
def test_triggers_comma_or_json(text: str) -> None:
    assert load_settings({"PRICING_TRIGGERS": text}).triggers == ("view", "click", "add_to_cart", "purchase")


@pytest.mark.parametrize("text", ["60,3600", "[60, 3600]", '["60","3600"]'])
def test_feature_windows_comma_or_json(text: str) -> None:
    assert load_settings({"PRICING_FEATURE_WINDOWS_S": text}).feature_windows_s == (60.0, 3600.0)


@pytest.mark.parametrize(("env", "named"), [
    ({"PRICING_TRIGGERS": '["view"'}, "PRICING_TRIGGERS"),
    ({"PRICING_TRIGGERS": "view,hover"}, "PRICING_TRIGGERS"),
    ({"PRICING_FEATURE_WINDOWS_S": "60,abc"}, "PRICING_FEATURE_WINDOWS_S"),
    ({"PRICING_PARTITIONS": "0"}, "PRICING_PARTITIONS"),
    ({"PRICING_UNKNOWN_FIELDS": "drop"}, "PRICING_UNKNOWN_FIELDS"),
    ({"PRICING_TREATMENT_SHARE": "0.6", "PRICING_UNIFORM_SHARE": "0.5"}, "PRICING_UNIFORM_SHARE"),
    ({"PRICING_UNIFORM_SHARE": "1.5"}, "PRICING_UNIFORM_SHARE"),
])
def test_errors_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(env)


def test_only_the_given_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRICING_PARTITIONS", "9")
    assert load_settings({}).partitions == 4
    assert load_settings().partitions == 9


# what Kubernetes injects for `kind: Service, name: pricing` with ports 80/TCP (named "http") and 9000/UDP
KUBERNETES = {
    "PRICING_SERVICE_HOST": "10.0.0.11", "PRICING_SERVICE_PORT": "80", "PRICING_SERVICE_PORT_HTTP": "80",
    "PRICING_SERVICE_PORT_METRICS_V2": "9000",
    "PRICING_PORT": "tcp://10.0.0.11:80", "PRICING_PORT_80_TCP": "tcp://10.0.0.11:80",
    "PRICING_PORT_80_TCP_PROTO": "tcp", "PRICING_PORT_80_TCP_PORT": "80", "PRICING_PORT_80_TCP_ADDR": "10.0.0.11",
    "PRICING_PORT_9000_UDP": "udp://10.0.0.11:9000", "PRICING_PORT_9000_UDP_ADDR": "10.0.0.11",
}


def test_kubernetes_service_variables_are_allowed() -> None:
    s = load_settings({**KUBERNETES, "PRICING_PARTITIONS": "8"})
    assert s.partitions == 8


@pytest.mark.parametrize("typo", ["PRICING_SERVICE_HOSTS", "PRICING_PORTS", "PRICING_PORT_80", "PRICING_PORT_TCP",
                                  "PRICING_PORT_80_TCP_HOST", "PRICING_PORT_80_HTTP", "PRICING_SERVICE",
                                  "PRICING_TRIGGER", "PRICING_PARTITION"])
def test_typos_still_refused_next_to_kubernetes_variables(typo: str) -> None:
    with pytest.raises(SettingsError, match=typo):
        load_settings({**KUBERNETES, typo: "1"})


def test_three_arm_shares() -> None:
    """The uniform arm is off by default (a running two-arm experiment keeps its split); thirds are valid,
    and so is a treatment share plus a uniform share of exactly 1 (no control arm)."""
    assert load_settings({}).uniform_share == 0.0 and load_settings({}).cap_at_uniform is False
    s = load_settings({"PRICING_TREATMENT_SHARE": "0.3333", "PRICING_UNIFORM_SHARE": "0.3333",
                       "PRICING_CAP_AT_UNIFORM": "true"})
    assert (s.treatment_share, s.uniform_share, s.cap_at_uniform) == (0.3333, 0.3333, True)
    assert load_settings({"PRICING_TREATMENT_SHARE": "0.7", "PRICING_UNIFORM_SHARE": "0.3"}).uniform_share == 0.3
