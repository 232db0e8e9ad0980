#!/usr/bin/env python3
"""Run a local Apache Kafka broker, or a small cluster, (KRaft) from Maven Central jars.

    broker.py up       start the broker (idempotent), print the bootstrap address last
    broker.py down     stop the broker(s) this script started
    broker.py status   running/stopped, pid, bootstrap, data dir (exit 0 running, 3 stopped)
    broker.py logs     tail of the broker log (-n LINES, -f to follow)

    up --brokers 3     three combined controller+broker nodes (ports KAFKA_PORT+0..2, controllers
                       KAFKA_CONTROLLER_PORT+0..2, data in <data dir>/node-1..3); replication
                       factor 3 and min.insync.replicas 2 by default, offsets topic too.
                       An `up` restarts only the nodes that are not running.
    up --security      also SSL, mTLS (client certificate required), SASL_SSL and SASL_PLAINTEXT
                       listeners (SCRAM-SHA-256/512 and PLAIN, user `pricing`), with a throwaway
                       CA in <data dir>/security; `status` prints where the certificates and the
                       ready-to-source PRICING_* env files are. Needs the `cryptography` package.

No Docker and no tarball: `mvn dependency:copy-dependencies` on deploy/kafka/pom.xml assembles
the broker classpath once into a cache outside the repository, and `java kafka.Kafka` runs it.

Environment (all optional):
    KAFKA_PORT             client (PLAINTEXT) port                 default 19092
    KAFKA_CONTROLLER_PORT  KRaft controller port                   default KAFKA_PORT + brokers
    KAFKA_BROKERS          nodes (like --brokers)                  default 1
    KAFKA_SECURITY         secured listeners too (like --security) default false
    KAFKA_SSL_PORT, KAFKA_MTLS_PORT, KAFKA_SASL_SSL_PORT, KAFKA_SASL_PLAINTEXT_PORT
                           secured listener ports       default KAFKA_PORT + 2, + 3, + 4, + 5
    KAFKA_DATA_DIR         log dirs, rendered config, pid, log     default <repo>/var/kafka
    KAFKA_HEAP             JVM heap (-Xmx/-Xms)                    default 512m
    KAFKA_AUTO_CREATE_TOPICS  auto.create.topics.enable            default false
    KAFKA_START_TIMEOUT    seconds to wait for the broker to answer default 90
    XDG_CACHE_HOME         jar cache lives in $XDG_CACHE_HOME/pricing-kafka/<version>/jars
                           (default ~/.cache/...)
The Kafka version is fixed by pom.xml. Only the standard library is used (plus `cryptography`
for --security); if kafka-python is importable the readiness check is a real metadata request,
otherwise a TCP connect.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # kafka_security.py, imported only with --security
REPO = HERE.parents[1]
POM = HERE / "pom.xml"
TEMPLATE = HERE / "server.properties.template"
LOG4J_CONFIG = HERE / "log4j2.properties"
MARKER = ".complete"
HOST = "127.0.0.1"
EXIT_STOPPED = 3
LOG_ROTATE_BYTES = 20 * 1024 * 1024


class BrokerError(Exception):
    """A failure with a message meant for the user (printed without a traceback)."""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BrokerError(f"{name}={raw!r} is not an integer") from None
    if not 0 < value < 65536:
        raise BrokerError(f"{name}={value} is out of range")
    return value


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise BrokerError(f"{name}={raw!r} is not a boolean (true/false)")


def kafka_version() -> str:
    """The Kafka version pinned by pom.xml (also names the jar cache directory)."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(POM).getroot().find("m:properties/m:kafka.version", ns)
    version = (node.text or "").strip() if node is not None else ""
    if not version:
        raise BrokerError(f"{POM}: no <kafka.version> property")
    return version


@dataclass(frozen=True)
class Node:
    """One broker process: its id, ports and files. A single broker lives in the data dir itself."""

    node_id: int
    port: int
    controller_port: int
    data_dir: Path

    @property
    def bootstrap(self) -> str:
        """Client bootstrap address of this node."""
        return f"{HOST}:{self.port}"

    @property
    def log_dirs(self) -> Path:
        """Kafka log.dirs (topic data and the KRaft metadata log)."""
        return self.data_dir / "logs"

    @property
    def properties(self) -> Path:
        """The rendered server.properties."""
        return self.data_dir / "server.properties"

    @property
    def pid_file(self) -> Path:
        """Pid of the broker JVM we started."""
        return self.data_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        """Broker stdout/stderr (log4j console appender)."""
        return self.data_dir / "broker.log"


@dataclass(frozen=True)
class Config:
    """Everything `up`/`down`/`status` need, read once from the environment (and flags)."""

    version: str
    port: int
    controller_port: int
    data_dir: Path
    heap: str
    auto_create_topics: bool
    start_timeout: float
    jar_dir: Path
    brokers: int = 1
    security: bool = False
    secure_ports: tuple[int, int, int, int] = (0, 0, 0, 0)  # ssl, mtls, sasl_ssl, sasl_plaintext

    @classmethod
    def from_env(cls, brokers: int | None = None, security: bool | None = None) -> Config:
        """Read and validate the KAFKA_* environment variables; flags override them."""
        version = kafka_version()
        cache_root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        data_dir = Path(os.environ.get("KAFKA_DATA_DIR") or REPO / "var" / "kafka").resolve()
        if brokers is None:  # down/status without --brokers: what the last `up` recorded
            brokers = _env_int("KAFKA_BROKERS", 0) or _recorded_brokers(data_dir)
        if not 1 <= brokers <= 9:
            raise BrokerError(f"--brokers / KAFKA_BROKERS={brokers}: between 1 and 9")
        security = _env_bool("KAFKA_SECURITY", False) if security is None else security
        if security and brokers > 1:
            raise BrokerError("--security with --brokers > 1 is not supported (secure a single broker)")
        port = _env_int("KAFKA_PORT", 19092)
        controller_port = _env_int("KAFKA_CONTROLLER_PORT", port + brokers)
        secure_ports = tuple(_env_int(name, port + k) for name, k in (
            ("KAFKA_SSL_PORT", 2), ("KAFKA_MTLS_PORT", 3), ("KAFKA_SASL_SSL_PORT", 4),
            ("KAFKA_SASL_PLAINTEXT_PORT", 5)))
        used = [*range(port, port + brokers), *range(controller_port, controller_port + brokers),
                *(secure_ports if security else ())]
        if len(set(used)) != len(used):
            raise BrokerError(f"port clash among KAFKA_PORT / KAFKA_CONTROLLER_PORT / secured ports "
                              f"with {brokers} broker(s): {sorted(used)}")
        heap = os.environ.get("KAFKA_HEAP", "").strip() or "512m"
        timeout = float(os.environ.get("KAFKA_START_TIMEOUT", "").strip() or 90)
        return cls(
            version=version,
            port=port,
            controller_port=controller_port,
            data_dir=data_dir,
            heap=heap,
            auto_create_topics=_env_bool("KAFKA_AUTO_CREATE_TOPICS", False),
            start_timeout=timeout,
            jar_dir=(cache_root / "pricing-kafka" / version / "jars").resolve(),
            brokers=brokers,
            security=security,
            secure_ports=secure_ports,  # type: ignore[arg-type]
        )

    def nodes(self) -> list[Node]:
        """The broker processes: the data dir itself for one, node-<id> subdirectories for more."""
        if self.brokers == 1:
            return [Node(1, self.port, self.controller_port, self.data_dir)]
        return [Node(k + 1, self.port + k, self.controller_port + k, self.data_dir / f"node-{k + 1}")
                for k in range(self.brokers)]

    @property
    def replication_factor(self) -> int:
        """Default and internal topics' replication factor: the node count, at most 3."""
        return min(self.brokers, 3)

    @property
    def min_isr(self) -> int:
        """min.insync.replicas: one replica may be down and writes with acks=all go on."""
        return max(1, self.replication_factor - 1)

    @property
    def security_dir(self) -> Path:
        """Throwaway CA, certificates, passwords and client env files (--security)."""
        return self.data_dir / "security"

    @property
    def bootstrap(self) -> str:
        """Client bootstrap addresses, comma separated."""
        return ",".join(n.bootstrap for n in self.nodes())

    @property
    def log_file(self) -> Path:
        """The (first node's) broker log."""
        return self.nodes()[0].log_file

    @property
    def layout_file(self) -> Path:
        """Records the node count of the last `up`, for down/status/logs without --brokers."""
        return self.data_dir / "layout.json"


def _recorded_brokers(data_dir: Path) -> int:
    try:
        return int(json.loads((data_dir / "layout.json").read_text())["brokers"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return 1


def info(msg: str) -> None:
    """Progress goes to stderr so that stdout's last line is the bootstrap address."""
    print(f"[kafka] {msg}", file=sys.stderr, flush=True)


# --- jars ---------------------------------------------------------------------------------


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def jars_ready(cfg: Config) -> bool:
    """The cache is complete when the marker names this pom and every jar it lists exists."""
    marker = cfg.jar_dir / MARKER
    if not marker.is_file():
        return False
    lines = marker.read_text().splitlines()
    if not lines or lines[0] != _pom_digest():
        return False
    return all((cfg.jar_dir / name).is_file() for name in lines[1:])


def ensure_jars(cfg: Config) -> None:
    """Fetch the broker classpath with mvn unless the cache already holds it."""
    if jars_ready(cfg):
        return
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("mvn not found on PATH (needed once to fetch the Kafka jars)")
    staging = cfg.jar_dir.with_name(f"jars.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    info(f"fetching Kafka {cfg.version} jars with mvn into {cfg.jar_dir} (one time)")
    cmd = [mvn, "-q", "-B", "dependency:copy-dependencies", "-f", str(POM),
           f"-DoutputDirectory={staging}"]
    result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerError(f"mvn failed (rc={result.returncode}):\n{result.stdout}{result.stderr}")
    jars = sorted(p.name for p in staging.glob("*.jar"))
    if not any(name.startswith("kafka_2.13-") for name in jars):
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerError(f"mvn succeeded but {staging} holds no kafka_2.13 jar")
    (staging / MARKER).write_text("\n".join([_pom_digest(), *jars]) + "\n")
    # Swap the finished directory in; a half-copied directory is never seen as complete.
    if cfg.jar_dir.exists():
        shutil.rmtree(cfg.jar_dir)
    staging.rename(cfg.jar_dir)


# --- process bookkeeping ------------------------------------------------------------------


def _read_pid(node: Node) -> int | None:
    try:
        return int(node.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _is_our_broker(pid: int, node: Node) -> bool:
    """True if pid is alive and is a kafka.Kafka JVM running our rendered config."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        try:  # no /proc (macOS): fall back to "the pid exists"
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    args = [a.decode(errors="replace") for a in cmdline]
    return "kafka.Kafka" in args and str(node.properties) in args


def running_pid(node: Node) -> int | None:
    """Pid of the broker this script started, if it is still alive."""
    pid = _read_pid(node)
    if pid is not None and _is_our_broker(pid, node):
        return pid
    return None


def port_open(port: int, timeout: float = 1.0) -> bool:
    """True if something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def broker_answers(bootstrap: str) -> bool:
    """A real metadata round trip when kafka-python is available, else a TCP connect."""
    try:
        from kafka import KafkaAdminClient  # type: ignore[import-untyped]
    except ImportError:
        _host, _, port = bootstrap.rpartition(":")
        return port_open(int(port))
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # retries are expected while starting
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000,
                                 client_id="broker-py-probe")
    except Exception:
        return False
    try:
        admin.list_topics()
        return True
    except Exception:
        return False
    finally:
        admin.close()


def tail(path: Path, lines: int = 40) -> str:
    """Last lines of a (possibly large) log file."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 256 * 1024))
            data = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(data.splitlines()[-lines:])


# --- commands -----------------------------------------------------------------------------


def _listeners(cfg: Config, node: Node) -> tuple[dict[str, tuple[str, int]], str]:
    """Client listeners {name: (protocol, port)} of a node, and the extra properties they need."""
    out = {"PLAINTEXT": ("PLAINTEXT", node.port)}
    if not cfg.security:
        return out, ""
    import kafka_security as sec

    material = _security_material(cfg)
    out |= sec.listeners(sec.Ports(*cfg.secure_ports))
    return out, sec.server_properties(material)


def render_properties(cfg: Config, node: Node) -> None:
    """Fill server.properties.template (plus the secured listeners' lines) into the node's dir."""
    client, extra = _listeners(cfg, node)
    listeners = [f"{name}://{HOST}:{port}" for name, (_proto, port) in client.items()]
    protocols = [f"{name}:{proto}" for name, (proto, _port) in client.items()]
    text = string.Template(TEMPLATE.read_text()).substitute(
        node_id=node.node_id,
        quorum_voters=",".join(f"{n.node_id}@{HOST}:{n.controller_port}" for n in cfg.nodes()),
        listeners=",".join([*listeners, f"CONTROLLER://{HOST}:{node.controller_port}"]),
        advertised_listeners=",".join(listeners),
        protocol_map=",".join(["CONTROLLER:PLAINTEXT", *protocols]),
        replication_factor=cfg.replication_factor,
        min_isr=cfg.min_isr,
        log_dirs=node.log_dirs,
        auto_create_topics=str(cfg.auto_create_topics).lower(),
    )
    node.properties.write_text(text + extra)


def java_bin() -> str:
    """The java executable: $JAVA_HOME/bin/java, else java on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise BrokerError("java not found (set JAVA_HOME or put java on PATH; JDK 17+)")
    return java


def format_storage(cfg: Config, node: Node, java: str) -> None:
    """Format the node's KRaft log dir once; every node of a cluster shares one cluster id."""
    if (node.log_dirs / "meta.properties").is_file():
        return
    id_file = cfg.data_dir / "cluster.id"
    if cfg.brokers > 1 and id_file.is_file():
        cluster_id = id_file.read_text().strip()
    else:
        cluster_id = base64_uuid()
        if cfg.brokers > 1:
            id_file.write_text(cluster_id + "\n")
    extra: list[str] = []
    if cfg.security:  # the SCRAM user goes into the new metadata log (no running broker needed)
        import kafka_security as sec

        material = _security_material(cfg)
        extra = sec.scram_format_args(material)
    info(f"formatting {node.log_dirs} (cluster id {cluster_id})")
    cmd = [java, "-cp", f"{cfg.jar_dir}/*", f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
           "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(node.properties), *extra]
    result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0:
        raise BrokerError(f"StorageTool format failed:\n{result.stdout}{result.stderr}")
    if cfg.security:
        _scram_marker(cfg).write_text(_scram_digest(cfg))


def _security_material(cfg: Config):  # -> kafka_security.Material
    try:
        import kafka_security as sec
    except ImportError as exc:  # cryptography is imported lazily; this is the script's own module
        raise BrokerError(f"cannot import {HERE / 'kafka_security.py'}: {exc}") from None
    try:
        return sec.ensure_material(cfg.security_dir)
    except ImportError:
        raise BrokerError("--security / KAFKA_SECURITY needs the `cryptography` package "
                          "(pip install cryptography; it is in the dev extra)") from None


def _scram_marker(cfg: Config) -> Path:
    return cfg.data_dir / "scram-users.sha256"


def _scram_digest(cfg: Config) -> str:
    return hashlib.sha256(_security_material(cfg).password.encode()).hexdigest()


def ensure_scram_user(cfg: Config, java: str) -> None:
    """A log dir formatted before --security was used has no SCRAM user: add it with kafka-configs."""
    marker = _scram_marker(cfg)
    if marker.is_file() and marker.read_text() == _scram_digest(cfg):
        return
    import kafka_security as sec

    m = _security_material(cfg)
    info(f"adding SCRAM user {m.username!r} with kafka-configs (log dir formatted without it)")
    creds = ",".join(f"{mech}=[password={m.password}]" for mech in sec.SCRAM_MECHANISMS)
    cmd = [java, "-cp", f"{cfg.jar_dir}/*", f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
           "kafka.admin.ConfigCommand", "--bootstrap-server", cfg.nodes()[0].bootstrap, "--alter",
           "--add-config", creds, "--entity-type", "users", "--entity-name", m.username]
    result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise BrokerError(f"kafka-configs could not add the SCRAM user:\n{result.stdout}{result.stderr}")
    marker.write_text(_scram_digest(cfg))


def base64_uuid() -> str:
    """Kafka cluster ids are 16 random bytes, URL-safe base64 without padding.

    Never one that starts with ``-``: StorageTool's argument parser would read it as an option
    ("argument --cluster-id/-t: expected one argument"), one run in 64. Kafka's own
    ``Uuid.randomUuid`` draws again in that case too.
    """
    import base64

    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def wait_ready(cfg: Config, node: Node, proc: subprocess.Popen[bytes] | None, pid: int) -> None:
    """Block until the node answers, it dies, or the start timeout passes."""
    deadline = time.monotonic() + cfg.start_timeout
    while time.monotonic() < deadline:
        exited = proc.poll() is not None if proc is not None else not _is_our_broker(pid, node)
        if exited:
            node.pid_file.unlink(missing_ok=True)
            raise BrokerError(f"broker {node.node_id} exited during start-up; log tail:\n{tail(node.log_file)}")
        if port_open(node.port) and broker_answers(node.bootstrap):
            return
        time.sleep(0.5)
    raise BrokerError(
        f"broker {node.node_id} (pid {pid}) did not answer on {node.bootstrap} within {cfg.start_timeout:.0f}s; "
        f"it is left running (`broker.py down` stops it); log tail:\n{tail(node.log_file)}"
    )


def _launch(cfg: Config, node: Node, java: str) -> subprocess.Popen[bytes]:
    """Render, format and start one node's JVM; returns without waiting for it to answer."""
    node.data_dir.mkdir(parents=True, exist_ok=True)
    render_properties(cfg, node)
    format_storage(cfg, node, java)
    if node.log_file.exists() and node.log_file.stat().st_size > LOG_ROTATE_BYTES:
        node.log_file.replace(node.log_file.with_suffix(".log.1"))
    cmd = [
        java, f"-Xmx{cfg.heap}", f"-Xms{cfg.heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}", f"-Dkafka.logs.dir={node.data_dir}",
        "-cp", f"{cfg.jar_dir}/*", "kafka.Kafka", str(node.properties),
    ]
    with node.log_file.open("ab") as log:
        log.write(f"\n===== broker.py up {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n".encode())
        log.flush()
        # Own session: the broker survives the shell (and make) that started it.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=node.data_dir, start_new_session=True)
    node.pid_file.write_text(f"{proc.pid}\n")
    info(f"started Kafka {cfg.version} node {node.node_id} (pid {proc.pid}), log {node.log_file}")
    return proc


def cmd_up(cfg: Config, _args: argparse.Namespace) -> int:
    """Start the nodes that are not running (all of them, concurrently: a KRaft quorum needs a
    majority to elect a leader); wait until every node answers; print the bootstrap addresses."""
    recorded = _recorded_brokers(cfg.data_dir)
    if recorded != cfg.brokers and any(running_pid(n) for n in Config.from_env(recorded, False).nodes()):
        raise BrokerError(f"{cfg.data_dir} holds a running {recorded}-broker setup; "
                          f"`broker.py down` first (or use another KAFKA_DATA_DIR)")
    started: dict[int, subprocess.Popen[bytes] | None] = {}
    pids: dict[int, int] = {}
    missing = []
    for node in cfg.nodes():
        pid = running_pid(node)
        if pid is not None:
            info(f"broker {node.node_id} already running (pid {pid})")
            started[node.node_id], pids[node.node_id] = None, pid
            continue
        secured = cfg.secure_ports if cfg.security and node.node_id == 1 else ()
        for port in (node.port, node.controller_port, *secured):
            if port_open(port):
                raise BrokerError(f"port {port} is in use by a process this script did not start "
                                  f"(set KAFKA_PORT / KAFKA_CONTROLLER_PORT or stop it)")
        missing.append(node)
    java = java_bin()
    if missing:
        ensure_jars(cfg)
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        cfg.layout_file.write_text(json.dumps({"brokers": cfg.brokers}) + "\n")
    t0 = time.monotonic()
    for node in missing:
        proc = _launch(cfg, node, java)
        started[node.node_id], pids[node.node_id] = proc, proc.pid
    for node in cfg.nodes():
        wait_ready(cfg, node, started[node.node_id], pids[node.node_id])
    if cfg.security:
        ensure_scram_user(cfg, java)
        for port in cfg.secure_ports:
            if not port_open(port):
                raise BrokerError(f"secured listener on port {port} does not accept connections; "
                                  f"log tail:\n{tail(cfg.log_file)}")
        _print_security(cfg, file=sys.stderr, prefix="[kafka] ")
    if missing:
        info(f"{len(cfg.nodes())} broker(s) answer on {cfg.bootstrap} after {time.monotonic() - t0:.1f}s")
    print(cfg.bootstrap)
    return 0


def cmd_down(cfg: Config, _args: argparse.Namespace) -> int:
    """SIGTERM our broker(s), SIGKILL after 30 s.

    All nodes of a cluster are signalled at once: stopped one by one, the last ones lose their
    controller quorum and wait for it until the SIGKILL.
    """
    pids = {n.node_id: (n, pid) for n in cfg.nodes() if (pid := running_pid(n)) is not None}
    if not pids:
        for n in cfg.nodes():
            n.pid_file.unlink(missing_ok=True)
        info("no broker started by this script is running")
        return 0
    for node, pid in pids.values():
        info(f"stopping broker {node.node_id} (pid {pid})")
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_is_our_broker(pid, n) for n, pid in pids.values()):
        time.sleep(0.2)
    for node, pid in pids.values():
        if _is_our_broker(pid, node):
            info(f"broker {node.node_id} still running after 30s, sending SIGKILL")
            os.kill(pid, signal.SIGKILL)
            while _is_our_broker(pid, node):
                time.sleep(0.1)
        node.pid_file.unlink(missing_ok=True)
    info("stopped")
    return 0


def _print_security(cfg: Config, file: object = None, prefix: str = "") -> None:
    import kafka_security as sec

    m = _security_material(cfg)
    ports = sec.Ports(*cfg.secure_ports)
    envs = sec.write_client_envs(m, ports, HOST)
    out = file or sys.stdout
    print(f"{prefix}security:   SSL {HOST}:{ports.ssl}, mTLS {HOST}:{ports.mtls}, "
          f"SASL_SSL {HOST}:{ports.sasl_ssl}, SASL_PLAINTEXT {HOST}:{ports.sasl_plaintext}", file=out)
    print(f"{prefix}ca:         {m.ca}", file=out)
    print(f"{prefix}client:     cert {m.client_cert}, key {m.client_key} (password in mtls.env)", file=out)
    print(f"{prefix}sasl user:  {m.username} (SCRAM-SHA-256/512, PLAIN; password in sasl_ssl.env)", file=out)
    print(f"{prefix}env files:  " + ", ".join(str(p) for p in envs.values()) + "  (set -a; . FILE)",
          file=out)


def cmd_status(cfg: Config, _args: argparse.Namespace) -> int:
    """Print the state; exit 0 if every node runs, 3 if any is stopped."""
    all_up = True
    for node in cfg.nodes():
        pid = running_pid(node)
        all_up &= pid is not None
        state = "running" if pid is not None else "stopped"
        if pid is not None and not port_open(node.port):
            state = "starting (process alive, port not answering)"
        label = "" if cfg.brokers == 1 else f"node {node.node_id} "
        print(f"{label}state:      {state}")
        print(f"{label}pid:        {pid if pid is not None else '-'}")
        if cfg.brokers > 1:
            print(f"{label}data dir:   {node.data_dir}")
            print(f"{label}log:        {node.log_file}")
    print(f"bootstrap:  {cfg.bootstrap}")
    print(f"data dir:   {cfg.data_dir}")
    print(f"log:        {cfg.log_file}")
    print(f"kafka:      {cfg.version} (jars {'cached' if jars_ready(cfg) else 'not fetched'}"
          f" at {cfg.jar_dir})")
    if cfg.security or (cfg.security_dir / "secrets.json").is_file():
        _print_security(cfg)
    return 0 if all_up else EXIT_STOPPED


def cmd_logs(cfg: Config, args: argparse.Namespace) -> int:
    """Print (and optionally follow) the broker log."""
    print(tail(cfg.log_file, args.lines))
    if not args.follow:
        return 0
    try:
        with cfg.log_file.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            while True:
                chunk = fh.read()
                if chunk:
                    sys.stdout.write(chunk.decode(errors="replace"))
                    sys.stdout.flush()
                else:
                    time.sleep(0.5)
    except (KeyboardInterrupt, FileNotFoundError):
        return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="broker.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    try:
        kafka = f"Apache Kafka {kafka_version()} (pom.xml)"
    except (BrokerError, OSError, ET.ParseError) as exc:  # --version must still answer
        kafka = f"Kafka version unknown: {exc}"
    parser.add_argument("--version", action="version", version=f"%(prog)s: {kafka}")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the broker(s) if needed; print the bootstrap address")
    up.add_argument("--brokers", type=int, default=None, help="nodes of a local KRaft cluster (default 1)")
    up.add_argument("--security", action="store_true", default=None,
                    help="also SSL, mTLS, SASL_SSL and SASL_PLAINTEXT listeners with throwaway certificates")
    sub.add_parser("down", help="stop the broker(s) this script started")
    sub.add_parser("status", help="show state; exit 0 if running, 3 if stopped")
    logs = sub.add_parser("logs", help="print the tail of the broker log")
    logs.add_argument("-n", "--lines", type=int, default=50, help="lines to show (default 50)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    args = parser.parse_args(argv)
    handlers = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "logs": cmd_logs}
    try:
        cfg = Config.from_env(brokers=getattr(args, "brokers", None) or (None if args.command != "up" else
                                                                          _env_int("KAFKA_BROKERS", 1)),
                              security=getattr(args, "security", None))
        return handlers[args.command](cfg, args)
    except BrokerError as exc:
        print(f"[kafka] error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
