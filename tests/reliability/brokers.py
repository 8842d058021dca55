"""Secured redis-servers of our own (password, ACL users, TLS) and throwaway certificates."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.support.services import RedisServer, free_port


@dataclass
class KeyPair:
    """A PEM key and certificate written to files."""

    key: str
    cert: str


def make_cert(directory: str, name: str, issuer: tuple | None = None, ca: bool = False) -> tuple[KeyPair, tuple]:
    """Write ``name``.key/.pem into ``directory``; signed by ``issuer`` (key, cert) or self-signed."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_key, signer_cert = issuer or (key, None)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(signer_cert.subject if signer_cert else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(signer_key, hashes.SHA256())
    pair = KeyPair(os.path.join(directory, f"{name}.key"), os.path.join(directory, f"{name}.pem"))
    with open(pair.key, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    os.chmod(pair.key, 0o600)
    with open(pair.cert, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    return pair, (key, cert)


@dataclass
class SecureRedis(RedisServer):
    """Our own redis-server whose readiness is checked with its own credentials and TLS."""

    client_options: dict = field(default_factory=dict)
    password: str = ""

    def start(self, tls: bool = False, timeout: float = 10.0) -> "SecureRedis":
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (run: bash deploy/setup.sh test)")
        port_args = ("--port", "0", "--tls-port", str(self.port)) if tls else ("--port", str(self.port))
        self.process = subprocess.Popen(
            [binary, *port_args, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.workdir,
             *self.args], stdout=open(os.path.join(self.workdir, "redis.log"), "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.exceptions.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"secured redis-server did not start on port {self.port}")

    def client(self, **overrides) -> redis.Redis:
        """A client with the server's own credentials (and TLS options), or ``overrides``."""
        options = {"socket_timeout": 2, "retry": Retry(NoBackoff(), 0), **self.client_options, **overrides}
        return redis.Redis(host="127.0.0.1", port=self.port, **options)
