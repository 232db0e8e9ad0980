"""Throwaway TLS material and SASL users for the local broker (``broker.py up --security``).

One CA signs a broker certificate (SAN localhost and 127.0.0.1) and a client certificate (for
mTLS); everything is PEM, which Kafka 4 reads with ``ssl.keystore.type=PEM``. The SCRAM user is
added when the KRaft log dir is formatted (``StorageTool format --add-scram``); the PLAIN user is
listed in the listener's JAAS line. Files live in ``<data dir>/security`` and are made once: a
second ``up`` reuses them, so clients configured from the ``*.env`` files keep working.

Needs the ``cryptography`` package (dev extra), imported only when security is asked for.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

USERNAME = "pricing"
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
SASL_MECHANISMS = (*SCRAM_MECHANISMS, "PLAIN")
VALID_DAYS = 365


@dataclass(frozen=True)
class Ports:
    """The secured listeners' ports of one broker."""

    ssl: int          # TLS, no client certificate asked for
    mtls: int         # TLS, client certificate required (ssl.client.auth=required)
    sasl_ssl: int     # SASL (SCRAM-SHA-256/512, PLAIN) over TLS
    sasl_plaintext: int  # SASL without TLS (loopback tests only: the password crosses in clear)


@dataclass(frozen=True)
class Material:
    """Paths and secrets of the throwaway PKI and SASL user."""

    dir: Path
    username: str
    password: str
    client_key_password: str

    @property
    def ca(self) -> Path:
        """CA certificate: the clients' PRICING_KAFKA_SSL_CAFILE and the broker's truststore."""
        return self.dir / "ca.pem"

    @property
    def broker_keystore(self) -> Path:
        """Broker key (PKCS#8) followed by its certificate chain, one PEM file."""
        return self.dir / "broker.pem"

    @property
    def client_cert(self) -> Path:
        """Client certificate for mTLS (PRICING_KAFKA_SSL_CERTFILE)."""
        return self.dir / "client.pem"

    @property
    def client_key(self) -> Path:
        """Client key, encrypted (PRICING_KAFKA_SSL_KEYFILE, password in PRICING_KAFKA_SSL_KEY_PASSWORD)."""
        return self.dir / "client.key"

    def files(self) -> list[Path]:
        """Every file the material consists of."""
        return [self.ca, self.broker_keystore, self.client_cert, self.client_key, self.dir / "secrets.json"]


def ensure_material(directory: Path) -> Material:
    """Make the CA, certificates and passwords once; reuse them afterwards."""
    secrets_file = directory / "secrets.json"
    if secrets_file.is_file():
        m = Material(directory, **json.loads(secrets_file.read_text()))
        if all(p.is_file() for p in m.files()):
            return m
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    m = Material(directory, USERNAME, secrets.token_urlsafe(18), secrets.token_urlsafe(18))
    _make_pki(m)
    secrets_file.write_text(json.dumps({k: getattr(m, k) for k in
                                        ("username", "password", "client_key_password")}))
    secrets_file.chmod(0o600)
    return m


def make_ca(common_name: str) -> tuple[object, object]:
    """A self-signed CA: (private key, certificate). Tests use it for an untrusted CA too."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key: object, ca_cert: object, common_name: str, *, server: bool) -> tuple[object, object]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())  # type: ignore[attr-defined]
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                     else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if server:  # clients check the broker's name (PRICING_KAFKA_SSL_CHECK_HOSTNAME)
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]


def pem(cert: object) -> bytes:
    """A certificate as PEM bytes."""
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.PEM)  # type: ignore[attr-defined, no-any-return]


def _key_pem(key: object, password: str | None) -> bytes:
    # PKCS#8: the format both Java's PEM keystore and Python's ssl module read
    from cryptography.hazmat.primitives import serialization as ser

    enc = ser.BestAvailableEncryption(password.encode()) if password else ser.NoEncryption()
    return key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, enc)  # type: ignore[attr-defined, no-any-return]


def _make_pki(m: Material) -> None:
    ca_key, ca_cert = make_ca("pricing-streams local test CA")
    b_key, b_cert = _leaf(ca_key, ca_cert, "localhost", server=True)
    c_key, c_cert = _leaf(ca_key, ca_cert, "pricing-client", server=False)
    m.ca.write_bytes(pem(ca_cert))
    # Kafka's PEM keystore decrypts keys only with the legacy PBES1 ciphers (SecretKeyFactory has no
    # "PBES2"), so the broker key stays unencrypted, readable by its owner only (chmod 600 below)
    m.broker_keystore.write_bytes(_key_pem(b_key, None) + pem(b_cert) + pem(ca_cert))
    m.client_cert.write_bytes(pem(c_cert))
    m.client_key.write_bytes(_key_pem(c_key, m.client_key_password))
    for path in (m.broker_keystore, m.client_key):
        path.chmod(0o600)


def listeners(ports: Ports) -> dict[str, tuple[str, int]]:
    """Listener name -> (security protocol, port), in addition to PLAINTEXT and CONTROLLER."""
    return {"SSL": ("SSL", ports.ssl), "MTLS": ("SSL", ports.mtls),
            "SASL_SSL": ("SASL_SSL", ports.sasl_ssl), "SASL_PLAINTEXT": ("SASL_PLAINTEXT", ports.sasl_plaintext)}


def server_properties(m: Material) -> str:
    """The server.properties lines for the secured listeners (appended to the rendered template)."""
    plain_jaas = (f'org.apache.kafka.common.security.plain.PlainLoginModule required '
                  f'user_{m.username}="{m.password}";')
    scram_jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    lines = [
        "# --- secured listeners (broker.py --security); material in " + str(m.dir),
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={m.broker_keystore}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={m.ca}",
        "listener.name.ssl.ssl.client.auth=none",
        "listener.name.mtls.ssl.client.auth=required",
    ]
    for listener in ("sasl_ssl", "sasl_plaintext"):
        lines.append(f"listener.name.{listener}.sasl.enabled.mechanisms={','.join(SASL_MECHANISMS)}")
        lines.append(f"listener.name.{listener}.plain.sasl.jaas.config={plain_jaas}")
        for mech in SCRAM_MECHANISMS:
            lines.append(f"listener.name.{listener}.{mech.lower()}.sasl.jaas.config={scram_jaas}")
    return "\n".join(lines) + "\n"


def scram_format_args(m: Material) -> list[str]:
    """StorageTool format arguments that create the SCRAM user in the new metadata log."""
    out: list[str] = []
    for mech in SCRAM_MECHANISMS:
        out += ["--add-scram", f"{mech}=[name={m.username},password={m.password}]"]
    return out


def client_envs(m: Material, ports: Ports, host: str) -> dict[str, dict[str, str]]:
    """PRICING_* settings for each secured listener, ready to export."""
    tls = {"PRICING_KAFKA_SSL_CAFILE": str(m.ca)}
    sasl = {"PRICING_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "PRICING_KAFKA_SASL_USERNAME": m.username,
            "PRICING_KAFKA_SASL_PASSWORD": m.password}
    return {
        "ssl": {"PRICING_KAFKA_BOOTSTRAP": f"{host}:{ports.ssl}", "PRICING_KAFKA_SECURITY_PROTOCOL": "SSL", **tls},
        "mtls": {"PRICING_KAFKA_BOOTSTRAP": f"{host}:{ports.mtls}", "PRICING_KAFKA_SECURITY_PROTOCOL": "SSL", **tls,
                 "PRICING_KAFKA_SSL_CERTFILE": str(m.client_cert), "PRICING_KAFKA_SSL_KEYFILE": str(m.client_key),
                 "PRICING_KAFKA_SSL_KEY_PASSWORD": m.client_key_password},
        "sasl_ssl": {"PRICING_KAFKA_BOOTSTRAP": f"{host}:{ports.sasl_ssl}",
                     "PRICING_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", **tls, **sasl},
        "sasl_plaintext": {"PRICING_KAFKA_BOOTSTRAP": f"{host}:{ports.sasl_plaintext}",
                           "PRICING_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", **sasl},
    }


def write_client_envs(m: Material, ports: Ports, host: str) -> dict[str, Path]:
    """Write ``<name>.env`` files (``set -a; . ssl.env``) and return their paths."""
    out: dict[str, Path] = {}
    for name, env in client_envs(m, ports, host).items():
        path = m.dir / f"{name}.env"
        path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        path.chmod(0o600)
        out[name] = path
    return out
