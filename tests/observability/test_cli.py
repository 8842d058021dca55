"""``jobyard status``, ``job``, ``logs`` and ``submit`` against a live agent."""

import json
import threading
import time

import pytest
from click.testing import CliRunner

from jobyard.cli import main
from tasks import keys
from tests.conftest import BUSYBOX_IMAGE, PYTHON_IMAGE, wait_for


def abandon(result) -> None:
    """Revoke a job that will never run, and stop listening for its result now,
    while Redis is up (otherwise the result's finaliser complains at exit)."""
    result.revoke()
    result.backend.remove_pending_result(result)


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_status_shows_the_live_host_and_a_queue_backlog(obs_agent, redis_client):
    from sample_jobs import add

    waiting = add.apply_async((1, 2), queue="obs-backlog", memory="96Mi", cpus=0.25)
    text = run("status")
    assert "QUEUES" in text and "HOSTS" in text and "AUTOSCALER DECISIONS" in text
    host_line = next(line for line in text.splitlines() if line.startswith(obs_agent.hostname))
    assert "default" in host_line and "/2 " in host_line and "/2Gi" in host_line and "s ago" in host_line
    backlog = next(line for line in text.splitlines() if line.startswith("obs-backlog "))
    assert backlog.split()[1:4] == ["1", "0", "0"], "1 ready, 0 delayed, 0 in flight"
    assert backlog.split()[-2:] == ["0.25", "96Mi"], "demand is the waiting job's request"

    data = json.loads(run("status", "--json"))
    queue = next(q for q in data["queues"] if q["queue"] == "obs-backlog")
    assert queue["ready"] == 1 and queue["demand_memory"] == 96 * 1024**2
    host = next(h for h in data["hosts"] if h["hostname"] == obs_agent.hostname)
    assert host["capacity_cpus"] == 2 and host["capacity_memory"] == 2 * 1024**3 and not host["draining"]
    assert host["heartbeat_age"] < 10
    abandon(waiting)
    redis_client.delete("obs-backlog")


def test_status_shows_a_host_holding_itself_free_for_a_passed_over_job(obs_agent, redis_client):
    # What the take script writes when this host reserves itself for a starving job.
    reservations = keys.reservations("default")
    redis_client.hset(reservations, "some-delivery-tag", f"{obs_agent.hostname} {time.time()}")
    redis_client.hset(reservations, "stale-tag", f"{obs_agent.hostname} {time.time() - 3600}")
    try:
        host_line = next(line for line in run("status").splitlines() if line.startswith(obs_agent.hostname))
        assert "1 passed-over job " in host_line
        host = next(h for h in json.loads(run("status", "--json"))["hosts"] if h["hostname"] == obs_agent.hostname)
        assert host["holding"] == 1
    finally:
        redis_client.delete(reservations)


def test_status_counts_a_running_job_in_flight_and_reserved(obs_agent):
    from sample_jobs import sleep_for

    job = sleep_for.apply_async((3,), memory="200Mi")

    def admitted():
        data = json.loads(run("status", "--json"))
        host = next(h for h in data["hosts"] if h["hostname"] == obs_agent.hostname)
        return data if host["running"] == 1 else None

    data = wait_for(admitted, timeout=20, message="the job admitted on the agent")
    host = next(h for h in data["hosts"] if h["hostname"] == obs_agent.hostname)
    assert host["reserved_memory"] == 200 * 1024**2 and host["reserved_cpus"] == 1
    default = next(q for q in data["queues"] if q["queue"] == "default")
    assert default["in_flight"] == 1 and default["running"] == 1 and default["ready"] == 0
    assert job.get(timeout=30) == 3


def test_status_explains_jobs_that_fit_no_host_and_the_autoscalers_decisions(obs_agent, redis_client):
    from autoscaler.action import Action
    from autoscaler.loop import Tick
    from autoscaler.metrics import BrokerMetrics
    from autoscaler.report import RedisReporter
    from autoscaler.shape import HostShape, Request
    from sample_jobs import add

    queue = "obs-small-hosts"
    # A live host of 1 CPU / 1Gi serving the queue, as an agent publishes it; no
    # process consumes the queue, so its jobs stay waiting.
    redis_client.set(keys.agent("obs-small"), json.dumps({
        "hostname": "obs-small", "queues": [queue], "capacity": {"cpus": 1, "memory": 1024**3},
        "reserved": {"cpus": 0, "memory": 0}, "running": [], "waiting": [], "draining": False,
        "heartbeat": time.time()}), ex=60)
    redis_client.zadd(keys.AGENTS, {"obs-small": time.time()})
    bigger = add.apply_async((1, 1), queue=queue, memory="4Gi")
    huge = add.apply_async((1, 1), queue=queue, memory="64Gi")
    # What the autoscaler writes on a tick: a decision, the unfit job, its host shape.
    observation = BrokerMetrics(redis_client, [queue]).read()
    tick = Tick(time.time() - 5, observation, 1, 3, (), Action("out", 2, "2 waiting pack onto 3 host(s)",
                                                                 ("h-1", "h-2")),
                unfit=(Request(huge.id, 0.5, 64 * 1024**3),))
    RedisReporter(redis_client, HostShape(8, 8 * 1024**3), (queue,)).observe(tick)
    try:
        lines = run("status").splitlines()
        computed = next(line for line in lines if line.startswith(bigger.id))
        assert queue in computed and computed.rstrip().endswith("status")
        assert "asks for 0.5 cpus, 4Gi; the largest host on queue obs-small-hosts has 1 cpus, 1Gi" in computed
        assert "fits the hosts the autoscaler adds (8 cpus, 8Gi): waiting for a scale-out" in computed
        recorded = next(line for line in lines if line.startswith(huge.id))
        assert "memory=64Gi, larger than any host the autoscaler can add" in recorded
        assert recorded.rstrip().endswith("autoscaler")
        decision = next(line for line in lines if "pack onto 3 host(s)" in line)
        assert "out 2" in decision and "1 -> 3 [h-1, h-2]" in decision and "s ago" in decision
    finally:
        for job in (bigger, huge):
            abandon(job)
        redis_client.delete(keys.agent("obs-small"), queue, keys.DECISIONS, keys.unfit(huge.id),
                            keys.AUTOSCALER_SHAPE)
        redis_client.zrem(keys.AGENTS, "obs-small")


def test_job_shows_container_facts(batch):
    text = run("job", batch.oom.id)
    assert text.startswith(f"sample_jobs.balloon  {batch.oom.id}")
    rows = dict(line.split(None, 1) for line in text.splitlines()[3:])
    assert rows["exit_code"].strip() == "137" and rows["oom_killed"].strip() == "true"
    assert rows["memory_limit"].strip() == "64Mi" and rows["peak_memory"].strip() == "64Mi"
    assert rows["image"].strip() == PYTHON_IMAGE and rows["attempt"].strip() == "1"
    assert len(rows["container"].strip()) == 12
    assert json.loads(run("job", batch.oom.id, "--json"))["exit_code"] == 137


def test_logs_of_a_finished_job_after_its_container_is_gone(batch, docker_client):
    assert not docker_client.containers.list(all=True, filters={"label": f"jobyard.job={batch.success.id}"})
    assert run("logs", batch.success.id) == "adding 20 and 22\n"


def test_logs_follow_a_running_job_to_its_end(obs_agent):
    from tasks import command_job

    ticker = command_job("obs.ticker", image=BUSYBOX_IMAGE, memory="16Mi",
                         command=["sh", "-c", "echo first; sleep 2; echo second; sleep 1; echo third"])
    job = ticker.delay()
    wait_for(lambda: _running_in_docker(job.id), timeout=20, message="the ticker's container")
    wait_for(lambda: run("logs", job.id).startswith("first"), timeout=10,
             message="a running job's output, from its container")
    assert not job.ready()
    done = threading.Event()
    job_thread = threading.Thread(target=lambda: (job.get(timeout=30), done.set()))
    job_thread.start()
    output = run("logs", "--follow", "--timeout", "30", job.id)
    assert output == "first\nsecond\nthird\n"
    job_thread.join(30)
    assert done.is_set()


def test_logs_of_a_job_on_another_host_wait_for_its_end(obs_agent, monkeypatch):
    import jobyard.logs
    from tasks import command_job

    remote = command_job("obs.remote", image=BUSYBOX_IMAGE, memory="16Mi",
                         command=["sh", "-c", "echo from afar; sleep 4"])
    job = remote.delay()
    wait_for(lambda: _running_in_docker(job.id), timeout=20, message="the job's container")
    # From here on this machine's Docker does not have it: as if it ran elsewhere.
    monkeypatch.setattr(jobyard.logs, "local_container", lambda task_id: None)
    now = CliRunner().invoke(main, ["logs", job.id])
    assert now.exit_code == 0 and now.stdout == ""
    assert f"job {job.id} is running on {obs_agent.hostname}; its output is kept when it ends" in now.stderr
    assert run("logs", "--follow", "--timeout", "30", job.id) == "from afar\n"
    assert job.get(timeout=10)["exit_code"] == 0


def _running_in_docker(task_id: str) -> bool:
    from jobyard.logs import local_container

    container = local_container(task_id)
    return container is not None and container.status == "running"


def test_an_unreachable_broker_is_one_clear_line_without_the_password():
    from tests.support.services import free_port

    url = f"redis://jobyard:s3cret-pw@127.0.0.1:{free_port()}/0"
    for args in (["status"], ["job", "some-id"], ["logs", "some-id"]):
        result = CliRunner().invoke(main, args, env={"JOBYARD_BROKER_URL": url})
        assert result.exit_code == 1, result.output
        assert "cannot read the broker at redis://jobyard:***@127.0.0.1:" in result.output
        assert "s3cret-pw" not in result.output and "Traceback" not in result.output


def test_logs_follow_ends_when_a_job_ends_before_its_container_runs(obs_agent):
    from tasks import command_job
    from tasks.errors import ImageNotFound

    missing = command_job("obs.missing", image="jobyard-test/absent:latest", memory="16Mi", command=["true"],
                          pull="never")
    job = missing.delay()
    with pytest.raises(ImageNotFound):
        job.get(timeout=30)
    started = time.monotonic()
    assert run("logs", "--follow", "--timeout", "20", job.id) == ""
    assert time.monotonic() - started < 5


def test_logs_of_an_unknown_job_is_a_clear_error(redis_server):
    result = CliRunner().invoke(main, ["logs", "no-such-job"])
    assert result.exit_code == 1 and "no job no-such-job" in result.output


def test_submit_one_command_and_wait_prints_its_output(obs_agent):
    result = CliRunner().invoke(main, ["submit", BUSYBOX_IMAGE, "--memory", "16Mi", "--wait", "--",
                                       "echo", "hello", "from the shell"])
    assert result.exit_code == 0, result.output
    assert result.output == "hello from the shell\n"


def test_submit_a_failing_command_reports_its_exit_code(obs_agent):
    result = CliRunner().invoke(main, ["submit", BUSYBOX_IMAGE, "--memory", "16Mi", "--wait", "--",
                                       "sh", "-c", "echo oops; exit 3"])
    assert result.exit_code == 1
    assert result.stdout == "oops\n"
    assert "failed: cli.sh exited with code 3: oops" in result.stderr


def test_submit_many_shows_progress_and_a_summary(obs_agent):
    result = CliRunner().invoke(main, ["submit", BUSYBOX_IMAGE, "--memory", "16Mi", "--cpus", "0.25",
                                       "--count", "4", "--wait", "--", "echo", "batch"])
    assert result.exit_code == 0, result.output
    assert "waiting for 4 jobs" in result.stderr and result.stderr.rstrip().endswith("done 4/4")
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TASK", "ID", "OUTCOME", "EXIT", "CODE", "DETAIL"]
    rows = [line.split() for line in lines[2:6]]
    assert all(row[1:] == ["succeeded", "0", "batch"] for row in rows), result.stdout
    assert lines[-1] == "4 succeeded"


def test_submit_without_wait_prints_task_ids(obs_agent):
    from celery.result import AsyncResult

    output = run("submit", BUSYBOX_IMAGE, "--memory", "16Mi", "--count", "2", "--", "true")
    ids = output.split()
    assert len(ids) == 2
    assert [AsyncResult(i).get(timeout=30)["exit_code"] for i in ids] == [0, 0]
