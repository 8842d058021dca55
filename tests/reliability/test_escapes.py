"""Escape attempts from inside a job: each fails or is contained, and the host and a
neighbouring job carry on. Extends tests/executor/test_hardening.py (not repeated here:
uid, rootfs write, interfaces/routes, CapEff, the socket path, fork bombs).
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import secrets
import shutil
import tarfile
import tempfile
import time

import pytest

from tasks import command_job, keys
from tasks.errors import ContainerOOMKilled, JobFailed
from tests.conftest import BUSYBOX_IMAGE, SESSION

SETUID_IMAGE = "jobyard-test/setuid:latest"
#: errno names an attempt may fail with; "allowed" never.
REFUSED = {
    "sysrq_trigger": {"EROFS", "EACCES", "ENOENT"},  # ENOENT: a kernel without magic sysrq
    "raw_socket": {"EPERM"},
    "packet_socket": {"EPERM"},
    "mount": {"EPERM"},
    "unshare_user_namespace": {"EPERM"},
    "unshare_mount_namespace": {"EPERM"},
    "session_keyring": {"EPERM"},
    "add_key": {"EPERM"},
    "init_module": {"EPERM"},
    "kexec_load": {"EPERM"},
    "bpf": {"EPERM"},
    "setuid_root": {"EPERM"},
    "chroot": {"EPERM"},
    "write_job_input": {"EROFS"},
    "write_runner": {"EROFS"},
}


def bridge_gateway(docker_client) -> str:
    """The local Docker bridge's gateway address (the host side of docker0)."""
    config = docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]
    return config.get("Gateway") or str(next(ipaddress.ip_network(config["Subnet"]).hosts()))


@pytest.fixture(scope="module")
def probe(agent, docker_client):
    from escape_jobs import kernel_probe

    return kernel_probe.delay(bridge_gateway(docker_client)).get(timeout=60)


@pytest.mark.parametrize("attempt", sorted(REFUSED))
def test_kernel_interface_is_refused(probe, attempt):
    assert probe[attempt] in REFUSED[attempt], f"{attempt}: {probe[attempt]}"


def test_privileges_cannot_be_regained(probe):
    status = probe["status"]
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2", "Docker's default seccomp filter must be on"
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[caps], 16) == 0, f"{caps}={status[caps]}"
    assert set(status["Uid"].split()) == {"10001"}


def test_mounts_are_read_only_or_nosuid(probe):
    mounts = probe["mounts"]
    assert "ro" in mounts["/"]
    assert {"nosuid", "nodev"} <= set(mounts["/tmp"])
    assert "ro" in mounts["/jobyard/in"] and "ro" in mounts["/jobyard/runner"]
    assert "ro" in mounts.get("/proc/sysrq-trigger", ["ro"])  # absent without magic sysrq


def test_docker_daemon_is_unreachable(probe):
    assert probe["sockets"] == [], "no unix socket may be mounted into a job"
    for target, outcome in probe["docker_tcp"].items():
        assert outcome in {"ECONNREFUSED", "ENETUNREACH", "EHOSTUNREACH"}, f"{target}: {outcome}"


def test_no_host_devices_or_processes(probe):
    assert probe["block_devices"] == []
    assert not {"mem", "kmem", "port", "kmsg"} & set(probe["dev"]), probe["dev"]
    assert probe["pids"][0] == 1 and len(probe["pids"]) <= 4, f"host processes visible: {probe['pids']}"


def test_mount_command_fails(agent):
    mount = command_job("escape.mount", image=BUSYBOX_IMAGE, memory="16Mi", timeout=30,
                        command=["mount", "-t", "tmpfs", "none", "/tmp"])
    with pytest.raises(JobFailed) as failed:
        mount.delay().get(timeout=60)
    assert "denied" in failed.value.log_tail.lower() or "not permitted" in failed.value.log_tail.lower()


def _setuid_image(docker_client) -> str:
    """Busybox plus /suid/busybox: a setuid-root copy of it, as an image might ship su or ping."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory, mode in (("bin", 0o755), ("suid", 0o755), ("tmp", 0o1777)):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        for name, mode in (("bin/busybox", 0o755), ("suid/busybox", 0o4755)):
            info = tar.gettarinfo(busybox, arcname=name)
            info.uid = info.gid = 0
            info.mode = mode
            with open(busybox, "rb") as handle:
                tar.addfile(info, handle)
        for applet in ("sh", "id", "cp", "chmod", "cat", "grep"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    repository, tag = SETUID_IMAGE.split(":")
    docker_client.api.import_image_from_data(buffer.getvalue(), repository=repository, tag=tag)
    return SETUID_IMAGE


def _without_no_new_privileges(docker_client, image: str, command: list[str]) -> str:
    """The control: the same binary, as uid 10001 with no capabilities, but no no-new-privileges."""
    container = docker_client.containers.create(image, command, user="10001:10001", cap_drop=["ALL"],
                                                 network_mode="none", labels={"jobyard.test": SESSION})
    try:
        container.start()
        container.wait(timeout=30)
        return container.logs().decode().strip()
    finally:
        container.remove(force=True)


def _uids(status: str) -> list[str]:
    """Real, effective, saved and filesystem uid from a /proc/<pid>/status text."""
    return next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))


def test_setuid_root_binary_gives_no_root(agent, docker_client):
    image = _setuid_image(docker_client)
    argv = ["/suid/busybox", "cat", "/proc/self/status"]
    # Busybox drops the effective uid itself, but the saved uid stays 0, from which
    # setuid(0) gets root back: the control shows the bit is real.
    assert "0" in _uids(_without_no_new_privileges(docker_client, image, argv)), "the control must be setuid root"
    job = command_job("escape.setuid", image=image, memory="16Mi", timeout=30, command=argv)
    assert _uids(job.delay().get(timeout=60)["output"]) == ["10001"] * 4


def _facts(redis_client, task_id: str) -> dict:
    return {k: json.loads(v) for k, v in redis_client.hgetall(keys.job_facts(task_id)).items()}


def test_memory_balloon_is_contained_and_its_neighbour_finishes(agent, redis_client):
    from escape_jobs import neighbour
    from sample_jobs import add, balloon

    expected = sum(i * i for i in range(20000))
    steady = neighbour.delay(8, 20000)
    time.sleep(1.5)
    blown = balloon.delay(400)
    with pytest.raises(ContainerOOMKilled):
        blown.get(timeout=60)
    assert steady.get(timeout=60) == expected
    steady_facts, blown_facts = _facts(redis_client, steady.id), _facts(redis_client, blown.id)
    assert steady_facts["started_at"] < blown_facts["finished_at"] < steady_facts["finished_at"], "not concurrent"
    assert steady_facts["oom_killed"] is False and blown_facts["oom_killed"] is True
    assert agent.alive
    assert add.delay(20, 22).get(timeout=30) == 42


def test_result_file_cannot_be_a_link_to_a_host_file(agent):
    """The agent (root on the host) reads result.json from a directory the job writes."""
    from escape_jobs import plant_result_link

    secret = f"host-secret-{secrets.token_hex(8)}"
    directory = tempfile.mkdtemp(prefix="jobyard-escape-")
    target = os.path.join(directory, "result.json")
    try:
        with open(target, "w") as handle:
            json.dump({"ok": True, "value": secret}, handle)
        os.chmod(target, 0o600)
        try:
            value = plant_result_link.delay(target).get(timeout=60)
        except JobFailed as exc:
            value = repr(exc.details)
        assert secret not in str(value), "the agent read a host file through a job's symlink"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_result_file_cannot_hang_the_agent(agent):
    """A FIFO where the result should be must not block the supervising thread."""
    from escape_jobs import plant_result_fifo
    from sample_jobs import add

    with pytest.raises(JobFailed):
        plant_result_fifo.delay().get(timeout=30)
    assert add.delay(1, 2).get(timeout=30) == 3
