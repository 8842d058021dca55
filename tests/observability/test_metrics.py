"""The agent's Prometheus endpoint, scraped and parsed as Prometheus would."""

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_for


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample on the endpoint as {(name, sorted labels): value}."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_capacity_and_outcomes_of_the_batch(obs_agent, metrics_port, batch):
    samples = scrape(metrics_port)
    host = obs_agent.hostname
    assert value(samples, "jobyard_agent_capacity_cpus", host=host) == 2
    assert value(samples, "jobyard_agent_capacity_memory_bytes", host=host) == 2 * 1024**3
    assert value(samples, "jobyard_agent_jobs_finished_total", host=host, outcome="oom_killed") >= 1
    assert value(samples, "jobyard_agent_jobs_finished_total", host=host, outcome="timeout") >= 1
    assert value(samples, "jobyard_agent_jobs_finished_total", host=host, outcome="succeeded") >= 1
    assert value(samples, "jobyard_agent_container_start_seconds_count", host=host) >= 3
    assert value(samples, "jobyard_agent_admission_wait_seconds_count", host=host) >= 3


def test_counters_and_gauges_move_as_a_job_runs(obs_agent, metrics_port, batch):
    from sample_jobs import fail_with, sleep_for

    host = obs_agent.hostname
    before = scrape(metrics_port)
    running = sleep_for.apply_async((3,), memory="128Mi")

    def running_containers(check):
        samples = scrape(metrics_port)
        return samples if check(value(samples, "jobyard_agent_running_containers", host=host)) else None

    during = wait_for(lambda: running_containers(lambda n: n >= 1), timeout=20, interval=0.2,
                      message="the running gauge to show the job")
    assert value(during, "jobyard_agent_reserved_memory_bytes", host=host) >= 128 * 1024**2
    assert value(during, "jobyard_agent_reserved_cpus", host=host) >= 1
    assert running.get(timeout=30) == 3
    failed = fail_with.delay("boom")
    failed.get(timeout=30, propagate=False)

    after = wait_for(lambda: running_containers(lambda n: n == 0), timeout=10, message="the gauge to drop")
    for outcome in ("succeeded", "failed"):
        name = "jobyard_agent_jobs_finished_total"
        assert value(after, name, host=host, outcome=outcome) == value(before, name, host=host, outcome=outcome) + 1
    assert value(after, "jobyard_agent_container_start_seconds_count", host=host) == \
        value(before, "jobyard_agent_container_start_seconds_count", host=host) + 2
    assert value(after, "jobyard_agent_reserved_memory_bytes", host=host) == 0


def test_the_endpoint_listens_on_loopback_only(obs_agent, metrics_port):
    import psutil

    listening = [c for c in psutil.net_connections("tcp") if c.laddr.port == metrics_port and c.status == "LISTEN"]
    assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening)
