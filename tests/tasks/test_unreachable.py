"""A caller whose Redis is down: the send fails within the publish retries with a typed
error that names the task id to send again; a result store that is down does not hold
up the send at all."""

from __future__ import annotations

import time
import uuid

import pytest
from kombu.exceptions import OperationalError

from tasks.app import create_app
from tasks.config import Settings
from tasks.errors import BrokerUnavailable, JobError, JobyardError, PublishFailed
from tasks.job import job
from tasks.names import RUN_TASK
from tests.support.services import free_port

QUEUE = "jobyard-test-unreachable"


def double(x):
    return 2 * x


def dead_url(db: int = 0) -> str:
    return f"redis://127.0.0.1:{free_port()}/{db}"


@pytest.fixture
def app_on(request):
    """``app_on(broker_url, result_backend=None)``: a caller's app, closed after the test."""
    apps = []

    def make(broker_url: str, result_backend: str | None = None):
        environ = {"JOBYARD_BROKER_URL": broker_url, "JOBYARD_DEFAULT_IMAGE": "jobyard-test/python:latest"}
        if result_backend:
            environ["JOBYARD_RESULT_BACKEND"] = result_backend
        apps.append(create_app(Settings.from_env(environ)))
        return apps[-1]

    yield make
    for app in apps:
        app.close()


def test_a_send_to_a_broker_that_is_down_fails_at_once_naming_the_task_id(app_on):
    app = app_on(dead_url())
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as raised:
        job(double, app=app).apply_async((2,), queue=QUEUE)
    took = time.monotonic() - started
    assert took < 5, f"the caller waited {took:.1f} s"
    error = raised.value
    assert isinstance(error, PublishFailed) and isinstance(error, JobyardError) and not isinstance(error, JobError)
    assert isinstance(error, OperationalError)  # what a Celery caller already catches
    task_id = error.details["task_id"]
    assert uuid.UUID(task_id) and task_id in str(error)
    assert "test_unreachable.double" in str(error)


def test_a_send_that_names_its_task_id_gets_it_back_in_the_error(app_on):
    app = app_on(dead_url())
    with pytest.raises(BrokerUnavailable) as raised:
        app.send_task(RUN_TASK, (1,), task_id="resend-me-1", queue=QUEUE)
    assert raised.value.details == {"task_id": "resend-me-1"}


def test_a_result_store_that_is_down_does_not_hold_up_the_send(app_on, redis_server, redis_client):
    app = app_on(redis_server.url, result_backend=dead_url(1))
    redis_client.delete(QUEUE)
    started = time.monotonic()
    result = job(double, app=app).apply_async((2,), queue=QUEUE)
    took = time.monotonic() - started
    try:
        assert took < 2, f"the send waited {took:.1f} s on the result store"
        assert redis_client.llen(QUEUE) == 1
    finally:
        redis_client.delete(QUEUE)
