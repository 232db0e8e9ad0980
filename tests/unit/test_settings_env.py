"""docs/settings.md against ``Settings.model_fields``: one row per setting, the defaults it shows,
and every setting set through the environment in its documented form (the table's Example column)."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

import pytest
from pydantic import SecretStr

from streams.settings import ENV_PREFIX, Settings, load_settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def _rows() -> dict[str, list[str]]:
    """Variable -> cells (default, format, example, meaning) of the settings table."""
    rows = {}
    for line in DOC.read_text().splitlines():
        if not line.startswith("| `PRICING_"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


ROWS = _rows()


def _shown_default(name: str) -> str:
    """A field's default as the table shows it."""
    default = Settings.model_fields[name].default
    if default is None:
        return "unset"
    if isinstance(default, SecretStr):
        return "(a placeholder)"
    if isinstance(default, tuple):
        return "`" + ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default) + "`"
    if isinstance(default, float):
        return f"`{default:g}`"
    return f"`{default}`"


def _plain(annotation: object) -> object:
    """``X | None`` -> ``X``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        assert len(args) == 1
        return args[0]
    return annotation


# what a setting needs beside it to be valid (the security checks refuse it alone)
_TLS = {"PRICING_KAFKA_SECURITY_PROTOCOL": "SSL"}
_CLIENT_CERT = {**_TLS, "PRICING_KAFKA_SSL_CERTFILE": "certs/client.pem", "PRICING_KAFKA_SSL_KEYFILE": "certs/client.key"}
COMPANIONS: dict[str, dict[str, str]] = {
    "kafka_sasl_mechanism": {"PRICING_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "PRICING_KAFKA_SASL_USERNAME": "u",
                             "PRICING_KAFKA_SASL_PASSWORD": "p"},
    "kafka_ssl_cafile": _TLS, "kafka_ssl_certfile": _CLIENT_CERT, "kafka_ssl_keyfile": _CLIENT_CERT,
    "kafka_ssl_key_password": _CLIENT_CERT, "kafka_ssl_check_hostname": _TLS,
    "min_insync_replicas": {"PRICING_REPLICATION_FACTOR": "3"},
}


def _expected(name: str, text: str) -> object:
    """What the example string must arrive as, by the field's type (an independent, simple parser)."""
    kind = _plain(Settings.model_fields[name].annotation)
    origin = typing.get_origin(kind)
    if origin is tuple:
        item = typing.get_args(kind)[0]
        return tuple(item(p) for p in text.split(","))
    if origin is typing.Literal or kind is str:
        return text
    if kind is SecretStr:
        return text
    if kind is bool:
        return text.lower() in ("1", "true", "yes", "on")
    return kind(text)  # int, float, Path


def test_table_has_one_row_per_setting() -> None:
    documented = set(ROWS)
    fields = {ENV_PREFIX + n.upper() for n in Settings.model_fields}
    assert documented == fields, (f"missing from {DOC.name}: {sorted(fields - documented)}; "
                                  f"documented but not a setting: {sorted(documented - fields)}")


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_default_as_documented(name: str) -> None:
    row = ROWS[ENV_PREFIX + name.upper()]
    assert row[0] == _shown_default(name)


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_setting_arrives_from_the_environment(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    var = ENV_PREFIX + name.upper()
    example = ROWS[var][2].strip("`")
    env = {**COMPANIONS.get(name, {}), var: example}
    monkeypatch.chdir(tmp_path)  # the examples' certificate paths are relative: make those files exist
    (tmp_path / "certs").mkdir()
    for f in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / "certs" / f).write_text("placeholder")
    got = getattr(load_settings(env), name)
    if isinstance(got, SecretStr):
        got = got.get_secret_value()
    want = _expected(name, example)
    assert got == want and type(got) is type(want), (var, example, got)
    default = Settings.model_fields[name].default
    assert got != (default.get_secret_value() if isinstance(default, SecretStr) else default), \
        f"the example of {var} is its default: it would not show that the variable is read"


@pytest.mark.parametrize("name", [n for n, f in Settings.model_fields.items()
                                  if typing.get_origin(_plain(f.annotation)) is tuple])
def test_lists_also_take_json(name: str) -> None:
    var = ENV_PREFIX + name.upper()
    example = ROWS[var][2].strip("`")
    items = example.split(",")
    as_json = "[" + ", ".join(f'"{i}"' if not re.fullmatch(r"[0-9.]+", i) else i for i in items) + "]"
    assert getattr(load_settings({var: as_json}), name) == _expected(name, example)


def test_the_readme_names_only_real_settings_with_their_real_defaults() -> None:
    readme = (DOC.parents[1] / "README.md").read_text()
    named = set(re.findall(r"`(PRICING_[A-Z0-9_]+)`", readme))
    known = {ENV_PREFIX + n.upper() for n in Settings.model_fields}
    named -= {"PRICING_SERVICE_HOST", "PRICING_PORT"}  # named as the Kubernetes variables that are allowed
    assert named and named <= known, sorted(named - known)
    for line in readme.splitlines():  # the README's short table: "| `PRICING_X` | `default` | ..."
        m = re.match(r"\| `(PRICING_[A-Z0-9_]+)` \| (`[^`]*`) \|", line)
        if m:
            assert _shown_default(m.group(1)[len(ENV_PREFIX):].lower()) == m.group(2), line
