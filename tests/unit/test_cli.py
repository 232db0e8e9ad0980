"""Every console script: ``--help`` and ``--version`` exit 0, and usage shows the script's own name."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

from streams.version import __version__

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _entry(target: str):  # noqa: ANN202 - the script's main
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_and_version(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    main = _entry(SCRIPTS[name])
    for flag in ("--help", "--version"):
        with pytest.raises(SystemExit) as exc:
            main([flag])
        assert exc.value.code in (0, None), (name, flag)
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {name} ") or out.startswith(f"usage: {name}\n"), out[:200]
    assert f"{name} {__version__}" in out


def test_evaluate_bootstrap_means_kafka_servers(capsys: pytest.CaptureFixture[str]) -> None:
    main = _entry(SCRIPTS["pricing-evaluate"])
    with pytest.raises(SystemExit) as exc:
        main(["--kafka", "--bootstrap", "300"])
    assert exc.value.code == 2 and "--resamples 300" in capsys.readouterr().err
