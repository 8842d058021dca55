"""The error hierarchy survives Celery's JSON round trip with its facts."""

import pytest

from tasks import app
from tasks import errors
from tasks.errors import ContainerOOMKilled, JobError, JobFailed

pytestmark = pytest.mark.pure


#: Every name but the root, the settings error and the durable-write errors (none is a job outcome).
NOT_OUTCOMES = ("JobyardError", "SettingsError", "WriteNotDurable", "PublishFailed", "PublishNotDurable",
                "BrokerUnavailable")
OUTCOMES = [name for name in errors.__all__ if name not in NOT_OUTCOMES]


def test_every_error_has_one_root():
    for name in OUTCOMES:
        assert issubclass(getattr(errors, name), JobError)


def test_one_catchable_root_above_job_outcomes_agent_and_autoscaler_errors():
    from autoscaler.errors import AutoscalerError
    from executor.errors import AgentError

    for cls in (JobError, AgentError, AutoscalerError):
        assert issubclass(cls, errors.JobyardError)
    # except JobError around .get() still catches job outcomes only.
    assert not issubclass(AgentError, JobError) and not issubclass(AutoscalerError, JobError)


def test_a_publish_not_durable_is_under_the_root_but_no_job_outcome():
    error = errors.PublishNotDurable("publishing x", {"acked": 0, "needed": 1, "timeout_ms": 5})
    assert isinstance(error, errors.WriteNotDurable) and isinstance(error, errors.JobyardError)
    assert not isinstance(error, JobError)
    assert str(error) == "publishing x" and error.details["needed"] == 1


def test_both_failed_publishes_are_one_kind_a_caller_can_send_again():
    from kombu.exceptions import OperationalError

    for cls in (errors.PublishNotDurable, errors.BrokerUnavailable):
        assert issubclass(cls, errors.PublishFailed) and not issubclass(cls, JobError)
    assert issubclass(errors.BrokerUnavailable, OperationalError)


@pytest.mark.parametrize("cls", [getattr(errors, name) for name in OUTCOMES])
def test_json_round_trip_rebuilds_the_same_class_with_facts(cls):
    backend = app.backend
    original = cls("it broke", {"exit_code": 137, "log_tail": "tail"})
    stored = backend.prepare_exception(original, serializer="json")
    rebuilt = backend.exception_to_python(stored)
    assert type(rebuilt) is cls
    assert str(rebuilt) == "it broke"
    assert rebuilt.exit_code == 137 and rebuilt.details["log_tail"] == "tail"


def test_missing_fact_is_an_attribute_error():
    with pytest.raises(AttributeError):
        JobFailed("x").exit_code


def test_oom_is_a_runtime_error_not_a_timeout():
    assert not issubclass(ContainerOOMKilled, errors.JobTimeout)
    assert issubclass(ContainerOOMKilled, errors.JobRuntimeError)
