"""The sandbox is real, checked from inside a job."""

import pytest

from tasks import command_job
from tests.conftest import BUSYBOX_IMAGE


@pytest.fixture(scope="module")
def report(agent):
    from sample_jobs import probe_sandbox

    return probe_sandbox.delay().get(timeout=60)


def test_job_is_not_root(report):
    assert report["uid"] != 0 and report["gid"] != 0


def test_root_filesystem_is_read_only_but_tmp_is_writable(report):
    assert report["write_root"] == "OSError" or report["write_root"].endswith("Error")
    assert report["write_root"] != "allowed"
    assert report["write_tmp"] == "allowed"


def test_no_network_only_an_isolated_loopback(report):
    assert report["loopback"] != "allowed", "the host's loopback services must be unreachable"
    assert report["interfaces"] == ["lo"], "no interface but the container's own loopback"
    assert report["routes"] == 0, "no route anywhere"


def test_no_capabilities_and_no_docker_socket(report):
    assert int(report["cap_eff"], 16) == 0
    assert report["docker_socket"] is False


def test_attempt_number_is_visible_to_the_job(report):
    assert report["attempt"] == "1"


def test_fork_bomb_is_stopped_by_the_pids_limit(agent):
    from sample_jobs import add, fork_bomb

    outcome = fork_bomb.delay().get(timeout=90)
    assert outcome["error"] is not None and outcome["started"] < 32
    assert agent.alive
    assert add.delay(2, 2).get(timeout=30) == 4


def test_shell_fork_bomb_cannot_hurt_the_host(agent):
    bomb = command_job("tools.bomb", image=BUSYBOX_IMAGE, pids=16, timeout=5, memory="32Mi",
                       command=["sh", "-c", "b() { b | b & }; b; sleep 3; echo survived"])
    try:
        bomb.delay().get(timeout=60)
    except Exception:  # noqa: BLE001 - timeout or failure are both containment
        pass
    from sample_jobs import add
    assert add.delay(3, 3).get(timeout=30) == 6
    assert agent.alive
