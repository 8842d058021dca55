"""Submitting: bad specs are refused before anything reaches the queue."""

import pytest

from tasks import command_job, job
from tasks.errors import InvalidJobSpec, PayloadTooLarge


def _queue_lengths(redis_client):
    return {key: redis_client.llen(key) for key in redis_client.keys("*") if redis_client.type(key) == "list"}


@pytest.fixture
def empty_broker(redis_client):
    redis_client.flushdb()
    yield redis_client
    assert _queue_lengths(redis_client) == {}, "a refused submit reached the queue"


def test_bad_declaration_names_the_field(empty_broker):
    with pytest.raises(InvalidJobSpec) as info:
        @job(memory="lots")
        def f():
            return 1
    assert info.value.field == "memory"


def test_bad_per_call_override_names_the_field(empty_broker):
    from sample_jobs import add

    for field, value in (("memory", "12 parsecs"), ("cpus", -2), ("timeout", "soon"), ("image", "NO WAY")):
        with pytest.raises(InvalidJobSpec) as info:
            add.apply_async((1, 2), **{field: value})
        assert info.value.field == field


def test_unserialisable_and_oversized_arguments_are_refused(empty_broker):
    from sample_jobs import add

    with pytest.raises(InvalidJobSpec) as info:
        add.delay(object(), 1)
    assert info.value.field == "args"
    with pytest.raises(PayloadTooLarge):
        add.delay("x" * (2 * 1024 * 1024), 1)


def test_command_job_placeholders_checked_at_submit(empty_broker):
    echo = command_job("tools.echo", image="jobyard-test/busybox:latest", command=["echo", "{msg}"])
    with pytest.raises(InvalidJobSpec):
        echo.delay()
    with pytest.raises(InvalidJobSpec):
        echo.delay(msg="hi", extra="nope")


def test_functions_that_cannot_be_imported_are_refused():
    with pytest.raises(InvalidJobSpec) as info:
        def outer():
            @job
            def inner():
                return 1
        outer()
    assert info.value.field == "entry"


def test_a_job_called_directly_is_plain_python():
    from sample_jobs import add

    assert add(2, 3) == 5
    assert add.name == "sample_jobs.add"
