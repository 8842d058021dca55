"""A job's result and error text cannot inflate the agent or Redis (issue 12, item 3).

Real agents, real containers, real redis-server. Memory is the agent process's peak
RSS (VmHWM, reset through /proc/<pid>/clear_refs before each job) minus its RSS then.
"""

import json

import psutil
import pytest

from tasks.errors import JobFailed, ResultTooLarge
from tests.conftest import wait_for

KIB = 1024
MIB = 1024 * KIB
#: Peak RSS the agent may gain while it reads, judges and stores one result at the
#: 1 MiB cap (README, "How a job ends": at most 16 x the cap).
RSS_BOUND = 16 * MIB


@pytest.fixture(scope="module")
def bounded(agents):
    """An agent with the default result cap (1 MiB), on its own queue."""
    return _warmed(agents.start("bounds", "--cpus", "2", "--memory", "2Gi", "--queues", "bounds"), "bounds")


@pytest.fixture(scope="module")
def raised(agents):
    """An agent whose result cap is raised to 16 MiB, on its own queue."""
    agent = agents.start("bigcap", "--cpus", "2", "--memory", "2Gi", "--queues", "bigcap",
                         env={"JOBYARD_MAX_RESULT": str(16 * MIB)})
    return _warmed(agent, "bigcap")


def _warmed(agent, queue):
    """``agent`` after one small job, so its first job's one-off costs are not measured."""
    from bounds_jobs import text_of

    assert text_of.apply_async((10,), queue=queue).get(timeout=60) == "x" * 10
    return agent


def peak_growth(agent, submit, timeout=60):
    """Run ``submit()``'s job to its end; return (its value or error, agent peak RSS growth)."""
    pid = agent.process.pid
    with open(f"/proc/{pid}/clear_refs", "w") as handle:
        handle.write("5")  # resets the peak RSS (VmHWM) to the current RSS
    before = psutil.Process(pid).memory_info().rss
    try:
        outcome = submit().get(timeout=timeout)
    except JobFailed as exc:
        outcome = exc
    return outcome, _peak_rss(pid) - before


def _brief(value):
    return f"{type(value).__name__}: {str(value)[:300]}"


def _peak_rss(pid):
    with open(f"/proc/{pid}/status") as handle:
        line = next(line for line in handle if line.startswith("VmHWM:"))
    return int(line.split()[1]) * KIB


def test_a_result_over_the_cap_is_refused_before_it_is_read(bounded):
    from bounds_jobs import text_of

    error, growth = peak_growth(bounded, lambda: text_of.apply_async((2 * MIB,), queue="bounds"))
    print(f"2 MiB result at the 1 MiB cap: agent peak RSS +{growth / MIB:.1f} MiB")
    assert isinstance(error, ResultTooLarge), _brief(error)
    assert error.limit == MIB and error.size > 2 * MIB
    assert str(error.size) in str(error) and str(MIB) in str(error)
    assert growth < 4 * MIB


@pytest.mark.parametrize("name, args", [
    ("empty_lists", (350_000,)),   # 1 MiB of [[],[],...]
    ("nested", (200_000,)),        # 1.2 MB of {"a":{"a":...}}
    ("many_strings", (170_000,)),  # 1 MiB of short strings
])
def test_json_too_costly_to_parse_is_refused_in_bounded_memory(bounded, name, args):
    import bounds_jobs

    error, growth = peak_growth(bounded, lambda: getattr(bounds_jobs, name).apply_async(args, queue="bounds"))
    print(f"{name}{args} at the 1 MiB cap: agent peak RSS +{growth / MIB:.1f} MiB")
    assert isinstance(error, ResultTooLarge), _brief(error)
    assert error.limit == MIB
    assert growth < RSS_BOUND


@pytest.mark.parametrize("name, args, length", [
    ("empty_lists", (60_000,), 60_000),   # the most values the bound lets through
    ("many_ints", (120_000,), 120_000),
    ("many_strings", (120_000,), 120_000),
])
def test_the_costliest_accepted_result_stays_within_the_rss_bound(bounded, name, args, length):
    import bounds_jobs

    value, growth = peak_growth(bounded, lambda: getattr(bounds_jobs, name).apply_async(args, queue="bounds"))
    print(f"{name}{args} accepted at the 1 MiB cap: agent peak RSS +{growth / MIB:.1f} MiB")
    assert not isinstance(value, Exception), _brief(value)
    assert len(value) == length
    assert growth < RSS_BOUND


def test_a_raised_cap_lets_1_mib_of_empty_lists_through_in_bounded_memory(raised):
    from bounds_jobs import empty_lists

    value, growth = peak_growth(raised, lambda: empty_lists.apply_async((350_000,), queue="bigcap"))
    print(f"empty_lists(350000) accepted at a 16 MiB cap: agent peak RSS +{growth / MIB:.1f} MiB")
    assert not isinstance(value, Exception), _brief(value)
    assert len(value) == 350_000
    assert growth < 48 * MIB  # ~700k values at ~30-60 bytes each, far inside 16 x the 16 MiB cap


def test_a_nested_result_within_the_depth_bound_comes_back(bounded):
    from bounds_jobs import nested

    value = nested.apply_async((90,), queue="bounds").get(timeout=60)
    depth = 0
    while value:
        value, depth = value["a"], depth + 1
    assert depth == 90


def test_huge_error_text_is_cut_everywhere_the_agent_keeps_or_logs_it(raised, redis_client, celery_app):
    import redis

    from bounds_jobs import forge_failure

    result = forge_failure.apply_async((8 * MIB, 4 * MIB, MIB, 8 * MIB), queue="bigcap")
    with pytest.raises(JobFailed) as info:
        result.get(timeout=90)
    error = info.value
    assert len(error.exc_type) <= 200 and len(error.exc_module) <= 200
    assert len(error.remote_message) <= 4 * KIB and len(str(error)) <= 5 * KIB
    assert len(error.traceback) <= 16 * KIB and error.traceback.endswith("last frame")
    assert len(error.log_tail) <= 4 * KIB

    backend = redis.Redis.from_url(celery_app.conf.result_backend)
    meta = backend.get(f"celery-task-meta-{result.id}")
    assert meta is not None and len(meta) <= 64 * KIB, f"FAILURE record is {len(meta)} bytes"
    assert json.loads(meta)["status"] == "FAILURE"

    dead = wait_for(lambda: redis_client.hgetall(f"jobyard:dead:{result.id}"), message="the dead letter")
    dead_bytes = sum(len(v.encode()) for k, v in dead.items() if k != "message")
    assert dead_bytes <= 32 * KIB, f"dead letter is {dead_bytes} bytes"
    assert len(redis_client.get(f"jobyard:logs:{result.id}").encode()) <= 256 * KIB

    ended = wait_for(lambda: [line for line in raised.log().splitlines() if result.id in line and " ended: " in line],
                     message="the agent's log line")
    assert len(ended[0]) <= 5 * KIB, f"the agent logged a {len(ended[0])}-byte line"
    longest = max(len(line) for line in raised.log().splitlines())
    assert longest <= 64 * KIB, f"the agent's longest log line is {longest} bytes"
    assert raised.alive
