"""The host policy: a table of specs against policies (pure), then the agent's flags end to end."""

import pytest
from click.testing import CliRunner

from jobyard.agent_command import agent as agent_command
from executor.policy import DEFAULT_MAX_PIDS, HostPolicy
from tasks import command_job
from tasks.errors import JobRejected
from tasks.spec import JobSpec
from tests.conftest import BUSYBOX_IMAGE


def _spec(**fields) -> JobSpec:
    return JobSpec.build(name="policy.probe", kind="command", command=["true"], image="local/probe:1", **fields)


#: (policy, spec fields, rule broken or None)
CASES = [
    (HostPolicy(), {}, None),
    (HostPolicy(), {"pids": DEFAULT_MAX_PIDS}, None),
    (HostPolicy(), {"pids": DEFAULT_MAX_PIDS + 1}, "pids"),
    (HostPolicy(), {"pids": 1_000_000}, "pids"),
    (HostPolicy(max_pids=None), {"pids": 1_000_000}, None),
    (HostPolicy(max_pids=64), {"pids": 65}, "pids"),
    (HostPolicy(max_timeout=30), {"timeout": 30}, None),
    (HostPolicy(max_timeout=30), {"timeout": 30.5}, "timeout"),
    (HostPolicy(allowed_images=("other/*",)), {}, "image"),
    (HostPolicy(max_cpus=1), {"cpus": 2}, "cpus"),
    (HostPolicy(max_memory=64 * 1024**2), {"memory": "128Mi"}, "memory"),
    (HostPolicy(), {"network": "bridge"}, "network"),
]


@pytest.mark.parametrize("policy, fields, rule", CASES)
def test_policy_table(policy, fields, rule):
    spec = _spec(**fields)
    if rule is None:
        policy.check(spec)
        return
    with pytest.raises(JobRejected) as info:
        policy.check(spec)
    assert info.value.details["rule"] == rule
    assert rule in str(info.value)


@pytest.mark.parametrize("field, rule, maximum", [("pids", "pids", 64), ("timeout", "timeout", 30.0)])
def test_rejections_name_the_request_and_the_maximum(field, rule, maximum):
    policy = HostPolicy(max_pids=64, max_timeout=30)
    with pytest.raises(JobRejected) as info:
        policy.check(_spec(**{"pids": 64, "timeout": 30, field: 100}))
    assert info.value.details == {"rule": rule, "request": 100, "max": maximum}


@pytest.mark.parametrize("args, message", [(["--max-job-pids", "7"], "--max-job-pids"),
                                           (["--max-job-timeout", "0"], "--max-job-timeout")])
def test_agent_refuses_a_nonsense_policy_flag(args, message):
    result = CliRunner().invoke(agent_command, args)
    assert result.exit_code == 2 and message in result.output


def test_agent_flags_reject_too_many_pids_and_too_long_a_timeout(agents):
    agents.start("policy", "--cpus", "1", "--memory", "512Mi", "--queues", "policy",
                 "--max-job-pids", "64", "--max-job-timeout", "30")
    probe = command_job("policy.flags", image=BUSYBOX_IMAGE, command=["true"], memory="32Mi", queue="policy",
                        timeout=30, pids=64)
    assert probe.delay().get(timeout=60)["exit_code"] == 0
    for override, rule in (({"pids": 65}, "pids"), ({"timeout": 31}, "timeout")):
        with pytest.raises(JobRejected) as info:
            probe.apply_async(**override).get(timeout=60)
        assert info.value.details["rule"] == rule, info.value
