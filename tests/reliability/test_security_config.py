"""TLS URL completion, signing configuration and job seals (no services)."""

import pytest
from celery.exceptions import ImproperlyConfigured

from tasks.config import Settings, redact
from tasks.security import Sealer, Signing, tls_url
from tests.reliability.brokers import make_cert

pytestmark = pytest.mark.pure

ENV = {"JOBYARD_BROKER_SSL_CA": "/etc/jobyard/ca.pem", "JOBYARD_BROKER_SSL_CERT": "/c.pem",
       "JOBYARD_BROKER_SSL_KEY": "/k.pem"}


@pytest.mark.parametrize("url, env, expected", [
    ("redis://h:1/0", ENV, "redis://h:1/0"),
    ("rediss://h:1/0", {}, "rediss://h:1/0?ssl_cert_reqs=required"),
    ("rediss://h:1/0", {"JOBYARD_BROKER_SSL_CA": "/ca.pem"}, "rediss://h:1/0?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required"),
    ("rediss://h:1/0?ssl_ca_certs=/mine.pem", {"JOBYARD_BROKER_SSL_CA": "/ca.pem"},
     "rediss://h:1/0?ssl_ca_certs=/mine.pem&ssl_cert_reqs=required"),
    ("rediss://h:1/0?ssl_cert_reqs=CERT_NONE", {}, "rediss://h:1/0?ssl_cert_reqs=none"),
    ("rediss://h:1/0", {"JOBYARD_BROKER_SSL_VERIFY": "optional"}, "rediss://h:1/0?ssl_cert_reqs=optional"),
])
def test_tls_url(url, env, expected):
    assert tls_url(url, env) == expected


def test_tls_options_reach_the_result_backend_too():
    settings = Settings.from_env({"JOBYARD_BROKER_URL": "rediss://u:secret@h:1/0", **ENV})
    for url in (settings.broker_url, settings.result_backend):
        assert "ssl_ca_certs=/etc/jobyard/ca.pem" in url and "ssl_certfile=/c.pem" in url
        assert "secret" not in redact(url)


def test_bad_verify_mode_is_refused():
    with pytest.raises(ImproperlyConfigured):
        tls_url("rediss://h:1/0", {"JOBYARD_BROKER_SSL_VERIFY": "maybe"})


def test_signing_needs_all_three_paths():
    assert Signing.from_env({}) is None
    with pytest.raises(ImproperlyConfigured, match="JOBYARD_SIGNING_CERTS"):
        Signing.from_env({"JOBYARD_SIGNING_KEY": "/k", "JOBYARD_SIGNING_CERT": "/c"})


@pytest.fixture
def sealers(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "other").mkdir()
    signer, _ = make_cert(str(tmp_path / "store"), "signer")
    other, _ = make_cert(str(tmp_path / "other"), "other")
    trusted = Sealer(Signing(signer.key, signer.cert, str(tmp_path / "store")))
    untrusted = Sealer(Signing(other.key, other.cert, str(tmp_path / "other")))
    return trusted, untrusted


HEADERS = {"id": "t-1", "task": "jobyard.run", "jobyard_spec": {"name": "a.b", "entry": "m:f"}}
BODY = ((1, 2.5, "x"), {"k": [1]}, {"callbacks": None})


def test_a_seal_holds_for_its_own_message_only(sealers):
    trusted, untrusted = sealers
    headers = {**HEADERS, "jobyard_seal": trusted.seal(HEADERS, BODY)}
    assert trusted.problem(headers, [[1, 2.5, "x"], {"k": [1]}, {"callbacks": None}]) is None
    assert "does not match" in trusted.problem(headers, [[1, 2.5, "y"], {"k": [1]}, {"callbacks": None}])
    swapped = {**headers, "jobyard_spec": {"name": "a.b", "entry": "m:g"}}
    assert "does not match" in trusted.problem(swapped, BODY)
    assert "does not match" in trusted.problem({**headers, "id": "t-2"}, BODY)
    assert "no jobyard_seal" in trusted.problem(HEADERS, BODY)
    forged = {**HEADERS, "jobyard_seal": untrusted.seal(HEADERS, BODY)}
    assert "does not match" in trusted.problem(forged, BODY)
