"""Jobs that try to break out of their container (baked into the test image).

Each attempt reports ``"allowed"`` or the errno name it failed with, so the tests
can tell a refusal from a probe that never ran. Only harmless targets are used:
the sysrq trigger gets ``h`` (print help), mounts go to /tmp, network attempts go
to the container's own loopback and the local Docker bridge gateway.
"""

import ctypes
import errno
import os
import socket
import stat
import time

from tasks import job

SYSCALLS_X86_64 = {"mount": 165, "init_module": 175, "kexec_load": 246, "add_key": 248, "keyctl": 250,
                   "unshare": 272, "bpf": 321, "ptrace": 101}
CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000
KEYCTL_JOIN_SESSION_KEYRING = 1
PTRACE_ATTACH = 16


def _errno_name(code: int) -> str:
    return errno.errorcode.get(code, str(code))


def attempt(action) -> str:
    """Run ``action``; "allowed" if it succeeded, else the errno name it failed with."""
    try:
        action()
    except OSError as exc:
        return _errno_name(exc.errno) if exc.errno else type(exc).__name__
    return "allowed"


def _syscall(name: str, *args) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(SYSCALLS_X86_64[name], *args) == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _write(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


def _connect(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=2):
        pass


def _sockets_under(*roots: str) -> list[str]:
    found = []
    for root in roots:
        for directory, _dirs, files in os.walk(root, onerror=lambda _exc: None):
            for name in files:
                path = os.path.join(directory, name)
                try:
                    if stat.S_ISSOCK(os.lstat(path).st_mode):
                        found.append(path)
                except OSError:
                    pass
    return found


def _status(*fields: str) -> dict:
    with open("/proc/self/status") as handle:
        lines = dict(line.rstrip("\n").split(":\t", 1) for line in handle if ":\t" in line)
    return {name: lines.get(name, "").strip() for name in fields}


def _mount_options() -> dict:
    with open("/proc/mounts") as handle:
        return {fields[1]: fields[3].split(",") for fields in (line.split() for line in handle)}


@job(memory="64Mi", timeout=60)
def kernel_probe(gateway: str) -> dict:
    """Try the kernel interfaces a container must not reach; report each outcome."""
    os.makedirs("/tmp/mnt", exist_ok=True)
    mount_source, mount_fs, mount_target = b"none", b"tmpfs", b"/tmp/mnt"
    return {
        "sysrq_trigger": attempt(lambda: _write("/proc/sysrq-trigger", "h")),
        "raw_socket": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()),
        "packet_socket": attempt(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)).close()),
        "mount": attempt(lambda: _syscall("mount", mount_source, mount_target, mount_fs, 0, None)),
        "unshare_user_namespace": attempt(lambda: _syscall("unshare", CLONE_NEWUSER)),
        "unshare_mount_namespace": attempt(lambda: _syscall("unshare", CLONE_NEWNS)),
        "session_keyring": attempt(lambda: _syscall("keyctl", KEYCTL_JOIN_SESSION_KEYRING, b"escape")),
        "add_key": attempt(lambda: _syscall("add_key", b"user", b"escape", b"x", 1, -3)),
        "init_module": attempt(lambda: _syscall("init_module", None, 0, b"")),
        "kexec_load": attempt(lambda: _syscall("kexec_load", 0, 0, None, 0)),
        "bpf": attempt(lambda: _syscall("bpf", 0, None, 0)),
        "setuid_root": attempt(lambda: os.setuid(0)),
        "chroot": attempt(lambda: os.chroot("/tmp")),
        "write_job_input": attempt(lambda: _write("/jobyard/in/escape", "x")),
        "write_runner": attempt(lambda: _write("/jobyard/runner/runner.py", "x")),
        "docker_tcp": {f"{host}:{port}": attempt(lambda h=host, p=port: _connect(h, p))
                       for host in ("127.0.0.1", gateway) for port in (2375, 2376)},
        "sockets": _sockets_under("/run", "/var/run", "/tmp", "/jobyard"),
        "block_devices": [name for name in os.listdir("/dev")
                          if stat.S_ISBLK(os.stat(os.path.join("/dev", name)).st_mode)],
        "dev": sorted(os.listdir("/dev")),
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "status": _status("Uid", "Gid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"),
        "mounts": _mount_options(),
    }


@job(memory="64Mi", cpus=0.5, timeout=120)
def neighbour(seconds: float, n: int) -> int:
    """Work for ``seconds`` alongside a misbehaving job; return a checksum of 0..n-1 squared."""
    deadline = time.monotonic() + seconds
    total = 0
    while time.monotonic() < deadline:
        total = sum(i * i for i in range(n))
        time.sleep(0.05)
    return total


@job(memory="64Mi", timeout=60)
def plant_result_link(target: str):
    """Make its result file a symlink to ``target`` and exit before the runner writes it."""
    os.symlink(target, "/jobyard/out/result.json")
    os._exit(0)


@job(memory="64Mi", timeout=60)
def plant_result_fifo():
    """Make its result file a FIFO and exit before the runner writes it."""
    os.mkfifo("/jobyard/out/result.json")
    os._exit(0)
