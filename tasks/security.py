"""Broker security: TLS to Redis and signed job messages, configured from the environment.

TLS. A ``rediss://`` broker or result-backend URL gets its TLS options from its
own query (``?ssl_cert_reqs=required&ssl_ca_certs=/path/ca.pem``) or, for each
option the query leaves out, from ``JOBYARD_BROKER_SSL_CA``, ``JOBYARD_BROKER_SSL_CERT``,
``JOBYARD_BROKER_SSL_KEY`` and ``JOBYARD_BROKER_SSL_VERIFY`` (required | optional |
none; default required). The options are written into the URL itself, so Celery,
kombu and every plain Redis client built from the URL agree. (kombu alone would
connect to a ``rediss://`` URL without options *without* checking the server's
certificate.)

Signing. With ``JOBYARD_SIGNING_KEY`` (PEM private key), ``JOBYARD_SIGNING_CERT``
(its certificate) and ``JOBYARD_SIGNING_CERTS`` (a directory of ``*.pem`` files, or
a glob, holding the certificates of every trusted signer) set, job and control messages are signed
with Celery's ``auth`` serializer and an agent accepts nothing else. Every
jobyard process that sends or takes jobs needs all three.

Celery signs a message's body only, and what decides whether and how a job runs
travels in headers: its spec (image, command), task id and name, Celery's retries,
eta, expires, time limits and stamps, jobyard's memory scale. So a signed job also
carries a seal, the ``jobyard_seal`` header: a signature over its body and every
header but :data:`UNSEALED_HEADERS`. An agent refuses a job whose seal is missing or
does not match (see ``executor.intake``); an agent's retry is sealed as it is sent.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from celery.exceptions import ImproperlyConfigured

from .names import SPEC_HEADER

#: URL query option -> environment variable that supplies it when the URL does not.
TLS_OPTIONS = {
    "ssl_cert_reqs": "JOBYARD_BROKER_SSL_VERIFY",
    "ssl_ca_certs": "JOBYARD_BROKER_SSL_CA",
    "ssl_certfile": "JOBYARD_BROKER_SSL_CERT",
    "ssl_keyfile": "JOBYARD_BROKER_SSL_KEY",
}
VERIFY_MODES = ("required", "optional", "none")
SIGNING_VARIABLES = ("JOBYARD_SIGNING_KEY", "JOBYARD_SIGNING_CERT", "JOBYARD_SIGNING_CERTS")


def tls_url(url: str, environ: Mapping[str, str]) -> str:
    """``url`` with its TLS options complete, if it is a ``rediss://`` URL."""
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return url
    query = dict(parse_qsl(parts.query))
    for option, variable in TLS_OPTIONS.items():
        if not query.get(option) and environ.get(variable):
            query[option] = environ[variable]
    query.setdefault("ssl_cert_reqs", "required")
    mode = query["ssl_cert_reqs"].lower().removeprefix("cert_")
    if mode not in VERIFY_MODES:
        raise ImproperlyConfigured(f"ssl_cert_reqs / JOBYARD_BROKER_SSL_VERIFY must be one of {VERIFY_MODES}")
    query["ssl_cert_reqs"] = mode
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query, safe="/"), parts.fragment))


@dataclass(frozen=True)
class Signing:
    """Where the signing key, its certificate and the trusted certificates are."""

    key: str
    cert: str
    certs: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "Signing | None":
        """Signing paths from ``JOBYARD_SIGNING_*``; None when none is set."""
        values = [environ.get(name) for name in SIGNING_VARIABLES]
        if not any(values):
            return None
        missing = [name for name, value in zip(SIGNING_VARIABLES, values) if not value]
        if missing:
            raise ImproperlyConfigured(f"message signing needs {', '.join(missing)} as well")
        return cls(*values)

    @property
    def store(self) -> str:
        """The trusted certificates as a glob: a directory means its ``*.pem`` files."""
        return os.path.join(self.certs, "*.pem") if os.path.isdir(self.certs) else self.certs


def apply(celery_app, settings) -> None:
    """Turn on message signing for ``celery_app`` if ``settings`` ask for it."""
    signing = settings.signing
    if signing is None:
        return
    from celery.signals import before_task_publish
    from kombu.serialization import registry

    celery_app.conf.update(task_serializer="auth", accept_content=["auth"], security_key=signing.key,
                           security_certificate=signing.cert, security_cert_store=signing.store,
                           security_digest="sha256")
    celery_app.setup_security(allowed_serializers=["json"], serializer="json")
    # setup_security registers 'auth' process-wide; a second call (another app in
    # this process) disables it again before re-registering, so enable it here.
    registry.enable("auth")
    celery_app.jobyard_sealer = Sealer(signing)
    before_task_publish.connect(celery_app.jobyard_sealer.on_publish, weak=False)


SEAL_HEADER = "jobyard_seal"
#: The only headers a seal leaves out: the seal itself and kombu's mark on a restored
#: message, which changes on redelivery. Every other header is sealed, whatever its
#: name, so a header added later (array index, team) is sealed without a change here.
#: The envelope's properties (delivery tag, delivery info, priority, body encoding)
#: are kombu's transport bookkeeping and are not sealed either.
UNSEALED_HEADERS = frozenset({SEAL_HEADER, "redelivered"})


class Sealer:
    """Seals jobs' headers to their bodies with the signing key, and checks seals."""

    def __init__(self, signing: Signing):
        from celery.security.certificate import Certificate, FSCertStore
        from celery.security.key import PrivateKey
        from celery.security.utils import get_digest_algorithm

        with open(signing.key) as key, open(signing.cert) as cert:
            self.key, self.cert = PrivateKey(key.read()), Certificate(cert.read())
        self.store = FSCertStore(signing.store)
        self.digest = get_digest_algorithm("sha256")

    def seal(self, headers: dict, body: Any) -> dict:
        """The seal for a message with these headers and (decoded) body."""
        signature = self.key.sign(_sealed(headers, body), self.digest)
        return {"signer": self.cert.get_id(), "signature": base64.b64encode(signature).decode()}

    def problem(self, headers: dict, body: Any) -> str | None:
        """Why the message's seal does not hold, or None when a trusted signer sealed it."""
        seal = headers.get(SEAL_HEADER)
        if not isinstance(seal, dict) or not all(isinstance(seal.get(k), str) for k in ("signer", "signature")):
            return f"no {SEAL_HEADER} header: the spec is not signed"
        try:
            self.store[seal["signer"]].verify(_sealed(headers, body), base64.b64decode(seal["signature"]),
                                              self.digest)
        except Exception as exc:  # noqa: BLE001 - any failure to verify is a refusal
            return f"{SEAL_HEADER} does not match the message ({type(exc).__name__})"
        return None

    def reseal(self, payload: dict, **changes: Any) -> str | None:
        """Change headers of a sealed raw kombu ``payload`` and seal it again; why it cannot be, or None.

        The payload's own seal and signed body must hold first, so only what a trusted
        signer sealed is sealed again (a dead letter's stored message may be tampered with).
        """
        headers = payload.get("headers")
        if not isinstance(headers, dict):
            return "no headers object"
        try:
            body = _signed_body(payload)
        except Exception as exc:  # noqa: BLE001 - any failure to verify is a refusal
            return f"its signed body does not verify ({type(exc).__name__})"
        problem = self.problem(headers, body)
        if problem is None:
            headers.update(changes)
            headers[SEAL_HEADER] = self.seal(headers, body)
        return problem

    def on_publish(self, sender=None, body=None, headers=None, **_):
        """``before_task_publish`` receiver: seal every job this process sends."""
        if headers is not None and SPEC_HEADER in headers:
            headers[SEAL_HEADER] = self.seal(headers, body)


def _sealed(headers: dict, body: Any) -> bytes:
    from kombu.utils.json import dumps

    content = {"headers": {name: value for name, value in headers.items() if name not in UNSEALED_HEADERS},
               "body": list(body) if isinstance(body, (list, tuple)) else body}
    return dumps(content, sort_keys=True, separators=(",", ":")).encode()


def _signed_body(payload: dict) -> Any:
    """The decoded body of a raw kombu Redis ``payload``, its signature checked by Celery's serializer."""
    from kombu.serialization import loads

    body = payload["body"]
    if (payload.get("properties") or {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    content_type = payload.get("content-type")
    return loads(body, content_type, payload.get("content-encoding") or "utf-8", accept=[content_type])
