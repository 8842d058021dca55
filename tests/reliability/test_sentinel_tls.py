"""A Sentinel set that speaks TLS only: callers, an agent with real containers, the state
reads and a failover, with the TLS options in the Sentinel URL's query (README, *High
availability*).

A primary, a replica and three sentinels of our own on loopback, each with a TLS port
and no plain one, certificates from a throwaway CA; replication and the sentinels'
links to the servers are TLS too (``tls-replication yes``).
"""

from __future__ import annotations

import os
import signal
import urllib.parse

import pytest

from tasks import job
from tasks.app import create_app
from tasks.clients import broker_client
from tasks.config import Settings
from tasks.state import state_client
from tests.conftest import PYTHON_IMAGE, wait_for
from tests.reliability.brokers import SecureRedis, make_cert
from tests.support.services import free_port, temp_dir
from tests.support.sentinel import MASTER, SentinelProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tls_set():
    """(sentinel URL, primary, replica, sentinels), TLS only."""
    root = temp_dir("jobyard-sentinel-tls-")
    ca, issuer = make_cert(root, "ca", ca=True)
    server, _ = make_cert(root, "server", issuer=issuer)
    files = {"tls-cert-file": server.cert, "tls-key-file": server.key, "tls-ca-cert-file": ca.cert,
             "tls-auth-clients": "no", "tls-replication": "yes"}
    args = tuple(item for name, value in files.items() for item in (f"--{name}", value))
    client = {"ssl": True, "ssl_ca_certs": ca.cert, "ssl_cert_reqs": "required"}
    primary = SecureRedis(free_port(), os.path.join(root, "primary"), args, client_options=client)
    os.makedirs(primary.workdir)
    primary.start(tls=True)
    replica = SecureRedis(free_port(), os.path.join(root, "replica"),
                          args + ("--replicaof", "127.0.0.1", str(primary.port)), client_options=client)
    os.makedirs(replica.workdir)
    replica.start(tls=True)
    wait_for(lambda: any(isinstance(v, dict) and v.get("state") == "online"
                         for v in primary.client().info("replication").values()),
             timeout=20, message="the replica in sync over TLS")
    sentinels = [SentinelProcess(port, os.path.join(root, f"s{port}"), tls_config=files, tls_client=client)
                 .start(primary.port) for port in (free_port(), free_port(), free_port())]
    wait_for(lambda: all(int(s.client().sentinel_master(MASTER)["num-other-sentinels"]) == 2 for s in sentinels),
             timeout=20, message="the sentinels to find each other over TLS")
    query = urllib.parse.urlencode({"ssl_cert_reqs": "required", "ssl_ca_certs": ca.cert})
    url = ";".join(f"sentinel://127.0.0.1:{s.port}/0" + (f"?{query}" if i == 0 else "")
                   for i, s in enumerate(sentinels))
    yield url, primary, replica, sentinels
    for process in (*sentinels, replica, primary):
        process.stop()


def test_callers_and_an_agent_work_through_a_tls_only_sentinel_set_and_its_failover(tls_set, own_agents):
    import gc

    from sample_jobs import add

    url, primary, replica, sentinels = tls_set
    env = {"JOBYARD_BROKER_URL": url, "JOBYARD_LEASE_SECONDS": "6", "JOBYARD_DEFAULT_IMAGE": PYTHON_IMAGE}
    settings = Settings.from_env(env)
    app = create_app(settings)
    adder = job(app=app, memory="64Mi", cpus=0.25, timeout=60)(add.fn)
    agent = own_agents.start("sentinel-tls", broker_client(settings), env, "--cpus", "2", "--memory", "1Gi")
    try:
        assert adder.delay(2, 3).get(timeout=60) == 5
        assert state_client(settings).exists(f"jobyard:agent:{agent.hostname}")
        # The primary dies; the sentinels promote the replica, over TLS.
        os.kill(primary.process.pid, signal.SIGKILL)
        primary.process.wait()
        assert adder.delay(20, 22).get(timeout=90) == 42
        promoted = sentinels[0].client().sentinel_get_master_addr_by_name(MASTER)
        assert int(promoted[1]) == replica.port, promoted
        assert agent.alive, agent.log()[-3000:]
    finally:
        gc.collect()  # results unsubscribe while the set runs
        app.close()
