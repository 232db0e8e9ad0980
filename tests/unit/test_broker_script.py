"""deploy/kafka/broker.py helpers that need no broker."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "broker.py"


@pytest.fixture(scope="module")
def broker():
    spec = importlib.util.spec_from_file_location("pricing_broker_script", _PATH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_cluster_id_never_starts_with_a_dash(broker, monkeypatch: pytest.MonkeyPatch) -> None:
    """A leading '-' made StorageTool read the id as an option: the broker failed to format."""
    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x01" * 16)])
    monkeypatch.setattr(broker.uuid, "uuid4", lambda: next(draws))
    cid = broker.base64_uuid()
    assert cid == "AQEBAQEBAQEBAQEBAQEBAQ" and len(cid) == 22


def test_cluster_ids_are_22_url_safe_characters(broker) -> None:
    for _ in range(500):
        cid = broker.base64_uuid()
        assert len(cid) == 22 and not cid.startswith("-")
        assert set(cid) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_version_names_the_pinned_kafka(broker, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        broker.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"broker.py: Apache Kafka {broker.kafka_version()} (pom.xml)"
