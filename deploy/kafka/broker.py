#!/usr/bin/env python3
"""Run a single-node Apache Kafka broker (KRaft) from Maven Central jars.

    broker.py up       start the broker (idempotent), print the bootstrap address last
    broker.py down     stop the broker this script started
    broker.py status   running/stopped, pid, bootstrap, data dir (exit 0 running, 3 stopped)
    broker.py logs     tail of the broker log (-n LINES, -f to follow)

No Docker and no tarball: `mvn dependency:copy-dependencies` on deploy/kafka/pom.xml assembles
the broker classpath once into a cache outside the repository, and `java kafka.Kafka` runs it.

Environment (all optional):
    KAFKA_PORT             client (PLAINTEXT) port                 default 19092
    KAFKA_CONTROLLER_PORT  KRaft controller port                   default 19093
    KAFKA_DATA_DIR         log dirs, rendered config, pid, log     default <repo>/var/kafka
    KAFKA_HEAP             JVM heap (-Xmx/-Xms)                    default 512m
    KAFKA_AUTO_CREATE_TOPICS  auto.create.topics.enable            default false
    KAFKA_START_TIMEOUT    seconds to wait for the broker to answer default 90
    XDG_CACHE_HOME         jar cache lives in $XDG_CACHE_HOME/pricing-kafka/<version>/jars
                           (default ~/.cache/...)
The Kafka version is fixed by pom.xml. Only the standard library is used; if kafka-python is
importable the readiness check is a real metadata request, otherwise a TCP connect.
"""

from __future__ import annotations

import argparse
import hashlib
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
class Config:
    """Everything `up`/`down`/`status` need, read once from the environment."""

    version: str
    port: int
    controller_port: int
    data_dir: Path
    heap: str
    auto_create_topics: bool
    start_timeout: float
    jar_dir: Path

    @classmethod
    def from_env(cls) -> Config:
        """Read and validate the KAFKA_* environment variables."""
        version = kafka_version()
        cache_root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        data_dir = Path(os.environ.get("KAFKA_DATA_DIR") or REPO / "var" / "kafka")
        port = _env_int("KAFKA_PORT", 19092)
        controller_port = _env_int("KAFKA_CONTROLLER_PORT", 19093)
        if port == controller_port:
            raise BrokerError("KAFKA_PORT and KAFKA_CONTROLLER_PORT must differ")
        heap = os.environ.get("KAFKA_HEAP", "").strip() or "512m"
        timeout = float(os.environ.get("KAFKA_START_TIMEOUT", "").strip() or 90)
        return cls(
            version=version,
            port=port,
            controller_port=controller_port,
            data_dir=data_dir.resolve(),
            heap=heap,
            auto_create_topics=_env_bool("KAFKA_AUTO_CREATE_TOPICS", False),
            start_timeout=timeout,
            jar_dir=(cache_root / "pricing-kafka" / version / "jars").resolve(),
        )

    @property
    def bootstrap(self) -> str:
        """Client bootstrap address."""
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


def _read_pid(cfg: Config) -> int | None:
    try:
        return int(cfg.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _is_our_broker(pid: int, cfg: Config) -> bool:
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
    return "kafka.Kafka" in args and str(cfg.properties) in args


def running_pid(cfg: Config) -> int | None:
    """Pid of the broker this script started, if it is still alive."""
    pid = _read_pid(cfg)
    if pid is not None and _is_our_broker(pid, cfg):
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


def render_properties(cfg: Config) -> None:
    """Fill server.properties.template into the data dir."""
    text = string.Template(TEMPLATE.read_text()).substitute(
        port=cfg.port,
        controller_port=cfg.controller_port,
        log_dirs=cfg.log_dirs,
        auto_create_topics=str(cfg.auto_create_topics).lower(),
    )
    cfg.properties.write_text(text)


def java_bin() -> str:
    """The java executable: $JAVA_HOME/bin/java, else java on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise BrokerError("java not found (set JAVA_HOME or put java on PATH; JDK 17+)")
    return java


def format_storage(cfg: Config, java: str) -> None:
    """Format the KRaft log dir with a fresh cluster id, once."""
    if (cfg.log_dirs / "meta.properties").is_file():
        return
    cluster_id = base64_uuid()
    info(f"formatting {cfg.log_dirs} (cluster id {cluster_id})")
    cmd = [java, "-cp", f"{cfg.jar_dir}/*", f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
           "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(cfg.properties)]
    result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0:
        raise BrokerError(f"StorageTool format failed:\n{result.stdout}{result.stderr}")


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


def wait_ready(cfg: Config, proc: subprocess.Popen[bytes] | None, pid: int) -> None:
    """Block until the broker answers, it dies, or the start timeout passes."""
    deadline = time.monotonic() + cfg.start_timeout
    while time.monotonic() < deadline:
        exited = proc.poll() is not None if proc is not None else not _is_our_broker(pid, cfg)
        if exited:
            cfg.pid_file.unlink(missing_ok=True)
            raise BrokerError(f"broker exited during start-up; log tail:\n{tail(cfg.log_file)}")
        if port_open(cfg.port) and broker_answers(cfg.bootstrap):
            return
        time.sleep(0.5)
    raise BrokerError(
        f"broker (pid {pid}) did not answer on {cfg.bootstrap} within {cfg.start_timeout:.0f}s; "
        f"it is left running (`broker.py down` stops it); log tail:\n{tail(cfg.log_file)}"
    )


def cmd_up(cfg: Config, _args: argparse.Namespace) -> int:
    """Start the broker unless ours is already running; print the bootstrap address."""
    pid = running_pid(cfg)
    if pid is not None:
        info(f"broker already running (pid {pid}), waiting until it answers")
        wait_ready(cfg, None, pid)
        print(cfg.bootstrap)
        return 0
    for port in (cfg.port, cfg.controller_port):
        if port_open(port):
            raise BrokerError(f"port {port} is in use by a process this script did not start "
                              f"(set KAFKA_PORT / KAFKA_CONTROLLER_PORT or stop it)")
    ensure_jars(cfg)
    java = java_bin()
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    render_properties(cfg)
    format_storage(cfg, java)
    if cfg.log_file.exists() and cfg.log_file.stat().st_size > LOG_ROTATE_BYTES:
        cfg.log_file.replace(cfg.log_file.with_suffix(".log.1"))
    cmd = [
        java, f"-Xmx{cfg.heap}", f"-Xms{cfg.heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}", f"-Dkafka.logs.dir={cfg.data_dir}",
        "-cp", f"{cfg.jar_dir}/*", "kafka.Kafka", str(cfg.properties),
    ]
    with cfg.log_file.open("ab") as log:
        log.write(f"\n===== broker.py up {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n".encode())
        log.flush()
        # Own session: the broker survives the shell (and make) that started it.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=cfg.data_dir, start_new_session=True)
    cfg.pid_file.write_text(f"{proc.pid}\n")
    info(f"started Kafka {cfg.version} (pid {proc.pid}), log {cfg.log_file}")
    started = time.monotonic()
    wait_ready(cfg, proc, proc.pid)
    info(f"broker answers on {cfg.bootstrap} after {time.monotonic() - started:.1f}s")
    print(cfg.bootstrap)
    return 0


def cmd_down(cfg: Config, _args: argparse.Namespace) -> int:
    """SIGTERM our broker, SIGKILL after 30 s."""
    pid = running_pid(cfg)
    if pid is None:
        cfg.pid_file.unlink(missing_ok=True)
        info("no broker started by this script is running")
        return 0
    info(f"stopping broker (pid {pid})")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _is_our_broker(pid, cfg):
        time.sleep(0.2)
    if _is_our_broker(pid, cfg):
        info("still running after 30s, sending SIGKILL")
        os.kill(pid, signal.SIGKILL)
        while _is_our_broker(pid, cfg):
            time.sleep(0.1)
    cfg.pid_file.unlink(missing_ok=True)
    info("stopped")
    return 0


def cmd_status(cfg: Config, _args: argparse.Namespace) -> int:
    """Print the state; exit 0 if running, 3 if stopped."""
    pid = running_pid(cfg)
    state = "running" if pid is not None else "stopped"
    if pid is not None and not port_open(cfg.port):
        state = "starting (process alive, port not answering)"
    print(f"state:      {state}")
    print(f"pid:        {pid if pid is not None else '-'}")
    print(f"bootstrap:  {cfg.bootstrap}")
    print(f"data dir:   {cfg.data_dir}")
    print(f"log:        {cfg.log_file}")
    print(f"kafka:      {cfg.version} (jars {'cached' if jars_ready(cfg) else 'not fetched'}"
          f" at {cfg.jar_dir})")
    return 0 if pid is not None else EXIT_STOPPED


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
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the broker if needed; print the bootstrap address")
    sub.add_parser("down", help="stop the broker this script started")
    sub.add_parser("status", help="show state; exit 0 if running, 3 if stopped")
    logs = sub.add_parser("logs", help="print the tail of the broker log")
    logs.add_argument("-n", "--lines", type=int, default=50, help="lines to show (default 50)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    args = parser.parse_args(argv)
    handlers = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "logs": cmd_logs}
    try:
        return handlers[args.command](Config.from_env(), args)
    except BrokerError as exc:
        print(f"[kafka] error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
