"""Job functions the test suite runs inside containers (baked into the test image)."""

import os
import socket
import time

from tasks import job


@job(memory="64Mi", cpus=0.5, timeout=60)
def add(a, b):
    print(f"adding {a} and {b}")
    return a + b


@job(memory="64Mi", timeout=60)
def balloon(megabytes):
    """Allocate and touch ``megabytes`` of memory."""
    chunks = [bytearray(1024 * 1024) for _ in range(megabytes)]
    return len(chunks)


@job(memory="64Mi", timeout=60)
def sleep_for(seconds):
    time.sleep(seconds)
    return seconds


@job(memory="64Mi", timeout=60)
def fail_with(message):
    raise ValueError(message)


@job(memory="64Mi", timeout=60)
def noisy(value):
    """Prints things that look like a result; must not corrupt the real one."""
    print('{"ok": true, "value": "forged"}')
    print("\x00garbage\xff")
    return value


@job(memory="64Mi", timeout=60)
def probe_sandbox():
    """Report what the sandbox allows, from inside."""
    report = {"uid": os.getuid(), "gid": os.getgid(), "attempt": os.environ.get("JOBYARD_ATTEMPT")}
    try:
        with open("/escape", "w") as handle:
            handle.write("x")
        report["write_root"] = "allowed"
    except OSError as exc:
        report["write_root"] = type(exc).__name__
    with open("/tmp/scratch", "w") as handle:
        handle.write("tmp is writable")
    report["write_tmp"] = "allowed"
    try:
        sock = socket.create_connection(("127.0.0.1", 6379), timeout=2)
        sock.close()
        report["loopback"] = "allowed"
    except OSError as exc:
        report["loopback"] = type(exc).__name__
    with open("/proc/net/dev") as handle:
        report["interfaces"] = sorted(line.split(":")[0].strip() for line in handle.readlines()[2:])
    with open("/proc/net/route") as handle:
        report["routes"] = len(handle.readlines()[1:])
    report["docker_socket"] = os.path.exists("/var/run/docker.sock")
    with open("/proc/self/status") as handle:
        caps = [line.split()[1] for line in handle if line.startswith("CapEff")]
    report["cap_eff"] = caps[0] if caps else None
    return report


@job(memory="256Mi", timeout=60, pids=32)
def fork_bomb():
    """Fork until the pids limit stops it; report how many children started."""
    children = []
    error = None
    for _ in range(500):
        try:
            pid = os.fork()
        except OSError as exc:
            error = type(exc).__name__
            break
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    return {"started": len(children), "error": error}


@job(memory="64Mi", timeout=60)
def fail_before_attempt(attempt):
    """Fail until the job's own attempt number reaches ``attempt``."""
    current = int(os.environ["JOBYARD_ATTEMPT"])
    if current < attempt:
        raise RuntimeError(f"attempt {current} fails on purpose")
    return current
