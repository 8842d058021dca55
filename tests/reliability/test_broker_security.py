"""Redis with a password, with ACL users over TLS, and signed job messages.

Every server here is a redis-server of our own on a free loopback port; certificates
and passwords are generated for the run and never written anywhere but a temp dir.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from celery.security.certificate import Certificate, FSCertStore
from celery.security.key import PrivateKey
from celery.security.serialization import SecureSerializer

from tasks import job, keys
from tasks.app import create_app
from tasks.config import Settings
from tasks.state import state_client
from tests.conftest import JOBS_DIR, PYTHON_IMAGE, ROOT, wait_for
from tests.reliability.brokers import SecureRedis, make_cert
from tests.reliability.messages import call_body, envelope, run_headers
from tests.support.services import free_port

SIGNED_QUEUE = "signed"


@pytest.fixture(scope="module")
def workdir():
    path = tempfile.mkdtemp(prefix="jobyard-security-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def certs(workdir):
    """A CA and its server certificate; a trusted signer (in the store) and a rogue one."""
    ca, ca_pair = make_cert(workdir, "ca", ca=True)
    server, _ = make_cert(workdir, "server", issuer=ca_pair)
    store = os.path.join(workdir, "trusted")
    rogue_dir = os.path.join(workdir, "rogue")
    os.makedirs(store)
    os.makedirs(rogue_dir)
    signer, _ = make_cert(store, "signer")
    rogue, _ = make_cert(rogue_dir, "rogue")
    return {"ca": ca, "server": server, "signer": signer, "store": store, "rogue": rogue, "rogue_dir": rogue_dir}


@pytest.fixture(scope="module")
def password_redis(workdir):
    password = f"pw-{secrets.token_hex(12)}"
    os.makedirs(os.path.join(workdir, "pw"))
    server = SecureRedis(free_port(), os.path.join(workdir, "pw"), ("--requirepass", password),
                         client_options={"password": password}, password=password).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_acl_redis(workdir, certs):
    """TLS only (no plain port), the default user off, one ACL user for jobyard."""
    password = f"acl-{secrets.token_hex(12)}"
    os.makedirs(os.path.join(workdir, "tls"))
    args = ("--tls-cert-file", certs["server"].cert, "--tls-key-file", certs["server"].key,
            "--tls-ca-cert-file", certs["ca"].cert, "--tls-auth-clients", "no",
            "--user", "default", "off", "--user", "jobyard", "on", f">{password}", "~*", "&*", "+@all", "-@dangerous")
    server = SecureRedis(free_port(), os.path.join(workdir, "tls"), args, password=password,
                         client_options={"username": "jobyard", "password": password, "ssl": True,
                                         "ssl_ca_certs": certs["ca"].cert}).start(tls=True)
    yield server
    server.stop()


@pytest.fixture(scope="module", autouse=True)
def servers_outlive_agents(password_redis, tls_acl_redis):
    """Set up first, so torn down last: agents stop while their broker is still there."""


def _caller(env: dict):
    """A caller app of its own, and ``sample_jobs.add`` declared on it."""
    from sample_jobs import add

    app = create_app(Settings.from_env({"JOBYARD_DEFAULT_IMAGE": PYTHON_IMAGE, **env}))
    return app, job(app=app, memory="64Mi", timeout=60)(add.fn)


def _status_output(env: dict) -> str:
    result = subprocess.run([sys.executable, "-m", "jobyard.cli", "status"], env={**os.environ, **env}, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    return result.stdout + result.stderr


def test_password_protected_redis(own_agents, password_redis):
    url = f"redis://:{password_redis.password}@127.0.0.1:{password_redis.port}/0"
    agent = own_agents.start("pw", password_redis.client(), {"JOBYARD_BROKER_URL": url})
    app, add = _caller({"JOBYARD_BROKER_URL": url})

    assert add.delay(2, 3).get(timeout=60) == 5
    with pytest.raises(redis.exceptions.AuthenticationError):
        password_redis.client(password="wrong").ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        password_redis.client(password=None).ping()
    status = _status_output({"JOBYARD_BROKER_URL": url})
    assert agent.hostname in status, status
    for text in (agent.log(), status):
        assert password_redis.password not in text


def test_acl_user_over_tls_with_the_ca_from_the_url_or_the_environment(own_agents, tls_acl_redis, certs):
    auth = f"jobyard:{tls_acl_redis.password}@127.0.0.1:{tls_acl_redis.port}"
    url_with_ca = f"rediss://{auth}/0?ssl_cert_reqs=required&ssl_ca_certs={certs['ca'].cert}"
    agent = own_agents.start("tls", tls_acl_redis.client(), {"JOBYARD_BROKER_URL": url_with_ca})
    env_ca = {"JOBYARD_BROKER_URL": f"rediss://{auth}/0", "JOBYARD_BROKER_SSL_CA": certs["ca"].cert}
    app, add = _caller(env_ca)

    assert add.delay(20, 22).get(timeout=60) == 42
    assert state_client(app.jobyard_settings).exists(keys.agent(agent.hostname))
    status = _status_output(env_ca)
    assert agent.hostname in status, status
    for text in (agent.log(), status):
        assert tls_acl_redis.password not in text


def test_tls_broker_refuses_what_it_should(tls_acl_redis, certs):
    auth = f"jobyard:{tls_acl_redis.password}@127.0.0.1:{tls_acl_redis.port}"
    no_ca = Settings.from_env({"JOBYARD_BROKER_URL": f"rediss://{auth}/0"})
    with pytest.raises(redis.exceptions.ConnectionError, match="certificate verify failed"):
        state_client(no_ca).ping()  # verified by default, unlike kombu's own default
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis.from_url(f"redis://{auth}/0", socket_timeout=1,  # plaintext to the TLS port
                             retry=Retry(NoBackoff(), 0)).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        tls_acl_redis.client(password="wrong").ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        tls_acl_redis.client(username=None, password=None).ping()  # the default user is off
    with pytest.raises(redis.exceptions.NoPermissionError):
        tls_acl_redis.client().flushall()  # the jobyard user has no dangerous commands


@pytest.fixture(scope="module")
def signing_env(certs, password_redis):
    url = f"redis://:{password_redis.password}@127.0.0.1:{password_redis.port}/0"
    return {"JOBYARD_BROKER_URL": url, "JOBYARD_SIGNING_KEY": certs["signer"].key,
            "JOBYARD_SIGNING_CERT": certs["signer"].cert, "JOBYARD_SIGNING_CERTS": certs["store"]}


@pytest.fixture(scope="module")
def signed_agent(own_agents, password_redis, signing_env):
    return own_agents.start("signed", password_redis.client(), signing_env, "--queues", SIGNED_QUEUE)


def _run_signed_caller(env: dict, code: str) -> str:
    # Signing registers Celery's 'auth' serializer process-wide, so the signed
    # caller runs in its own process and this one stays unsigned.
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env, "PYTHONPATH": f"{JOBS_DIR}:{ROOT}",
                                                                "JOBYARD_DEFAULT_IMAGE": PYTHON_IMAGE},
                            cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def test_signed_job_runs(signed_agent, signing_env):
    code = ("from sample_jobs import add; from tasks import app\n"
            "assert app.conf.task_serializer == 'auth'\n"
            f"print(add.apply_async((6, 7), queue={SIGNED_QUEUE!r}).get(timeout=60))")
    assert _run_signed_caller(signing_env, code) == "13"


def _push_and_expect_refusal(client: redis.Redis, agent, raw: bytes, task_id: str, words: str) -> None:
    before = client.llen(keys.rejected())
    client.lpush(SIGNED_QUEUE, raw)
    wait_for(lambda: client.llen(keys.rejected()) > before, timeout=15, message="the message to be refused")
    refusal = json.loads(client.lindex(keys.rejected(), 0))
    assert words in refusal["reason"], refusal["reason"]
    assert not client.exists(keys.job_facts(task_id)), "a refused message ran"
    assert agent.alive


def test_unsigned_message_is_refused(signed_agent, password_redis):
    task_id = str(uuid.uuid4())
    raw = envelope(call_body([1, 2]), run_headers(task_id), queue=SIGNED_QUEUE)
    _push_and_expect_refusal(password_redis.client(), signed_agent, raw, task_id, "content type refused")


def test_message_signed_by_an_untrusted_key_is_refused(signed_agent, password_redis, certs):
    rogue = certs["rogue"]
    with open(rogue.key) as key, open(rogue.cert) as cert:
        serializer = SecureSerializer(PrivateKey(key.read()), Certificate(cert.read()),
                                      FSCertStore(os.path.join(certs["rogue_dir"], "*.pem")), "sha256")
    task_id = str(uuid.uuid4())
    body = serializer.serialize([[1, 2], {}, {}])
    raw = envelope(body if isinstance(body, bytes) else body.encode(), run_headers(task_id),
                   content_type="application/data", queue=SIGNED_QUEUE)
    _push_and_expect_refusal(password_redis.client(), signed_agent, raw, task_id, "undecodable body")


def _held_signed_message(client: redis.Redis, signing_env: dict) -> tuple[str, dict]:
    """A signed job message, taken off a queue no agent consumes."""
    held = f"held-{uuid.uuid4().hex[:8]}"
    task_id = _run_signed_caller(signing_env, "from sample_jobs import add\n"
                                              f"print(add.apply_async((1, 1), queue={held!r}).id)")
    return task_id, json.loads(client.rpop(held))


def test_tampered_signed_body_is_refused(signed_agent, password_redis, signing_env):
    client = password_redis.client()
    task_id, message = _held_signed_message(client, signing_env)
    fields = base64.b64decode(base64.b64decode(message["body"])).split(b"\x00\x01", 4)
    assert b"[1, 1]" in fields[4]
    fields[4] = fields[4].replace(b"[1, 1]", b"[1, 9]")
    message["body"] = base64.b64encode(base64.b64encode(b"\x00\x01".join(fields))).decode()
    _push_and_expect_refusal(client, signed_agent, json.dumps(message).encode(), task_id, "undecodable body")


def test_signed_body_with_a_swapped_spec_header_is_refused(signed_agent, password_redis, signing_env):
    """Celery signs the body only; the seal binds the spec header (image, command) to it."""
    client = password_redis.client()
    task_id, message = _held_signed_message(client, signing_env)
    assert message["headers"]["jobyard_spec"]["entry"] == "sample_jobs:add"
    message["headers"]["jobyard_spec"]["entry"] = "sample_jobs:balloon"
    message["properties"]["delivery_info"]["routing_key"] = SIGNED_QUEUE
    _push_and_expect_refusal(client, signed_agent, json.dumps(message).encode(), task_id, "does not match")


def test_signed_body_without_its_seal_is_refused(signed_agent, password_redis, signing_env):
    client = password_redis.client()
    task_id, message = _held_signed_message(client, signing_env)
    del message["headers"]["jobyard_seal"]
    _push_and_expect_refusal(client, signed_agent, json.dumps(message).encode(), task_id, "no jobyard_seal")


def _soon() -> str:
    # A forged eta still to come waits in the delayed set, like any (agents hold no eta
    # job), and is refused once it comes due: soon, so the test need not wait long.
    return (datetime.now(timezone.utc) + timedelta(seconds=3)).isoformat()


#: Header tampering a Redis writer could try on a signed job: each must break its seal.
TAMPERED_HEADERS = {
    "expires": lambda headers: headers.update(expires="2000-01-01T00:00:00+00:00"),
    "retries": lambda headers: headers.update(retries=3),
    "eta": lambda headers: headers.update(eta=_soon()),
    "memory_scale": lambda headers: headers.update(jobyard_memory_scale=64.0),
    "task_id": lambda headers: headers.update(id=str(uuid.uuid4())),
}


@pytest.mark.parametrize("field", sorted(TAMPERED_HEADERS))
def test_signed_job_with_a_tampered_execution_header_is_refused(field, signed_agent, password_redis, signing_env):
    """The seal covers every header Celery or jobyard reads to decide what runs, and how."""
    client = password_redis.client()
    _, message = _held_signed_message(client, signing_env)
    message["properties"]["delivery_info"]["routing_key"] = SIGNED_QUEUE
    TAMPERED_HEADERS[field](message["headers"])
    _push_and_expect_refusal(client, signed_agent, json.dumps(message).encode(), message["headers"]["id"],
                             "does not match")


def test_signed_job_that_fails_once_retries_with_a_resealed_retry(signed_agent, password_redis, signing_env):
    """The agent re-seals the retry it sends (new retries, eta and memory scale headers)."""
    client = password_redis.client()
    refused = client.llen(keys.rejected())
    code = ("from sample_jobs import fail_before_attempt\n"
            f"print(fail_before_attempt.apply_async((2,), retries=1, retry_delay=0.1, queue={SIGNED_QUEUE!r})"
            ".get(timeout=60))")
    assert _run_signed_caller(signing_env, code) == "2"
    assert client.llen(keys.rejected()) == refused


def test_signed_dead_job_requeued_with_a_fresh_retry_budget_runs_again(signed_agent, signing_env):
    """``jobyard dead requeue`` resets the sealed retries header, so it seals the job again."""
    code = ("from sample_jobs import fail_before_attempt\n"
            f"result = fail_before_attempt.apply_async((3,), retries=1, retry_delay=0.1, queue={SIGNED_QUEUE!r})\n"
            "try:\n    result.get(timeout=60)\nexcept Exception:\n    print(result.id)")
    task_id = _run_signed_caller(signing_env, code)
    requeue = subprocess.run([sys.executable, "-m", "jobyard.cli", "dead", "requeue", task_id],
                             env={**os.environ, **signing_env}, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "requeued 1" in requeue.stdout, requeue.stdout + requeue.stderr
    code = ("import time\nfrom tasks import app\n"
            f"result = app.AsyncResult({task_id!r})\ndeadline = time.monotonic() + 30\n"
            "while result.state != 'SUCCESS' and time.monotonic() < deadline:\n    time.sleep(0.2)\n"
            "print(result.state, result.result)")
    assert _run_signed_caller(signing_env, code) == "SUCCESS 3"
