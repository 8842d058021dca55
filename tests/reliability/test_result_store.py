"""A result backend of its own that refuses writes: a job whose outcome was not stored is not lost.

Broker and result backend are two redis-servers of our own. The backend refuses
writes with OOM errors (``maxmemory 1``, ``noeviction``) until the test lets it
accept again; the job's message must stay recorded until its outcome is stored.
"""

from __future__ import annotations

import os

import pytest

from tasks import job
from tasks.app import create_app
from tasks.config import Settings
from tests.conftest import PYTHON_IMAGE, wait_for
from tests.support.services import RedisServer, free_port, temp_dir


@pytest.fixture(scope="module")
def split_redis():
    """Broker and result backend on two servers; set up first, so torn down after the agents."""
    root = temp_dir("jobyard-split-")
    broker = RedisServer(free_port(), os.path.join(root, "broker")).start()
    backend = RedisServer(free_port(), os.path.join(root, "backend")).start()
    yield broker, backend
    broker.stop()
    backend.stop()


def _oom_errors(client) -> int:
    return int(client.info("errorstats").get("errorstat_OOM", {}).get("count", 0))


def test_job_whose_outcome_was_not_stored_comes_back_with_the_lease(split_redis, own_agents):
    import redis
    from sample_jobs import add

    broker, backend = split_redis
    env = {"JOBYARD_BROKER_URL": broker.url, "JOBYARD_RESULT_BACKEND": f"redis://127.0.0.1:{backend.port}/1",
           "JOBYARD_LEASE_SECONDS": "3"}
    results = redis.Redis(port=backend.port)
    own_agents.start("store", redis.Redis(port=broker.port), env, "--max-jobs", "1")
    app = create_app(Settings.from_env({"JOBYARD_DEFAULT_IMAGE": PYTHON_IMAGE, **env}))
    add_here = job(app=app, memory="64Mi", timeout=60)(add.fn)

    results.config_set("maxmemory-policy", "noeviction")
    results.config_set("maxmemory", 1)
    try:
        first = add_here.delay(2, 3)
        wait_for(lambda: _oom_errors(results) > 0, timeout=30, message="the backend to refuse a write")
    finally:
        results.config_set("maxmemory", 0)
    assert first.get(timeout=30) == 5, "the job whose STARTED write failed was lost"
    # One job at a time: a slot the refused delivery kept would stop this one.
    assert add_here.delay(4, 4).get(timeout=30) == 8


def test_an_outcome_stored_while_redis_restarts_is_stored_once_it_is_back():
    # Celery reads the stored state before it writes an outcome (it never overwrites
    # SUCCESS), and only the write retried: the read raised ConnectionError, and
    # Celery's tracer then stored that error as the finished job's FAILURE.
    import threading
    import uuid

    from celery.states import SUCCESS

    root = temp_dir("jobyard-restarting-")
    server = RedisServer(free_port(), root, ("--appendonly", "yes", "--appendfsync", "always")).start()
    app = create_app(Settings.from_env({"JOBYARD_BROKER_URL": server.url}))
    task_id = str(uuid.uuid4())
    try:
        app.backend.client.ping()
        server.kill()
        back = threading.Timer(1.5, server.start)
        back.start()
        app.backend.store_result(task_id, {"value": 5}, SUCCESS)
        back.join()
        meta = app.backend.get_task_meta(task_id)
        assert (meta["status"], meta["result"]) == (SUCCESS, {"value": 5})
    finally:
        server.stop()
