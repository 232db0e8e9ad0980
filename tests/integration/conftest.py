"""Fixtures for tests that talk to the real local Kafka broker (deploy/kafka/broker.py).

Start the broker first (`python deploy/kafka/broker.py up`). A missing broker is a FAILURE,
never a skip: integration tests that silently skip prove nothing.

Everything here is scoped to tests/integration: the hooks only touch items collected from this
directory, so unit and agent tests run without a broker.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_BOOTSTRAP = "127.0.0.1:19092"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs the real Kafka broker (deploy/kafka)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)


def broker_log_path() -> Path:
    data_dir = os.environ.get("KAFKA_DATA_DIR") or str(REPO / "var" / "kafka")
    return Path(data_dir) / "broker.log"


def _log_tail(lines: int = 40) -> str:
    path = broker_log_path()
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no broker log at {path})"
    return f"--- last {lines} lines of {path} ---\n" + "\n".join(text.splitlines()[-lines:])


def _admin(bootstrap: str):  # -> kafka.KafkaAdminClient
    from kafka import KafkaAdminClient

    return KafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="pytest-integration", request_timeout_ms=10_000
    )


@pytest.fixture(scope="session")
def bootstrap() -> str:
    """Bootstrap address of a broker that has answered a metadata request."""
    address = os.environ.get("PRICING_KAFKA_BOOTSTRAP") or DEFAULT_BOOTSTRAP
    host, _, port = address.split(",")[0].rpartition(":")
    deadline = time.monotonic() + 10
    error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            # cheap TCP check first: kafka-python takes seconds to give up on a closed port
            socket.create_connection((host, int(port)), timeout=1).close()
            admin = _admin(address)
            try:
                admin.list_topics()
            finally:
                admin.close()
            return address
        except Exception as exc:  # any failure means "not answering (yet)"
            error = exc
            time.sleep(0.5)
    pytest.fail(
        f"Kafka broker at {address} does not answer ({error!r}).\n"
        f"Start it with `python deploy/kafka/broker.py up`.\n{_log_tail()}",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def admin(bootstrap: str) -> Iterator:
    client = _admin(bootstrap)
    yield client
    client.close()


@pytest.fixture
def topic_factory(admin) -> Iterator[Callable[..., str]]:
    """Create uniquely named topics for one test; they are deleted at teardown.

    Usage: ``name = topic_factory(partitions=3, config={"cleanup.policy": "compact"})``.
    """
    from kafka.admin import NewTopic

    created: list[str] = []

    def create(partitions: int = 1, *, prefix: str = "it", config: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1,
                      topic_configs=config or {})],
            timeout_ms=10_000,
        )
        created.append(name)
        _wait_for_leaders(admin, name, partitions)
        return name

    yield create

    if created:
        try:
            admin.delete_topics(created, timeout_ms=10_000)
        except Exception as exc:  # teardown must not hide the test's own result
            print(f"warning: could not delete topics {created}: {exc!r}")


def _wait_for_leaders(admin, name: str, partitions: int, timeout: float = 10.0) -> None:
    """CreateTopics returns before every partition has a leader; wait so clients don't retry."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = admin.describe_topics([name])
        parts = described[0].get("partitions", []) if described else []
        if len(parts) == partitions and all(p.get("leader_id", -1) >= 0 for p in parts):
            return
        time.sleep(0.1)
    raise AssertionError(f"topic {name}: partitions without a leader after {timeout}s")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A really trained (small simulated market) and really exported ONNX bundle, once per session."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("bundle")
    train = [sys.executable, "-m", "models.train", "--small", "--out", str(root / "train"), "--no-plots", "--quiet"]
    export = [sys.executable, "-m", "export", "--train-dir", str(root / "train"), "--model-dir",
              str(root / "models"), "--no-progress"]
    for cmd in (train, export):
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(cmd[1:4])} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}",
                        pytrace=False)
    return root / "models"


# --- brokers of their own: a secured one, a 3-node cluster (deploy/kafka/broker.py) ------------

BROKER_SCRIPT = REPO / "deploy" / "kafka" / "broker.py"


class LocalBrokers:
    """Brokers a test module starts with broker.py in its own data dir and ports, and stops after."""

    def __init__(self, data_dir: Path, port: int, brokers: int, security: bool) -> None:
        self.data_dir, self.brokers, self.security = data_dir, brokers, security
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "PRICING_"))}
        self.env |= {"KAFKA_DATA_DIR": str(data_dir), "KAFKA_PORT": str(port),
                     "KAFKA_CONTROLLER_PORT": str(port + brokers), "KAFKA_BROKERS": str(brokers),
                     "KAFKA_SECURITY": "1" if security else "0", "KAFKA_HEAP": "384m"}
        if security:  # ssl, mtls, sasl_ssl, sasl_plaintext right after the controller port
            names = ("KAFKA_SSL_PORT", "KAFKA_MTLS_PORT", "KAFKA_SASL_SSL_PORT", "KAFKA_SASL_PLAINTEXT_PORT")
            self.env |= {n: str(port + brokers + 1 + k) for k, n in enumerate(names)}
        self.bootstrap = ""

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """``broker.py ARGS`` with this setup's environment."""
        return subprocess.run([sys.executable, str(BROKER_SCRIPT), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def up(self) -> str:
        """Start every node that is not running; returns the bootstrap addresses."""
        done = self.run("up")
        if done.returncode != 0:
            pytest.fail(f"broker.py up failed ({done.returncode}):\n{done.stderr[-4000:]}", pytrace=False)
        self.bootstrap = done.stdout.strip().splitlines()[-1]
        return self.bootstrap

    def down(self) -> None:
        """Stop every node."""
        self.run("down", timeout=120)

    def client_env(self, name: str) -> dict[str, str]:
        """PRICING_* settings of a secured listener, from the env file broker.py wrote."""
        lines = (self.data_dir / "security" / f"{name}.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if line)

    def node_pid(self, node: int) -> int:
        """Pid of one node of a cluster."""
        return int((self.data_dir / f"node-{node}" / "broker.pid").read_text())


def free_port_block(n: int, offset: int) -> int:
    """First of ``n`` consecutive free ports: IT_KAFKA_PORT_BASE + offset when set, else a free block."""
    import random

    base = os.environ.get("IT_KAFKA_PORT_BASE")
    if base:
        return int(base) + offset
    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(20000, 32000 - n)
        ok = True
        for port in range(first, first + n):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return first
    raise RuntimeError(f"no block of {n} free ports found")


@pytest.fixture(scope="module")
def local_brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LocalBrokers]]:
    """Factory: ``local_brokers(brokers=3)`` or ``local_brokers(security=True)``; all stopped at module end."""
    started: list[LocalBrokers] = []

    def start(*, brokers: int = 1, security: bool = False) -> LocalBrokers:
        n_ports = 2 * brokers + (4 if security else 0)
        port = free_port_block(n_ports, offset=0 if security else 10)
        handle = LocalBrokers(tmp_path_factory.mktemp("kafka"), port, brokers, security)
        started.append(handle)
        handle.up()
        return handle

    yield start
    for handle in started:
        handle.down()
